"""The flow-time form of the solvers: the same updates applied to velocities in flow time t, as FLUX's samplers
and DyWeight's FLUX code (dyweight_flux/, models/flux/dyweight_pipeline_flux.py of Westlake-AGI-Lab/DyWeight) do.

A flow model interpolates x_t = (1 - t) x_0 + t n and predicts the velocity v = dx_t/dt. In EDM variables,

    sigma = t / (1 - t),   x = x_t / (1 - t),   D(x; sigma) = x_t - t v(x_t, t).

Write the flow state y = x_t and D_flow(y, t) = D(y / (1 - t); t / (1 - t)). Then

    v = (y - D_flow(y, t)) / t,     i.e.   dy/dt = (y - D_flow(y, t)) / t,

which is the EDM probability-flow ODE with (x, sigma, D) replaced by (y, t, D_flow). So every solver of this
library run on (y_T, grid t_i, D_flow) is that solver's flow-time form: Euler becomes y + (t' - t) v, iPNDM applies
its Adams-Bashforth rows to velocities in t, DyWeight weighs velocities and shifts t.

Which solvers change. A linear multistep update in sigma is a different method from the same update in t (iPNDM
differs by about 1-2 % at NFE 3-7 on FLUX's grid), except Euler, which is the same in both (both are the exact
update for D frozen over the step). The exponential integrators (DPM-Solver++, UniPC; class attribute
`exponential_integrator`) are the same method in both variables: in flow time their lambda is
log((1 - t) / t) = -log sigma and x_t = (1 - t) x scales out of the update, so their flow form is their EDM form,
and `flow_form(solver)` says to run them unchanged.
"""
from __future__ import annotations

import math

import torch

from .errors import InputError


def flow_form(solver) -> bool:
    """Whether the solver's flow-time form differs from its EDM form (False for exponential integrators)."""
    return not getattr(solver, "exponential_integrator", False)


def flow_time(sigma):
    """t = sigma / (1 + sigma) of EDM sigmas (a float, or a tensor; sigma = inf gives t = 1)."""
    if isinstance(sigma, torch.Tensor):
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))
    return 1.0 if math.isinf(sigma) else sigma / (1 + sigma)


def edm_sigma(t):
    """sigma = t / (1 - t) of flow times (t = 1 gives sigma = inf)."""
    if isinstance(t, torch.Tensor):
        return torch.where(t >= 1, torch.full_like(t, math.inf), t / (1 - t).clamp_min(1e-300))
    return math.inf if t >= 1 else t / (1 - t)


def flow_denoiser(denoiser):
    """D_flow(y, t) = D(y / (1 - t); t / (1 - t)) of an EDM denoiser (needs t < 1: t = 1 is sigma = inf; a model
    whose network is a flow network gives D_flow directly, for any t, and skips this conversion)."""

    def D_flow(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=y.device).reshape(-1)
        if bool((t >= 1).any()):
            raise InputError("the change of variables to flow time needs t < 1 (t = 1 is sigma = inf); "
                             "a flow model must give its own flow-time denoiser")
        c = (1 - t).reshape(-1, *[1] * (y.dim() - 1))
        return denoiser((y.to(torch.float64) / c).to(y.dtype), (t / (1 - t)).to(y.dtype))

    return D_flow
