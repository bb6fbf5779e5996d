"""Uncertainty of a cell's numbers: the intervals every stored metric carries, written once for the project.

Two estimators, chosen by the metric (`Metric.interval`):

bootstrap   for a metric that is a mean of per-sample scores (endpoint error, CLIP score, HPSv2.1, ImageReward):
            the 95 % percentile interval of the mean over `BOOTSTRAP` resamples of the samples (with replacement,
            one fixed generator, so an interval is reproducible). The mean of resampled scores is unbiased, so the
            bootstrap is sound here.
replicas    for a Fréchet distance (FD, FID) the bootstrap is biased: a resample repeats samples, which shrinks
            the sample covariance and shifts the distance. Two estimators avoid resampling with replacement:
            * seed-set replicas (a grid's `replicas = R` >= 2): the cell draws R disjoint seed sets of its
              sample count N (seeds start + r*N ... start + (r+1)*N - 1), scores each, and reports their mean
              with the 95 % Student-t interval of that mean (R - 1 degrees of freedom). Exact in what it
              measures, at R times the sampling cost.
            * the delete-a-group jackknife (one seed set, the default): the N samples are split into
              `GROUPS` = G contiguous groups, the statistic is recomputed G times leaving one group out, and
              Var = (G - 1)/G * sum_i (theta_(i) - mean theta)^2 estimates the variance of the full-sample value,
              which is reported with a normal 95 % interval. FD is a smooth function of the sample mean and
              covariance, for which the jackknife variance is consistent; it costs G extra distance evaluations
              and no extra samples, so FID-50k on a GPU grid gets an interval for free.

`Estimate` is what a metric hands the runner; `separable` is the one rule the report and `bench check` use to
decide whether two numbers differ beyond their noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

BOOTSTRAP = 1000          # resamples of the percentile bootstrap
GROUPS = 10               # groups of the delete-a-group jackknife of one seed set
LEVEL = 0.95
Z = 1.959963984540054     # the normal quantile of LEVEL


@dataclass(frozen=True)
class Estimate:
    """A cell's value with its 95 % interval [low, high] and how the interval was obtained (`method`):
    "bootstrap:B", "replicas:R" or "jackknife:G"."""

    value: float
    low: float
    high: float
    method: str

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def bootstrap_mean(scores: torch.Tensor, resamples: int = BOOTSTRAP, seed: int = 0) -> Estimate:
    """The mean of per-sample `scores` (N,) with its percentile bootstrap interval."""
    x = scores.detach().double().cpu().reshape(-1)
    n = x.numel()
    value = float(x.mean())
    if n < 2:
        return Estimate(value, math.nan, math.nan, f"bootstrap:{resamples}")
    g = torch.Generator().manual_seed(seed)
    means = torch.empty(resamples, dtype=torch.float64)
    chunk = max(1, 2_000_000 // n)                      # bounded memory for large cells
    for i in range(0, resamples, chunk):
        idx = torch.randint(0, n, (min(chunk, resamples - i), n), generator=g)
        means[i:i + idx.shape[0]] = x[idx].mean(1)
    a = (1 - LEVEL) / 2
    lo, hi = torch.quantile(means, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
    return Estimate(value, lo, hi, f"bootstrap:{resamples}")


def bootstrap_median(values, resamples: int = BOOTSTRAP, seed: int = 0) -> Estimate:
    """The median of `values` with its percentile bootstrap interval (timings, whose tails a mean would follow)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    value = float(np.median(x))
    if x.size < 2:
        return Estimate(value, math.nan, math.nan, f"bootstrap-median:{resamples}")
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, x.size, (resamples, x.size))], axis=1)
    a = (1 - LEVEL) / 2
    lo, hi = np.quantile(medians, [a, 1 - a])
    return Estimate(value, float(lo), float(hi), f"bootstrap-median:{resamples}")


