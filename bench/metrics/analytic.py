"""Metrics that need an analytic model (a Gaussian mixture with exact moments and an exact ODE solution).

fd_exact        Fréchet distance between the generated samples and the exact data distribution, from the sample
                mean/covariance (mu_g, C_g) and the exact ones (mu, C), in float64 (bench.metrics.frechet).
                Records: the samples themselves (these models are low-dimensional).
endpoint_error  mean over samples of |x - x_ref| / |x_ref| (`relative_l2`), where x_ref is the reference PF-ODE
                solution (GaussianMixture.reference_solution, DOP853 at rtol 1e-10) from the same x_T over the same
                sigma range. The reference is solved once for all seeds of a cell (so a sample's reference never
                depends on how the cell was split into batches or ranks) and cached on disk (cell.cache_dir), keyed
                by the model's parameters, the seeds and the sigma range. Records: one error per sample.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from bench.models.base import Cell, Model
from solvers.base import InputError

from .base import MeanScore, Metric
from .frechet import frechet_distance


def relative_l2(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """||x - ref|| / ||ref|| per sample (rows of dimension 0): the endpoint error, written once for the project."""
    return (x - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp_min(1e-30)


def _is_analytic(model: Model) -> bool:
    return all(hasattr(model, a) for a in ("mean", "covariance", "reference_solution"))


class FDExact(Metric):
    name = "fd_exact"
    label = "FD (exact moments)"
    higher_is_better = False

    def supports(self, model: Model) -> bool:
        return _is_analytic(model)

    def per_sample(self, batch: Cell) -> torch.Tensor:
        return batch.samples.detach().reshape(batch.samples.shape[0], -1).to(torch.float64).cpu()

    def reduce(self, records: torch.Tensor, cell: Cell) -> float:
        if records.shape[0] < 2:
            raise InputError("fd_exact needs at least 2 samples")
        x = records.numpy()
        cov = torch.cov(records.T).reshape(x.shape[1], x.shape[1]).numpy()
        return frechet_distance(x.mean(0), cov, cell.model.mean.numpy(), cell.model.covariance.numpy())


class EndpointError(MeanScore):
    name = "endpoint_error"
    label = "Endpoint error (rel. L2)"
    higher_is_better = False
    rtol = 1e-10

    def __init__(self):
        self._memory: dict[str, torch.Tensor] = {}

    def supports(self, model: Model) -> bool:
        return _is_analytic(model)

    def sample_scores(self, batch: Cell) -> torch.Tensor:
        if batch.sigmas is None:
            raise InputError("endpoint_error needs the cell's sigmas")
        x = (batch.final if batch.final is not None else batch.samples).detach().to(torch.float64).cpu()
        seeds = list(batch.cell_seeds if batch.cell_seeds is not None else batch.seeds)
        ref = self.reference(batch.model, seeds, batch.sigmas, batch.cache_dir)
        rows = {s: i for i, s in enumerate(seeds)}
        ref = ref[[rows[int(s)] for s in batch.seeds]].to(torch.float64)
        return relative_l2(x, ref)

    def reference(self, model: Model, seeds: list, sigmas, cache_dir=None) -> torch.Tensor:
        """The reference ODE solution from x_T = model.noise(seeds) over [sigmas[0], sigmas[-1]], cached on disk."""
        s0, s1 = float(sigmas[0]), float(sigmas[-1])
        key = self.cache_key(model, seeds, s0, s1)
        if key in self._memory:
            return self._memory[key]
        path = Path(cache_dir) / "reference" / f"{model.name}-{key}.pt" if cache_dir else None
        if path is not None and path.exists():
            ref = torch.load(path)
        else:
            x_T = model.noise(seeds).to(torch.float64).cpu()
            ref = model.reference_solution(x_T, s0, s1, rtol=self.rtol)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(ref, tmp)
                tmp.replace(path)                     # atomic: a killed run never leaves half a file
        self._memory[key] = ref
        return ref

    def cache_key(self, model: Model, seeds, s0: float, s1: float) -> str:
        h = hashlib.sha256()
        h.update(f"{model.name}|{s0!r}|{s1!r}|{self.rtol!r}|".encode())
        for t in model_fingerprint(model):
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        h.update(",".join(map(str, seeds)).encode())
        return h.hexdigest()[:20]


def model_fingerprint(model: Model) -> list[torch.Tensor]:
    """The tensors that define an analytic model (a change in any of them invalidates cached references)."""
    found = [v for k, v in sorted(vars(model).items()) if isinstance(v, torch.Tensor)]
    return found or [model.mean, model.covariance]
