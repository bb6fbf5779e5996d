"""FID following EDM's protocol (Karras et al. 2022, fid.py), which the paper's Table 1 numbers come from.

  1. samples in [-1, 1] become uint8 images as EDM's generate.py saves them: (x * 127.5 + 128).clip(0, 255);
  2. TF-Inception (inception-2015-12-05, from a local TorchScript file; see features.py) maps each image at its own
     resolution to 2048 pool features (grayscale repeated to 3 channels);
  3. mu and the unbiased covariance of the features, in float64;
  4. the Fréchet distance to the dataset's reference statistics (`mu`, `sigma` in EDM's fid-refs/*.npz),
     computed stably in float64 (frechet.py).

50,000 samples by default (FID-50k, metric "fid"; "fid_30k" is the paper's MS-COCO protocol for SD and FLUX). A
cell with fewer samples is refused; a metric built with another `num_samples` reports itself as FID-<n>, so numbers
of different sizes are never mixed up.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.models.base import Cell, Model, Requirement
from bench.stats import Estimate
from solvers.errors import InputError, one_line

from .base import FrechetMetric
from .features import InceptionFeatures, extractor_on, inception_requirement
from .frechet import RunningStatistics, frechet_distance, load_statistics, save_statistics


def reference_requirement(model: Model, reference=None) -> Requirement:
    """The reference statistics file for `model`: an explicit path, else the weights entry `model.fid_reference`
    (default "fid-ref-<model name>", EDM's fid-refs/*.npz)."""
    if reference is not None:
        return Requirement(name=Path(reference).name, path=Path(reference),
                           description=f"FID reference statistics {Path(reference).name}")
    from bench import weights
    key = getattr(model, "fid_reference", None) or f"fid-ref-{model.name}"
    if key not in weights.names():
        raise InputError(f"no FID reference statistics are known for model {model.name!r} (looked for weights entry "
                         f"{key!r}); pass reference=<path to .npz with mu and sigma>")
    return weights.requirement(key)


def label_for(num_samples: int | None) -> str:
    if num_samples is None:
        return "FID"
    return f"FID-{num_samples // 1000}k" if num_samples % 1000 == 0 else f"FID-{num_samples}"


class FID(FrechetMetric):
    name = "fid"
    higher_is_better = False

    def __init__(self, num_samples: int | None = 50_000, batch_size: int = 250, inception=None, reference=None,
                 device: str = "cpu"):
        if num_samples is not None and num_samples < 2:
            raise InputError(f"num_samples must be at least 2 (or None for all samples of a cell); got {num_samples}")
        self.num_samples = num_samples
        self.batch_size = int(batch_size)
        self.inception = inception          # path to inception-2015-12-05.pt; default: the weights registry
        self.reference = reference          # path to reference .npz; default: per model
        self.device = device
        self.label = label_for(num_samples)

    # --- files ------------------------------------------------------------------------------------------
    def supports(self, model: Model) -> bool:
        """Images (C, H, W) with 1 or 3 channels after decoding, and known reference statistics."""
        try:
            self.requirements(model)
        except ValueError:
            return False
        return True

    def requirements(self, model: Model) -> list[Requirement]:
        return [inception_requirement(self.inception), reference_requirement(model, self.reference)]

    def preflight(self, model: Model) -> None:
        """The Inception network scores a batch of two images of the model's size, and the reference statistics
        load with the feature network's dimension."""
        for r in self.requirements(model):
            if not r.present:
                raise FileNotFoundError(r.missing_message())
        try:
            features = next(iter(self.extractor().batched(torch.zeros(2, 3, 32, 32), 2)))
        except Exception as e:
            raise InputError(f"{self.label}: the Inception network {self.requirements(model)[0].path} does not run "
                             f"({type(e).__name__}: {one_line(e)})") from None
        ref = reference_requirement(model, self.reference).path
        mu, sigma = load_statistics(ref)
        d = features.shape[1]
        if mu.shape != (d,) or sigma.shape != (d, d):
            raise InputError(f"{ref}: reference statistics of dimension {mu.shape} / {sigma.shape}; the Inception "
                             f"features have {d}")

    def extractor(self) -> InceptionFeatures:
        req = inception_requirement(self.inception)
        if not req.present:
            raise FileNotFoundError(req.missing_message())
        return extractor_on(str(req.path), str(self.device))

    # --- the metric -------------------------------------------------------------------------------------
    def statistics(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """mu, sigma (float64) of Inception features of images in [-1, 1], batch by batch."""
        stats = None
        for features in self.extractor().batched(images, self.batch_size):
            stats = stats or RunningStatistics(features.shape[1])      # 2048 for TF-Inception
            stats.update(features.numpy())
        if stats is None:
            raise InputError("no images to score")
        return stats.result()

    def per_sample(self, batch: Cell) -> torch.Tensor:
        """Pool features (B, 2048) of the batch's images, computed on the metric's device, kept as float32 on the
        CPU (the network computes in float32, so this loses nothing; 8 kB per sample)."""
        return torch.cat([f.float() for f in self.extractor().batched(batch.samples, self.batch_size)])

    def reduce(self, records: torch.Tensor, cell: Cell) -> float:
        return super().reduce(self._counted(records, 1), cell)

    def estimate(self, records: torch.Tensor, cell: Cell, sets: int = 1) -> Estimate:
        """Replicas of exactly `num_samples` each (or the jackknife of one seed set, bench.stats)."""
        return super().estimate(self._counted(records, sets), cell, sets)

    def _counted(self, records: torch.Tensor, groups: int) -> torch.Tensor:
        """The first `num_samples` records of each of `groups` seed sets; too few is an error."""
        n = records.shape[0] // groups
        if self.num_samples is None:
            return records
        if n < self.num_samples:
            raise InputError(f"{self.label} needs {self.num_samples} samples; the cell has {n} "
                             f"(build the metric with num_samples={n} for a smaller FID)")
        return torch.cat([records[r * n:r * n + self.num_samples] for r in range(groups)])

    def distance(self, mu, cov, cell: Cell) -> float:
        ref = reference_requirement(cell.model, self.reference)
        if not ref.present:
            raise FileNotFoundError(ref.missing_message())
        return frechet_distance(mu, cov, *load_statistics(ref.path))


def fid_30k(**options) -> FID:
    """FID on 30,000 samples: the paper's MS-COCO protocol for Stable Diffusion and FLUX."""
    options.setdefault("num_samples", 30_000)
    return FID(**options)


def write_reference(images: torch.Tensor, path, inception=None, batch_size: int = 250) -> Path:
    """Reference statistics of real images in [-1, 1] (EDM's `fid.py ref`), saved as .npz with mu and sigma."""
    mu, sigma = FID(num_samples=None, batch_size=batch_size, inception=inception).statistics(images)
    return save_statistics(path, mu, sigma)
