"""Dynamic thresholding of data predictions (Imagen; the lineage's option for DPM-Solver++ and UniPC).

M <- clamp(M, -s, s) / s with s = max(quantile_ratio(|M|) per sample, max_val). Meant for pixel data in [-1, 1];
it distorts data outside that range and must not be used on latents.
"""
from __future__ import annotations

import torch


def dynamic_threshold(m: torch.Tensor, ratio: float = 0.995, max_val: float = 1.0) -> torch.Tensor:
    flat = m.reshape(m.shape[0], -1).abs()
    s = torch.quantile(flat.to(torch.float32) if flat.dtype == torch.float16 else flat, ratio, dim=1).to(m.dtype)
    s = torch.clamp(s, min=max_val).reshape(-1, *([1] * (m.dim() - 1)))
    return torch.maximum(torch.minimum(m, s), -s) / s
