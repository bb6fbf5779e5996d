"""scikit-learn's 8x8 digits (1,797 images, shipped inside the package) as 16x16 images in [-1, 1].

The split is fixed: a seeded permutation (seed 0) puts HELD_OUT images aside. Networks train on the rest; the
held-out images measure the classifier's accuracy and give the reference statistics of FD-digits / FD-pixels.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from solvers.errors import InputError

RESOLUTION = 16
HELD_OUT = 500
SPLIT_SEED = 0


@lru_cache(maxsize=2)
def _load(resolution: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0   # (1797, 1, 8, 8), [-1, 1]
    if resolution != 8:
        x = F.interpolate(x, size=resolution, mode="bilinear", align_corners=False).clamp(-1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    return x, y, perm


def digits(split: str = "train", resolution: int = RESOLUTION) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, R, R) in [-1, 1], labels (N,)) of the 'train' split, the 'heldout' split or 'all'."""
    x, y, perm = _load(resolution)
    if split == "all":
        return x.clone(), y.clone()
    if split == "heldout":
        idx = perm[:HELD_OUT]
    elif split == "train":
        idx = perm[HELD_OUT:]
    else:
        raise InputError(f"unknown digits split {split!r}; accepted: train, heldout, all")
    return x[idx].clone(), y[idx].clone()


def split_record() -> dict:
    """How the split was made, for the records written beside the weights."""
    x, _, perm = _load(RESOLUTION)
    return {"dataset": "sklearn.datasets.load_digits (1,797 8x8 images)",
            "preprocessing": f"/16 -> [-1, 1], bilinear upsampling to {RESOLUTION}x{RESOLUTION}",
            "split_seed": SPLIT_SEED, "heldout": HELD_OUT, "train": len(x) - HELD_OUT,
            "heldout_indices_head": perm[:10].tolist()}
