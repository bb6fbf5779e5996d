"""The metric interface: per-sample records computed batch by batch, reduced to one number per cell.

The runner never holds a cell's samples. For each batch it calls `per_sample(batch)`, a (B, k) float tensor of
what the metric needs to keep per sample (Inception features for FID, one score for CLIP score, the error for the
endpoint error, the sample itself for an exact-moment FD of low-dimensional data), moved to the CPU. Records of
every batch and rank are concatenated in seed order and `reduce(records, cell)` gives the cell's value. So host
memory holds O(batch) images plus the records, and ranks exchange records, never images.

`compute(cell)` = `reduce(per_sample(cell), cell)` scores a whole cell held in memory (tests, small studies).
A metric that defines only `compute(cell)` still works: its records are the decoded samples themselves, so its
memory grows with the cell (fine for small data, not for images at scale).
"""
from __future__ import annotations

import torch

from bench.models.base import Cell, Model, Requirement


class Metric:
    name: str = ""
    label: str = ""                 # how reports name it, e.g. "FID-50k", "FD-digits (miniature analogue)"
    higher_is_better: bool = False
    num_samples: int | None = None  # the exact sample count it scores (FID-50k: 50000); None: any
    device: str = "cpu"             # where its own networks run; the runner sets the cell model's device

    def supports(self, model: Model) -> bool:
        """Whether this metric can score samples of `model` (e.g. exact-distribution metrics need an analytic model)."""
        return True

    def requirements(self, model: Model) -> list[Requirement]:
        """Local files needed (Inception weights, reference statistics), checked before any work starts."""
        return []

    def per_sample(self, batch: Cell) -> torch.Tensor:
        """(B, k) float records of a batch (on the CPU): what `reduce` needs of each sample. Default (a metric that
        defines only `compute`): the decoded samples, flattened."""
        self._sample_shape = tuple(batch.samples.shape[1:])
        return batch.samples.detach().reshape(batch.samples.shape[0], -1).cpu()

    def reduce(self, records: torch.Tensor, cell: Cell) -> float:
        """The cell's value from the records of all its samples, in seed order (cell.samples may be None).
        Default: `compute` on the samples the default `per_sample` kept."""
        if type(self).compute is Metric.compute:
            raise NotImplementedError(f"metric {self.name!r} defines neither per_sample/reduce nor compute")
        from dataclasses import replace
        return float(self.compute(replace(cell, samples=records.reshape(-1, *self._sample_shape))))

    def compute(self, cell: Cell) -> float:
        if type(self).per_sample is Metric.per_sample:
            raise NotImplementedError(f"metric {self.name!r} defines neither per_sample/reduce nor compute")
        return float(self.reduce(self.per_sample(cell), cell))


class MeanScore(Metric):
    """A metric that is the mean of one score per sample; subclasses implement `sample_scores(batch) -> (B,)`."""

    def sample_scores(self, batch: Cell) -> torch.Tensor:
        raise NotImplementedError

    def per_sample(self, batch: Cell) -> torch.Tensor:
        return self.sample_scores(batch).detach().double().cpu().reshape(-1, 1)

    def reduce(self, records: torch.Tensor, cell: Cell) -> float:
        return float(records[:, 0].mean())
