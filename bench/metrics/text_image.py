"""What the prompt-image metrics (CLIP score, HPSv2.1, ImageReward) share.

Each scores (image, prompt) pairs: the image is a decoded sample in [-1, 1], written to uint8 as a PNG would be
(EDM's generate.py rounding) and handed to the scorer's own PIL preprocessing, as the paper's evaluation scripts do
with saved files; the prompt is the cell's condition for that seed. A metric loads its network once (the first
`compute`) and scores in batches; the cell's value is the mean score over its samples.

Where prompts are found in a cell, first match wins: `cell.extra["prompts"]`, `cell.conditions` when it is a list
of strings, `cell.conditions.prompts` / `cell.conditions["prompts"]`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from bench.models.base import Cell, Model, Requirement
from solvers.errors import InputError, one_line

from .base import MeanScore
from .features import to_uint8


def prompts_of(cell: Cell) -> list[str]:
    candidates = [cell.extra.get("prompts") if cell.extra else None, cell.conditions,
                  getattr(cell.conditions, "prompts", None),
                  cell.conditions.get("prompts") if isinstance(cell.conditions, dict) else None]
    for c in candidates:
        if isinstance(c, (list, tuple)) and c and all(isinstance(p, str) for p in c):
            if len(c) != cell.samples.shape[0]:
                raise InputError(f"the cell has {cell.samples.shape[0]} samples but {len(c)} prompts")
            return list(c)
    raise InputError(f"model {cell.model.name!r} gives no prompts with its samples; text-image metrics need one "
                     f"prompt per sample (cell.extra['prompts'] or list-of-strings conditions)")


def pil_images(samples: torch.Tensor) -> list:
    """Samples (B, 3, H, W) in [-1, 1] -> PIL RGB images, rounded to uint8 as saved PNGs are."""
    from PIL import Image
    if samples.ndim != 4 or samples.shape[1] != 3:
        raise InputError(f"expected RGB images of shape (B, 3, H, W); got {tuple(samples.shape)}")
    arrays = to_uint8(samples.detach().cpu()).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(a), mode="RGB") for a in arrays]


def open_clip_weights(model: torch.nn.Module, path, what: str = "OpenCLIP checkpoint") -> torch.nn.Module:
    """Load a local OpenCLIP checkpoint into `model` with torch's weights-only loader (tensors and containers: the
    file cannot run code); a `state_dict` entry and DistributedDataParallel's `module.` prefix are unwrapped, and
    every name must fit (strict). A refused or unreadable file, or one that does not fit, is one line."""
    import pickle
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise InputError(f"{path}: not a weights-only {what} ({one_line(e)})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a {what} holding a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: the {what} does not fit the architecture: {one_line(e)}") from None
    return model


def entry_requirement(entry: str, path=None) -> Requirement:
    """An explicit local path, else the weights registry entry (bench.weights)."""
    if path is not None:
        from pathlib import Path
        return Requirement(name=Path(path).name, path=Path(path), description=f"{entry} file {Path(path).name}")
    from bench import weights
    return weights.requirement(entry)


def require(req: Requirement) -> Requirement:
    if not req.present:
        raise FileNotFoundError(req.missing_message())
    return req


class PromptImageMetric(MeanScore):
    """Mean of a per-pair score over a cell; subclasses implement `load()` and `score(images, prompts)`."""

    higher_is_better = True

    def __init__(self, batch_size: int = 32, device: str = "cpu"):
        self.batch_size = int(batch_size)
        self.device = device
        self._loaded = None

    def supports(self, model: Model) -> bool:
        """Text-to-image models: they draw a prompt per seed (a `prompts()` method, as SD and FLUX adapters have)."""
        return callable(getattr(model, "prompts", None))

    def load(self):
        """Build the scorer from local files (called once)."""
        raise NotImplementedError

    def scorer(self):
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded

    def score(self, images: list, prompts: Sequence[str]) -> torch.Tensor:
        """Scores of PIL images against prompts, shape (B,)."""
        raise NotImplementedError

    @torch.no_grad()
    def scores(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per-sample scores (float64) of samples in [-1, 1], batch by batch."""
        out = []
        for start in range(0, samples.shape[0], self.batch_size):
            chunk = samples[start:start + self.batch_size]
            out.append(self.score(pil_images(chunk), prompts[start:start + self.batch_size]).double().cpu())
        return torch.cat(out)

    def sample_scores(self, batch: Cell) -> torch.Tensor:
        return self.scores(batch.samples, prompts_of(batch))

    packages = (("open_clip", "metrics"), ("torchvision", "metrics"))

    def preflight(self, model: Model) -> None:
        """Its networks from their local files, and one image scored against one prompt."""
        for r in self.requirements(model):
            if not r.present:
                raise FileNotFoundError(r.missing_message())
        self.scorer()
        self.score(pil_images(torch.zeros(1, 3, 64, 64)), ["a photo"])
