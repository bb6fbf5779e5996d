"""Count network evaluations instead of assuming them."""
from __future__ import annotations

import torch


class CountingDenoiser:
    """Wraps `denoiser(x, sigma)`; `calls` counts calls, `evaluations` counts network evaluations.

    evals_per_call = 2 for a classifier-free-guided denoiser (conditional + unconditional pass).
    """

    def __init__(self, denoiser, evals_per_call: int = 1):
        self.denoiser = denoiser
        self.features = getattr(denoiser, "features", None)      # solvers.base.Features, passed on
        self.evals_per_call = evals_per_call
        self.calls = 0
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.sigmas.append(float(sigma.detach().reshape(-1)[0]))
        return self.denoiser(x, sigma)

    @property
    def evaluations(self) -> int:
        return self.calls * self.evals_per_call

    def reset(self) -> None:
        self.calls = 0
        self.sigmas.clear()