def paired_ratio(scores: torch.Tensor, against: torch.Tensor, resamples: int = BOOTSTRAP, seed: int = 0) -> Estimate:
    """mean(scores) / mean(against) for paired per-sample scores (the same seeds, (N,) each) with the percentile
    bootstrap interval of that ratio, both means over one resample of the pairs: the interval of a comparison
    on shared seeds, far narrower than two independent intervals."""
    a, b = (v.detach().double().cpu().reshape(-1) for v in (scores, against))
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.numel()
    value = float(a.mean() / b.mean())
    if n < 2:
        return Estimate(value, math.nan, math.nan, f"bootstrap:{resamples}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (resamples, n), generator=g)
    ratios = a[idx].mean(1) / b[idx].mean(1)
    c = (1 - LEVEL) / 2
    lo, hi = torch.quantile(ratios, torch.tensor([c, 1 - c], dtype=torch.float64)).tolist()
    return Estimate(value, lo, hi, f"bootstrap:{resamples}")


def t_interval(values, method: str) -> Estimate:
    """The mean of independent replicas `values` with its Student-t interval."""
    from scipy import stats
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return Estimate(m, math.nan, math.nan, method)
    h = float(stats.t.ppf(0.5 + LEVEL / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return Estimate(m, m - h, m + h, method)


def replicas(score: Callable[[torch.Tensor], float], records: torch.Tensor, sets: int,
             groups: int = GROUPS) -> Estimate:
    """A set statistic `score(records) -> float` (an FD) over `sets` disjoint seed sets (records in seed order,
    equal and contiguous): the replicas' mean and t interval; one set: the delete-a-group jackknife."""
    n = records.shape[0]
    if sets < 1 or n % sets:
        raise ValueError(f"{n} records do not split into {sets} equal seed sets")
    if sets > 1:
        size = n // sets
        return t_interval([score(records[r * size:(r + 1) * size]) for r in range(sets)], f"replicas:{sets}")
    return jackknife(score, records, groups)


def jackknife(score: Callable[[torch.Tensor], float], records: torch.Tensor, groups: int = GROUPS) -> Estimate:
    """`score(records)` with the normal 95 % interval of the delete-a-group jackknife (module doc)."""
    n = records.shape[0]
    value = float(score(records))
    if n < 2 * groups:
        return Estimate(value, math.nan, math.nan, f"jackknife:{groups}")
    edges = np.linspace(0, n, groups + 1).round().astype(int)
    keep = torch.ones(n, dtype=torch.bool)
    left_out = []
    for a, b in zip(edges[:-1], edges[1:]):
        keep[a:b] = False
        left_out.append(float(score(records[keep])))
        keep[a:b] = True
    theta = np.array(left_out)
    h = float(Z * math.sqrt((groups - 1) / groups * ((theta - theta.mean()) ** 2).sum()))
    return Estimate(value, value - h, value + h, f"jackknife:{groups}")


def moment_jackknife(distance: Callable[[np.ndarray, np.ndarray], float], records: torch.Tensor,
                     groups: int = GROUPS) -> Estimate:
    """The jackknife of a statistic of the sample mean and unbiased covariance, `distance(mu, cov)` (an FD),
    from each group's sums: every leave-one-group-out moment costs O(d^2), not a pass over the records."""
    x = records.detach().double().cpu().reshape(records.shape[0], -1).numpy()
    n = x.shape[0]

    def moments(total: np.ndarray, outer: np.ndarray, m: int):
        mu = total / m
        return mu, (outer - m * np.outer(mu, mu)) / (m - 1)
    s, S = x.sum(0), x.T @ x
    value = float(distance(*moments(s, S, n)))
    if n < 2 * groups:
        return Estimate(value, math.nan, math.nan, f"jackknife:{groups}")
    edges = np.linspace(0, n, groups + 1).round().astype(int)
    theta = np.array([distance(*moments(s - x[a:b].sum(0), S - x[a:b].T @ x[a:b], n - (b - a)))
                      for a, b in zip(edges[:-1], edges[1:])])
    h = float(Z * math.sqrt((groups - 1) / groups * ((theta - theta.mean()) ** 2).sum()))
    return Estimate(value, value - h, value + h, f"jackknife:{groups}")


def separable(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals (low, high) are disjoint; an unknown (NaN) bound never separates."""
    (alo, ahi), (blo, bhi) = a, b
    if not all(math.isfinite(v) for v in (alo, ahi, blo, bhi)):
        return False
    return ahi < blo or bhi < alo


def format_interval(value: float, low, high, pm: str = "±") -> str:
    """"value ± half-width", both rounded to the half-width's second significant digit; "" without a finite,
    positive half-width. An interval clipped at 0 (a distance's: its lower bound is exactly 0) is not symmetric
    about the value, so it is written as its bounds: "value [0, high]"."""
    h = (float(high) - float(low)) / 2 if low is not None and high is not None else math.nan
    if not (math.isfinite(h) and h > 0 and math.isfinite(value)):
        return ""
    d = min(8, max(0, 1 - math.floor(math.log10(h))))
    if float(low) == 0:
        return f"{value:.{d}f} [0, {float(high):.{d}f}]"
    return f"{value:.{d}f} {pm} {h:.{d}f}"
