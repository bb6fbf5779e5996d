"""FLUX.1-dev (rectified flow, guidance-distilled) through diffusers, seen as an EDM denoiser.

Flow matching interpolates x_t = (1 - t) x_0 + t n for t in [0, 1]; the transformer predicts the velocity
v(x_t, t) = n - x_0. Divide by (1 - t):

    x_edm = x_t / (1 - t) = x_0 + t / (1 - t) n,    so    sigma = t / (1 - t),   t = sigma / (1 + sigma),
    x_t   = (1 - t) x_edm = x_edm / (1 + sigma),
    D(x_edm; sigma) = E[x_0 | x_t] = x_t - t v(x_t, t).

An Euler step in sigma on this D is exactly FLUX's Euler step in t (the scaling is linear in x), so the official
sampler is the 'euler' solver on the grid below. Grid (FLUX's sampler): t_i = linspace(1, 0, N) shifted by
t' = s t / (1 + (s - 1) t) with s = exp(mu), mu interpolated linearly in the image's token count between
(256 tokens, 0.5) and (4096 tokens, 1.15) (s ~ 1.878 at 512x512), mapped to sigma. t = 1 is sigma = inf, so the grid
starts at sigma_max = 1000 (t = 1000/1001; x_T = sigma_max z, i.e. x_t = 0.999 z); it ends at sigma = 0 exactly,
as FLUX's sampler does. FLUX.1-dev has no classifier-free guidance at sampling time: the guidance scale (3.5 by
default) is an input of the network, so each call is one evaluation.

Prompts are encoded with both text encoders: CLIP's pooled output (77 tokens) and T5's hidden states (512 tokens).
Latents are 16 x H/8 x W/8, fed to the transformer as 2x2 patches ("packed" tokens).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch

from bench import weights
from solvers import schedules
from . import conditions, devices
from .base import Model, Requirement
from .latent import PROMPT_SETS
from solvers.base import InputError

SHIFT_DEFAULTS = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def dynamic_shift(image_seq_len: int, config: dict | None = None) -> float:
    """s = exp(mu), mu linear in the number of image tokens (FLUX's resolution-dependent shift)."""
    c = dict(SHIFT_DEFAULTS, **{k: v for k, v in (config or {}).items() if k in SHIFT_DEFAULTS})
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    mu = c["base_shift"] + m * (image_seq_len - c["base_image_seq_len"])
    return math.exp(mu)


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens of 2x2 patches."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), C * 4)


def unpack(tokens: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    C, H, W = shape
    B = tokens.shape[0]
    return tokens.reshape(B, H // 2, W // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def image_ids(H: int, W: int) -> torch.Tensor:
    """Positions (0, row, col) of the packed latent tokens, for the rotary embedding."""
    ids = torch.zeros(H // 2, W // 2, 3)
    ids[..., 1] = torch.arange(H // 2)[:, None]
    ids[..., 2] = torch.arange(W // 2)[None, :]
    return ids.reshape(-1, 3)


class FluxModel(Model):
    name = "flux"
    description = "FLUX.1-dev, 512x512 (latents 16x64x64), guidance embedding 3.5, flow matching as EDM"
    sigma_max = 1000.0
    sigma_min = 1e-3                  # only for schedules that cannot end at 0; the default grid ends at 0
    schedule = "flow_shift"
    evals_per_call = 1
    released_key = None               # the paper released no FLUX coefficients
    fid_reference = "fid-ref-ms_coco"

    def __init__(self, path: str | Path | None = None, prompts: str = "coco", prompts_path: str | Path | None = None,
                 prompt_mode: str | None = None, guidance: float = 3.5, resolution: int = 512, shift: float | None = None,
                 max_sequence_length: int = 512, components: dict | None = None, device: str | None = None,
                 torch_dtype: torch.dtype | str = torch.float32):
        if prompts not in PROMPT_SETS:
            raise InputError(f"unknown prompt set {prompts!r}; accepted: {', '.join(PROMPT_SETS)}")
        self._path = Path(path).expanduser() if path else None
        self.prompt_set, self.guidance = prompts, float(guidance)
        self._prompts_path = Path(prompts_path).expanduser() if prompts_path else None
        self.prompt_mode = prompt_mode or PROMPT_SETS[prompts][1]
        self.max_sequence_length = max_sequence_length
        self.device, self.net_dtype = devices.device(device), devices.dtype(torch_dtype)
        self.transformer = self.vae = None
        self.text_encoder = self.tokenizer = self.text_encoder_2 = self.tokenizer_2 = None
        self._prompts = None
        scheduler_cfg = {}
        if components:
            self.transformer, self.vae = components["transformer"], components.get("vae")
            self.text_encoder, self.tokenizer = components.get("text_encoder"), components.get("tokenizer")
            self.text_encoder_2, self.tokenizer_2 = components.get("text_encoder_2"), components.get("tokenizer_2")
            scheduler_cfg = components.get("scheduler_config", {})
            channels = self.transformer.config.in_channels // 4
            vae_factor = components.get("vae_scale_factor", 8)
        else:
            cfg_file = self.path / "scheduler" / "scheduler_config.json"
            scheduler_cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
            channels, vae_factor = 16, 8
        side = resolution // vae_factor
        self.shape = (channels, side, side)
        self.shift = float(shift) if shift is not None else dynamic_shift((side // 2) ** 2, scheduler_cfg)
        self.schedule_options = {"shift": self.shift}

    # ---- files ----------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path or weights.path("flux.1-dev")

    @property
    def prompts_path(self) -> Path:
        return self._prompts_path or weights.path(PROMPT_SETS[self.prompt_set][0])

    def requirements(self) -> list[Requirement]:
        reqs = []
        if self.transformer is None:
            reqs.append(weights.requirement("flux.1-dev"))
            reqs[-1].path = self.path
        reqs.append(weights.requirement(PROMPT_SETS[self.prompt_set][0]))
        reqs[-1].path = self.prompts_path
        return reqs

    def load(self) -> None:
        if self.transformer is None:
            self.check_available()
            from diffusers import AutoencoderKL, FluxTransformer2DModel
            from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel
            dt = self.net_dtype
            self.transformer = FluxTransformer2DModel.from_pretrained(self.path, subfolder="transformer",
                                                                      torch_dtype=dt)
            self.vae = AutoencoderKL.from_pretrained(self.path, subfolder="vae", torch_dtype=dt)
            self.text_encoder = CLIPTextModel.from_pretrained(self.path, subfolder="text_encoder", torch_dtype=dt)
            self.text_encoder_2 = T5EncoderModel.from_pretrained(self.path, subfolder="text_encoder_2", torch_dtype=dt)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, subfolder="tokenizer")
            self.tokenizer_2 = AutoTokenizer.from_pretrained(self.path, subfolder="tokenizer_2")
        for m in (self.transformer, self.vae, self.text_encoder, self.text_encoder_2):
            if m is not None:
                m.eval().requires_grad_(False).to(self.device)

    # ---- the grid ---------------------------------------------------------------------------------------------
    def grid(self, num_points: int, schedule: str | None = None, **options) -> torch.Tensor:
        """FLUX's shifted grid from sigma_max to exactly 0 (other schedules span [sigma_min, sigma_max])."""
        if (schedule or self.schedule) != "flow_shift":
            return super().grid(num_points, schedule, **options)
        opts = {"shift": self.shift, **options}
        return schedules.flow_shift(num_points, t_max=1.0, t_min=0.0, sigma_max=self.sigma_max, **opts)

    # ---- conditions --------------------------------------------------------------------------------------------
    def prompts(self) -> list[str]:
        if self._prompts is None:
            self._prompts = conditions.load_prompts(self.prompts_path)
        return self._prompts

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> dict:
        """CLIP pooled embedding (B, 768) and T5 hidden states (B, L, 4096), as FLUX's pipeline builds them."""
        self.load()
        prompts = list(prompts)
        ids = self.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        pooled = self.text_encoder(ids, output_hidden_states=False).pooler_output
        ids2 = self.tokenizer_2(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                return_tensors="pt").input_ids.to(self.device)
        txt = self.text_encoder_2(ids2, output_hidden_states=False)[0]
        return {"pooled": pooled.to(self.net_dtype), "txt": txt.to(self.net_dtype)}

    def conditions(self, seeds: Sequence[int]) -> conditions.Prompts:
        """The seeds' prompts; encoded on first use as {"pooled": (B, 768), "txt": (B, L, 4096)}."""
        prompts = conditions.prompts_for_seeds(self.prompts(), seeds, self.prompt_mode)
        return conditions.Prompts(prompts, self.encode)

    # ---- the denoiser ------------------------------------------------------------------------------------------
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        C, H, W = x_t.shape[1:]
        B = x_t.shape[0]
        out = self.transformer(
            hidden_states=pack(x_t.to(self.net_dtype)), timestep=t.to(self.net_dtype),
            guidance=torch.full((B,), self.guidance, dtype=self.net_dtype, device=x_t.device),
            pooled_projections=cond["pooled"], encoder_hidden_states=cond["txt"],
            txt_ids=torch.zeros(cond["txt"].shape[1], 3, device=x_t.device, dtype=self.net_dtype),
            img_ids=image_ids(H, W).to(device=x_t.device, dtype=self.net_dtype), return_dict=False)[0]
        return unpack(out, (C, H, W))

    def denoiser(self, cond=None):
        self.load()
        if cond is None:
            raise InputError("FLUX needs conditions (prompt embeddings): call model.conditions(seeds)")

        def D(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
            s = (s.expand(x.shape[0]) if s.numel() == 1 else s).reshape(-1, 1, 1, 1)
            t = s / (1 + s)                                   # flow time
            x_t = x.to(torch.float64) / (1 + s)               # (1 - t) x_edm
            v = self.velocity(x_t.to(torch.float32), t.reshape(-1).to(torch.float32), cond)
            return (x_t - t * v.to(torch.float64)).to(x.dtype)  # x_0 estimate

        return D

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        self.load()
        if self.vae is None:
            raise InputError("this FLUX model was built without its VAE, so it cannot decode")
        cfg = self.vae.config
        z = x / float(getattr(cfg, "scaling_factor", 0.3611)) + float(getattr(cfg, "shift_factor", 0.1159) or 0.0)
        with torch.no_grad():
            return self.vae.decode(z.to(self.net_dtype)).sample.float().clamp(-1, 1)


def flux(**options) -> FluxModel:
    return FluxModel(**options)


def flux_drawbench(**options) -> FluxModel:
    m = FluxModel(prompts="drawbench", **options)
    m.name = "flux_drawbench"
    return m
