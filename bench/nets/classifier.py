"""A small CNN digit classifier; its penultimate activations are the feature space of FD-digits.

16x16 -> [conv 32, conv 32] -> pool -> [conv 64, conv 64] -> pool -> global average -> 64-d features -> 10 logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = 64


class DigitsClassifier(nn.Module):
    def __init__(self, in_channels: int = 1, channels: int = 32, features: int = FEATURES, classes: int = 10):
        super().__init__()
        self.config = dict(in_channels=in_channels, channels=channels, features=features, classes=classes)
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.SiLU(), nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.SiLU(),
            nn.AvgPool2d(2),
        )
        self.penultimate = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * 16, features), nn.SiLU())
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, features) of images x in [-1, 1], shape (B, 1, 16, 16)."""
        return self.penultimate(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (background -1 fills the border)."""
    B, _, H, W = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, B), generator=generator)).tolist()
    return torch.stack([pad[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])
