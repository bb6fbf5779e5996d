"""Metrics that need an analytic model (a Gaussian mixture with exact moments and an exact ODE solution).

fd_exact        Fréchet distance between the generated samples and the exact data distribution, from the sample
                mean/covariance (mu_g, C_g) and the exact ones (mu, C), in float64:
                    FD = |mu_g - mu|^2 + tr C_g + tr C - 2 tr (C^{1/2} C_g C^{1/2})^{1/2}
                (the square root's trace from the eigenvalues of a symmetric PSD matrix: stable, no sqrtm).
endpoint_error  mean over samples of |x - x_ref| / |x_ref|, where x_ref is the reference PF-ODE solution
                (GaussianMixture.reference_solution, DOP853 at rtol 1e-10) from the same x_T over the same sigma
                range. Reference solutions are cached on disk (cell.extra["cache_dir"]), keyed by the model's
                parameters, the seeds and the sigma range.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from bench.models.base import Cell, Model

from .base import Metric
from solvers.base import InputError


def _is_analytic(model: Model) -> bool:
    return all(hasattr(model, a) for a in ("mean", "covariance", "reference_solution"))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """FD between N(mu1, cov1) and N(mu2, cov2) in float64; cov2 must be positive semi-definite."""
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    c1, c2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    lam, U = torch.linalg.eigh((c2 + c2.T) / 2)
    root2 = (U * lam.clamp(min=0).sqrt()) @ U.T                      # C2^{1/2}
    m = root2 @ c1 @ root2
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + c1.trace() + c2.trace() - 2 * tr_sqrt)


class FDExact(Metric):
    name = "fd_exact"
    label = "FD (exact moments)"
    higher_is_better = False

    def supports(self, model: Model) -> bool:
        return _is_analytic(model)

    def compute(self, cell: Cell) -> float:
        x = cell.samples.detach().reshape(cell.samples.shape[0], -1).to(torch.float64).cpu()
        if x.shape[0] < 2:
            raise InputError("fd_exact needs at least 2 samples")
        mu_g = x.mean(0)
        cov_g = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
        return frechet_distance(mu_g, cov_g, cell.model.mean, cell.model.covariance)


class EndpointError(Metric):
    name = "endpoint_error"
    label = "Endpoint error (rel. L2)"
    higher_is_better = False
    uses_noise = True            # the runner fills cell.x_T for this metric
    rtol = 1e-10

    def __init__(self):
        self._memory: dict[str, torch.Tensor] = {}

    def supports(self, model: Model) -> bool:
        return _is_analytic(model)

    def compute(self, cell: Cell) -> float:
        if cell.x_T is None or cell.sigmas is None:
            raise InputError("endpoint_error needs the cell's x_T and sigmas")
        x = cell.extra.get("final", cell.samples).detach().to(torch.float64).cpu()
        ref = self.reference(cell).to(torch.float64)
        err = (x - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
        return float(err.mean())

    def reference(self, cell: Cell) -> torch.Tensor:
        """The reference ODE solution for the cell's x_T over [sigmas[0], sigmas[-1]], cached on disk."""
        s0, s1 = float(cell.sigmas[0]), float(cell.sigmas[-1])
        key = self.cache_key(cell.model, cell.seeds, s0, s1)
        if key in self._memory:
            return self._memory[key]
        path = Path(cell.extra["cache_dir"]) / "reference" / f"{cell.model.name}-{key}.pt" \
            if cell.extra.get("cache_dir") else None
        if path is not None and path.exists():
            ref = torch.load(path)
        else:
            ref = cell.model.reference_solution(cell.x_T.to(torch.float64), s0, s1, rtol=self.rtol)
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
