"""Time grids: N sigmas t_0 > ... > t_{N-1} over [sigma_min, sigma_max] (docs/solver-conventions.md, "Time grids").

Every function returns a float64 tensor of shape (N,). Grids are plain data: a caller may also pass its own.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import InputError


def polynomial(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM: t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
    _check(n, sigma_min, sigma_max)
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + i * (b - a)) ** rho


def logsnr(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Log-uniform in sigma: t_i = exp(-lambda_i), lambda = linspace(-log smax, -log smin, N)."""
    _check(n, sigma_min, sigma_max)
    lam = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), n, dtype=torch.float64)
    return torch.exp(-lam)


def time_uniform(n: int, sigma_min: float, sigma_max: float, eps_s: float = 1e-3, rho: float = 1.0) -> torch.Tensor:
    """Uniform in VP time tau in [eps_s, 1] (rho = 1), mapped through the VP-SDE sigma(tau) that spans the range."""
    _check(n, sigma_min, sigma_max)
    beta_d = 2 * (math.log(sigma_min ** 2 + 1) / eps_s - math.log(sigma_max ** 2 + 1)) / (eps_s - 1)
    beta_min = math.log(sigma_max ** 2 + 1) - 0.5 * beta_d
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    tau = (1 + i * (eps_s ** (1 / rho) - 1)) ** rho
    return torch.sqrt(torch.exp(beta_d * tau ** 2 / 2 + beta_min * tau) - 1)


def discrete(n: int, sigma_fn: Callable[[torch.Tensor], torch.Tensor], eps: float = 1e-3,
             rho: float = 1.0) -> torch.Tensor:
    """Uniform in a model's own time tau in [eps, 1] (rho = 1), mapped through the model's sigma(tau)."""
    if n < 2:
        raise InputError(f"a grid needs at least 2 points, got {n}")
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    tau = (1 + i * (eps ** (1 / rho) - 1)) ** rho
    return sigma_fn(tau).to(torch.float64)


def vp_discrete_sigma_fn(alphas_cumprod: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """sigma(tau) of a discrete VP model with T steps: index tau*T - 1, log-sigma interpolated between steps.

    For Stable Diffusion v1.5 (T = 1000, scaled-linear betas) tau in [1e-3, 1] spans [0.029168, 14.6146].
    """
    ac = alphas_cumprod.to(torch.float64)
    log_sigmas = torch.log(((1 - ac) / ac).sqrt())
    T = len(ac)

    def sigma_fn(tau: torch.Tensor) -> torch.Tensor:
        idx = (tau.to(torch.float64) * T - 1).clamp(0, T - 1)
        lo = idx.floor().long().clamp(max=T - 2)
        w = idx - lo
        return torch.exp((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1])

    return sigma_fn


def flow_shift(n: int, shift: float = 3.0, t_max: float = 1.0, t_min: float = None, sigma_min: float = None,
               sigma_max: float = None) -> torch.Tensor:
    """Flow-matching grid: t uniform in [t_max, t_min], shifted t' = shift t / (1 + (shift - 1) t), as EDM sigma.

    A flow model x_t = (1 - t) x_0 + t eps is an EDM model at sigma = t / (1 - t) (scaled by 1/(1-t)).
    t_max = 1 maps to sigma = inf, so by default the grid starts at sigma_max (if given) or t = 1 - 1e-3.
    """
    if n < 2:
        raise InputError(f"a grid needs at least 2 points, got {n}")
    if t_min is None:
        t_min = 1.0 / n if sigma_min is None else None
    t = torch.linspace(t_max, t_min if t_min is not None else 0.0, n, dtype=torch.float64)
    ts = shift * t / (1 + (shift - 1) * t)
    ts = ts.clamp(max=1 - 1e-3) if sigma_max is None else ts
    sig = ts / (1 - ts)
    if sigma_max is not None:
        sig = sig.clamp(max=sigma_max)
    if sigma_min is not None:
        sig[-1] = sigma_min
    return sig


KINDS = ("polynomial", "logsnr", "time_uniform", "discrete", "flow_shift")


def options_of(kind: str) -> list[str]:
    """The keyword options a schedule takes (beyond the point count and the sigma range)."""
    import inspect
    fn = {"polynomial": polynomial, "logsnr": logsnr, "time_uniform": time_uniform, "discrete": discrete,
          "flow_shift": flow_shift}.get(kind)
    if fn is None:
        raise InputError(f"unknown schedule {kind!r}; accepted: {', '.join(KINDS)}")
    return [p for p in inspect.signature(fn).parameters if p not in ("n", "sigma_min", "sigma_max")]


def get(kind: str, n: int, sigma_min: float = None, sigma_max: float = None, **opts) -> torch.Tensor:
    """Build a grid by name: one of KINDS (options as keywords, e.g. rho=7, sigma_fn=..., shift=3); an unknown
    option or a value of the wrong type is one InputError naming what the schedule accepts."""
    accepted = options_of(kind)
    unknown = [k for k in opts if k not in accepted]
    if unknown:
        raise InputError(f"the {kind} schedule has no option {', '.join(map(repr, unknown))}; accepted: "
                         f"{', '.join(accepted) or '(none)'}")
    try:
        return _build(kind, n, sigma_min, sigma_max, opts)
    except TypeError as e:
        raise InputError(f"the {kind} schedule's options {opts} are not of the right type ({e})") from None


def _build(kind: str, n: int, sigma_min, sigma_max, opts: dict) -> torch.Tensor:
    if kind == "polynomial":
        return polynomial(n, sigma_min, sigma_max, **opts)
    if kind == "logsnr":
        return logsnr(n, sigma_min, sigma_max, **opts)
    if kind == "time_uniform":
        return time_uniform(n, sigma_min, sigma_max, **opts)
    if kind == "discrete":
        if "sigma_fn" not in opts:
            raise InputError("the discrete schedule needs sigma_fn, the model's sigma(tau) (a model adapter gives it)")
        return discrete(n, **opts)
    return flow_shift(n, sigma_min=sigma_min, sigma_max=sigma_max, **opts)


def grid_for(solver, nfe: int, kind: str = "polynomial", sigma_min: float = 0.002, sigma_max: float = 80.0,
             afs: bool = False, evals_per_call: int = 1, **opts) -> torch.Tensor:
    """The grid that gives `solver` (an object or a name) exactly `nfe` network evaluations.

    evals_per_call = 2 under classifier-free guidance. This is the one place that maps a budget to grid points.
    A grid that ends at 0 (flow_shift with t_min=0) saves Heun its last correction; the size accounts for that.
    """
    if isinstance(solver, str):
        from .registry import solver_class
        solver = solver_class(solver).budget_probe()
    ends_at_zero = float(get(kind, 3, sigma_min, sigma_max, **opts)[-1]) == 0.0
    n = solver.num_points(nfe, afs=afs, evals_per_call=evals_per_call, ends_at_zero=ends_at_zero)
    return get(kind, n, sigma_min, sigma_max, **opts)


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if n < 2:
        raise InputError(f"a grid needs at least 2 points, got {n}")
    if sigma_min is None or sigma_max is None or not (0 < sigma_min < sigma_max):
        raise InputError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
