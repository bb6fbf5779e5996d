"""A model seen in flow time: the change of variables of solvers/flow.py, as a Model the harness samples from.

    t = sigma / (1 + sigma),   y = x / (1 + sigma),   D_flow(y, t) = D(y / (1 - t); t / (1 - t)).

Its grids are the base model's grids mapped to t, its noise is y_T = x_T / (1 + sigma_max) = t_max z (the same
generator per seed), and its final states convert back with x = y / (1 - t_min) (`to_base`; t_min = 0 gives x = y).
A solver run on this view is the solver's flow-time form. Flow models (FLUX) subclass it with their own network
in flow variables, valid at any t (a time-scaled step may query t > 1).
"""
from __future__ import annotations

import torch

from solvers import flow

from .base import Model


class FlowView(Model):
    def __init__(self, base: Model):
        self._base = base
        for attr in ("name", "description", "shape", "evals_per_call", "released_key", "distill_lr", "dtype",
                     "device", "schedule", "schedule_options", "batch_hint"):
            setattr(self, attr, getattr(base, attr))
        self.sigma_max = flow.flow_time(float(base.sigma_max))
        self.sigma_min = flow.flow_time(float(base.sigma_min))

    @property
    def base(self) -> Model:
        return self._base

    def cache_key(self) -> str:
        inner = self._base.cache_key() if callable(getattr(self._base, "cache_key", None)) else self._base.name
        return f"flow-time view of {inner}"

    def requirements(self):
        return self._base.requirements()

    def grid(self, num_points: int, schedule: str | None = None, **options) -> torch.Tensor:
        return flow.flow_time(self._base.grid(num_points, schedule, **options))

    def noise(self, seeds):
        return (self._base.noise(seeds).to(torch.float64) / (1 + float(self._base.sigma_max))).to(self.dtype)

    def conditions(self, seeds):
        return self._base.conditions(seeds)

    def training_conditions(self, seeds):
        return self._base.training_conditions(seeds)

    def denoiser(self, cond=None):
        return flow.flow_denoiser(self._base.denoiser(cond))

    def to_base(self, y: torch.Tensor) -> torch.Tensor:
        return y / (1 - self.sigma_min) if self.sigma_min else y

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return self._base.decode(self.to_base(y))
