"""Metrics that need an analytic model (a Gaussian mixture with exact moments and an exact ODE solution).

fd_exact        Fréchet distance between the generated samples and the exact data distribution, from the sample
                mean/covariance (mu_g, C_g) and the exact ones (mu, C), in float64 (bench.metrics.frechet).
                Records: the samples themselves (these models are low-dimensional).
endpoint_error  mean over samples of |x - x_ref| / |x_ref| (`relative_l2`), where x_ref is the model's reference
                from the same x_T (`model.reference`): on a network its teacher (bench/models/digits.py), on a
                mixture the PF-ODE
                solution (GaussianMixture.reference: DOP853 at rtol 1e-10, solved once for all seeds of a cell and
                cached on disk under cell.cache_dir) from the same x_T over the same sigma range. Records: one
                error per sample, in the data's own coordinates (Model.data_coordinates); interval: bootstrap
                of the mean (bench.stats).
"""
from __future__ import annotations

import torch

from bench.models.base import Cell, Model
from solvers.errors import InputError

from .base import FrechetMetric, MeanScore
from .frechet import frechet_distance


def relative_l2(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """||x - ref|| / ||ref|| per sample (rows of dimension 0): the endpoint error, written once for the project."""
    return (x - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp_min(1e-30)


def _is_analytic(model: Model) -> bool:
    return all(hasattr(model, a) for a in ("mean", "covariance", "reference"))


class FDExact(FrechetMetric):
    name = "fd_exact"
    label = "FD (exact moments)"
    higher_is_better = False

    def supports(self, model: Model) -> bool:
        return _is_analytic(model)

    def per_sample(self, batch: Cell) -> torch.Tensor:
        return batch.samples.detach().reshape(batch.samples.shape[0], -1).to(torch.float64).cpu()

    def distance(self, mu, cov, cell: Cell) -> float:
        return frechet_distance(mu, cov, cell.model.mean.numpy(), cell.model.covariance.numpy())


class EndpointError(MeanScore):
    name = "endpoint_error"
    label = "Endpoint error (rel. L2)"
    higher_is_better = False

    def supports(self, model: Model) -> bool:
        """Any model with a reference solution from x_T (`reference`: exact ODE on mixtures, the teacher on a
        network)."""
        return callable(getattr(model, "reference", None))

    def sample_scores(self, batch: Cell) -> torch.Tensor:
        if batch.sigmas is None:
            raise InputError("endpoint_error needs the cell's sigmas")
        x = (batch.final if batch.final is not None else batch.samples).detach().to(torch.float64).cpu()
        seeds = list(batch.cell_seeds if batch.cell_seeds is not None else batch.seeds)
        ref = batch.model.reference(seeds, float(batch.sigmas[0]), float(batch.sigmas[-1]), batch.cache_dir)
        rows = {s: i for i, s in enumerate(seeds)}
        ref = ref[[rows[int(s)] for s in batch.seeds]].to(torch.float64)
        return relative_l2(batch.model.data_coordinates(x), batch.model.data_coordinates(ref))
