"""Metrics of the shipped digits model: Fréchet distances to the 500 held-out real digits (16x16, [-1, 1]).

fd_digits  FD-digits, a MINIATURE ANALOGUE of FID (not Inception FID, not comparable with any published FID):
           the Fréchet distance between Gaussians fitted to the 64-d penultimate features of the shipped digits
           classifier (bench/assets/digits/classifier.pt, trained on the other 1,297 digits) of generated and
           held-out real images.
fd_pixels  the same distance in pixel space (16x16 = 256 dims).

Both use bench.metrics.frechet (float64, eigenvalue-based trace of the square root). Estimates from a few hundred
samples carry a positive bias: real-vs-real (the 1,297 training digits vs the held-out 500) is the floor to read
them against; the `digits_check` and `quick` grids score it as a floor row (`floors = ["real"]`).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from bench.models.base import Cell, Model, Requirement
from solvers.errors import InputError

from .base import FrechetMetric
from .frechet import feature_statistics, frechet_distance

SHAPE = (1, 16, 16)


@lru_cache(maxsize=2)
def _classifier(path: str):
    from bench.models.digits import load_classifier
    return load_classifier(path)


def classifier():
    from bench.models.digits import weights_dir
    return _classifier(str(weights_dir() / "classifier.pt"))


@torch.no_grad()
def features(images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """(N, 64) penultimate classifier features of images (N, 1, 16, 16) in [-1, 1] (clamped)."""
    net = classifier()
    x = images.detach().float().cpu().clamp(-1, 1)
    return torch.cat([net.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).double().numpy()


def pixels(images: torch.Tensor) -> np.ndarray:
    return images.detach().double().cpu().clamp(-1, 1).reshape(images.shape[0], -1).numpy()


@lru_cache(maxsize=4)
def _reference(kind: str, classifier_path: str) -> tuple[np.ndarray, np.ndarray]:
    from bench.nets import data
    x, _ = data.digits("heldout")
    return feature_statistics(features(x) if kind == "features" else pixels(x))


def reference_statistics(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """mu, sigma of the held-out real digits in classifier-feature ("features") or pixel ("pixels") space."""
    from bench.models.digits import weights_dir
    return _reference(kind, str(weights_dir() / "classifier.pt"))


def fd_features(images: torch.Tensor) -> float:
    return frechet_distance(*feature_statistics(features(images)), *reference_statistics("features"))


def fd_pixel_space(images: torch.Tensor) -> float:
    return frechet_distance(*feature_statistics(pixels(images)), *reference_statistics("pixels"))


def _check(cell: Cell, name: str) -> torch.Tensor:
    x = cell.samples
    if tuple(x.shape[1:]) != SHAPE:
        raise InputError(f"{name} scores 16x16 one-channel digits in [-1, 1]; got samples of shape "
                         f"{tuple(x.shape[1:])}")
    return x


class _DigitsFD(FrechetMetric):
    """FD of per-sample records (classifier features or pixels) against the held-out digits' statistics."""

    higher_is_better = False
    kind = ""

    def supports(self, model: Model) -> bool:
        return tuple(model.shape) == SHAPE

    def distance(self, mu, cov, cell: Cell) -> float:
        return frechet_distance(mu, cov, *reference_statistics(self.kind))


class FDDigits(_DigitsFD):
    name = "fd_digits"
    label = "FD-digits (miniature FID analogue)"
    kind = "features"

    def requirements(self, model: Model) -> list[Requirement]:
        from bench.models.digits import ENV, weights_dir
        return [Requirement("digits-classifier", weights_dir() / "classifier.pt", env=ENV,
                            description="the digits classifier weights (shipped in bench/assets/digits)")]

    def per_sample(self, batch: Cell) -> torch.Tensor:
        return torch.from_numpy(features(_check(batch, self.name)))


class FDPixels(_DigitsFD):
    name = "fd_pixels"
    label = "FD-pixels (16x16)"
    kind = "pixels"

    def per_sample(self, batch: Cell) -> torch.Tensor:
        return torch.from_numpy(pixels(_check(batch, self.name)))
