"""The metric interface: per-sample records computed batch by batch, reduced to one number per cell.

The runner never holds a cell's samples. For each batch it calls `per_sample(batch)`, a (B, k) float tensor of
what the metric needs to keep per sample (Inception features for FID, one score for CLIP score, the error for the
endpoint error, the sample itself for an exact-moment FD of low-dimensional data), moved to the CPU. Records of
every batch and rank are concatenated in seed order and `reduce(records, cell)` gives the cell's value. So host
memory holds O(batch) images plus the records, and ranks exchange records, never images.

`compute(cell)` = `reduce(per_sample(cell), cell)` scores a whole cell held in memory (tests, small studies).
A metric that defines only `compute(cell)` still works: its records are the decoded samples themselves, so its
memory grows with the cell (fine for small data, not for images at scale).

`estimate(records, cell, sets)` is the value the runner stores, with its 95 % interval (bench.stats): a set
statistic (an FD) gets the t interval of `sets` disjoint seed sets (equal and contiguous, in seed order), or the
jackknife of one, and a mean of per-sample scores gets a bootstrap. `has_floor` marks a distance to a reference
distribution, whose noise floor (the reference's own score at the same sample count) a grid can measure.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from bench import stats
from bench.models.base import Cell, Model, Requirement
from solvers.errors import InputError


class Metric:
    name: str = ""
    label: str = ""                 # how reports name it, e.g. "FID-50k", "FD-digits (miniature analogue)"
    higher_is_better: bool = False
    num_samples: int | None = None  # the exact sample count it scores (FID-50k: 50000); None: any
    device: str = "cpu"             # where its own networks run; the runner sets the cell model's device
    interval: str = "replicas"      # how its uncertainty is estimated (bench.stats): "replicas" or "bootstrap"
    has_floor: bool = False         # a distance to a reference distribution (it has a noise floor)
    min_samples: int = 1            # the fewest samples of a cell it can score
    neutral_options: tuple = ("batch_size", "device")   # options that do not change its value (not in result keys)

    def supports(self, model: Model) -> bool:
        """Whether this metric can score samples of `model` (e.g. exact-distribution metrics need an analytic model)."""
        return True

    def requirements(self, model: Model) -> list[Requirement]:
        """Local files needed (Inception weights, reference statistics), checked before any work starts."""
        return []

    #: the Python packages it needs, as (import name, the extra of this project that installs it)
    packages: tuple = ()

    def preflight(self, model: Model) -> None:
        """Load its networks and files now and score a batch, before the first cell, so a broken file fails the run
        before any sampling; nothing for a metric without files."""

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
        return float(self.compute(replace(cell, samples=records.reshape(-1, *self._sample_shape))))

    def score_set(self, records: torch.Tensor, cell: Cell) -> float:
        """The statistic of any number of records (one replica, or the jackknife's leave-one-group-out set).
        Default: `reduce`; a metric that fixes its sample count (FID-50k) scores the jackknife's subsets here."""
        return self.reduce(records, cell)

    def estimate(self, records: torch.Tensor, cell: Cell, sets: int = 1) -> stats.Estimate:
        """The cell's value and 95 % interval from the records of `sets` disjoint seed sets (bench.stats)."""
        return stats.replicas(lambda part: self.score_set(part, cell), records, sets)

    def sample_values(self, records: torch.Tensor):
        """One score per sample, in seed order, when the metric is a mean of them (stored for paired comparisons
        and exports); None for a set statistic such as an FD."""
        return None

    def compute(self, cell: Cell) -> float:
        if type(self).per_sample is Metric.per_sample:
            raise NotImplementedError(f"metric {self.name!r} defines neither per_sample/reduce nor compute")
        return float(self.reduce(self.per_sample(cell), cell))


class FrechetMetric(Metric):
    """A Fréchet distance between a Gaussian fitted to per-sample records (features, or the samples themselves)
    and reference statistics; subclasses implement `distance(mu, cov, cell)`. Its single-set interval is the
    moment jackknife (bench.stats.moment_jackknife), its value the distance of the records' mean and unbiased
    covariance."""

    has_floor = True
    min_samples = 2

    def distance(self, mu, cov, cell: Cell) -> float:
        raise NotImplementedError

    def score_set(self, records: torch.Tensor, cell: Cell) -> float:
        from .frechet import feature_statistics
        if records.shape[0] < 2:
            raise InputError(f"{self.name} needs at least 2 samples, got {records.shape[0]}")
        return float(self.distance(*feature_statistics(records.double().numpy()), cell))

    def reduce(self, records: torch.Tensor, cell: Cell) -> float:
        return self.score_set(records, cell)

    def estimate(self, records: torch.Tensor, cell: Cell, sets: int = 1) -> stats.Estimate:
        if sets > 1:
            est = super().estimate(records, cell, sets)
        elif records.shape[0] < 2:
            raise InputError(f"{self.name} needs at least 2 samples, got {records.shape[0]}")
        else:
            est = stats.moment_jackknife(lambda mu, cov: self.distance(mu, cov, cell), records)
        return replace(est, low=0.0) if est.low < 0 else est          # a distance is never negative


class MeanScore(Metric):
    """A metric that is the mean of one score per sample; subclasses implement `sample_scores(batch) -> (B,)`.
    Its interval is the bootstrap of the mean over all samples of every seed set."""

    interval = "bootstrap"

    def sample_scores(self, batch: Cell) -> torch.Tensor:
        raise NotImplementedError

    def per_sample(self, batch: Cell) -> torch.Tensor:
        return self.sample_scores(batch).detach().double().cpu().reshape(-1, 1)

    def reduce(self, records: torch.Tensor, cell: Cell) -> float:
        return float(records[:, 0].mean())

    def estimate(self, records: torch.Tensor, cell: Cell, sets: int = 1) -> stats.Estimate:
        return stats.bootstrap_mean(records[:, 0])

    def sample_values(self, records: torch.Tensor):
        return records[:, 0].double().numpy()
