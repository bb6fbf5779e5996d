"""The common solver interface.

Every sampler integrates the probability-flow ODE of an EDM denoiser,

    dx/dsigma = d(x, sigma) = (x - D(x, sigma)) / sigma,

over a descending grid of sigmas t_0 > ... > t_{N-1}, starting from x_T = x(t_0), and returns x(t_{N-1}).
`denoiser(x, sigma)` receives sigma as a tensor of shape (B,) (one value per sample, as in k-diffusion).

Per-sample grids. `sigmas` may also be a (B, N) tensor, one descending grid per sample (an instance-aware
discretization). A solver that declares `per_sample_grids = True` (every handcrafted solver and DyWeight) then
integrates each row exactly as it would on its own: `_sample` receives the grid as `Columns`, whose element i is
the (B,) float64 tensor of every sample's t_i, so each step coefficient is a (B,) vector and `combine` scales each
sample's row by its own. The same code serves floats (the 1-D path, unchanged) and tensors, through the scalar
helpers `is_zero`, `sqrt` and `log` below. A (B, N) grid whose rows are all equal takes the 1-D path. Rows must
agree on whether they end at 0.

The equations follow docs/solver-conventions.md (the EDM lineage behind the DyWeight paper's numbers), whose grids end
at sigma_min. One deliberate extension: a grid may end at 0 (flow models). No solver then evaluates the network at 0:
a step onto 0 is first order (Heun: its Euler predictor; DPM-Solver++ / UniPC: x = M_i, without corrector), and
`calls(..., ends_at_zero=True)` / `num_points(..., ends_at_zero=True)` / `schedules.grid_for` count that.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import InputError, NonFiniteError  # noqa: F401  (re-exported: solvers.base.InputError)

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Features:
    """A denoiser's optional side output (`denoiser.features`): what its network computed inside its latest call,
    e.g. a U-Net's bottleneck, for learned solvers whose predictor reads it (AMED-Solver). Nothing is captured until
    a solver sets `capture = True`; then `latest` holds the last call's (B, F) features. Wrappers (the sampling
    loop's `_Checked`, `CountingDenoiser`) pass the attribute on."""

    def __init__(self):
        self.capture = False
        self.latest = None


class Solver:
    """Base class. A subclass sets `name`, `min_points` and implements `_sample` and `calls`."""

    name: str = ""
    #: fewest grid points the solver accepts (with AFS one more may be needed; see `check_grid`)
    min_points: int = 2
    #: an exponential integrator (DPM-Solver++, UniPC) is the same method in sigma and in flow time (solvers.flow)
    exponential_integrator: bool = False
    #: a learned solver (solvers.learned.LearnedSolver): distilled, released or given explicit parameters
    learned: bool = False
    #: integrates a (B, N) grid, one row per sample (see the module docstring)
    per_sample_grids: bool = True

    # ---- the public interface -------------------------------------------------------------------
    def sample(self, denoiser: Denoiser, x_T: torch.Tensor, sigmas, afs: bool = False,
               denoise_to_zero: bool = False, callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """Integrate from x_T at sigmas[0] to sigmas[-1]; return x at the last grid point.

        afs: replace the first network evaluation by the analytical first step d_0 = x_0 / sqrt(1 + t_0^2).
        denoise_to_zero: return D(x, sigmas[-1]) instead (one more network evaluation).
        callback: k-diffusion's hook, called once at every grid point i = 0 .. N-1 with
            {"i": i, "t": t_i, "x": x_i, "denoised": D_i}: x_i the state at t_i (with its autograd graph, when
            there is one), D_i the denoiser output the solver used at that point (None where it made no call
            there: the analytical first step, the last point unless denoise_to_zero). One run thus gives every
            state of the trajectory; the same hook serves progress and debugging.
        """
        sigmas = self.check_grid(sigmas, x_T, afs)
        den = _Checked(denoiser, callback)
        x = self._sample(den, x_T, sigmas, afs)
        denoised = None
        if denoise_to_zero:
            if is_zero(sigmas[-1]):
                raise InputError("denoise_to_zero=True needs a grid that ends above 0 (this one ends at 0)")
            denoised = den(x, sigmas[-1])
        reached(den, len(sigmas) - 1, sigmas[-1], x, denoised)
        x = x if denoised is None else denoised
        den.raise_if_nonfinite(x, self.name)
        return x

    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        """Number of denoiser calls `sample` makes on a grid of `num_points` points."""
        raise NotImplementedError

    def num_points(self, nfe: int, afs: bool = False, evals_per_call: int = 1, ends_at_zero: bool = False) -> int:
        """The grid size that spends exactly `nfe` network evaluations (inverse of `calls`).

        evals_per_call = 2 for classifier-free guidance (each call evaluates the network twice).
        ends_at_zero: the grid's last point is 0 (e.g. flow models); Heun then skips its last correction.
        Raises ValueError when no grid size gives exactly that budget.
        """
        if nfe % evals_per_call:
            raise InputError(f"NFE {nfe} is not a multiple of {evals_per_call} evaluations per call "
                             "(classifier-free guidance spends 2 per call)")
        want = nfe // evals_per_call
        # calls() never decreases with n; where two grid sizes spend the same budget (UniPC: N = max_order and
        # N = max_order + 1, because the last step's corrector is dropped) take the larger one, which is the
        # lineage's N = NFE + 1 (+ 1 with AFS). A bisection finds the first n that spends more than `want`.
        lo = self.min_points + (1 if afs else 0)
        hi = self.min_points + 2 * want + 4                  # calls(hi) > want for every solver of this family
        if self.calls(lo, afs, ends_at_zero) <= want:
            first, last = lo, hi                             # calls(first) <= want < calls(last)
            while last - first > 1:
                mid = (first + last) // 2
                first, last = (mid, last) if self.calls(mid, afs, ends_at_zero) <= want else (first, mid)
            if self.calls(first, afs, ends_at_zero) == want:
                return first
        reachable = [self.calls(n, afs, ends_at_zero) * evals_per_call
                     for n in range(self.min_points + (1 if afs else 0), self.min_points + 8)]
        raise InputError(f"{self.name} cannot spend exactly NFE={nfe} (afs={afs}"
                         f"{', grid ending at 0' if ends_at_zero else ''}); "
                         f"reachable budgets start {sorted(set(reachable))[:6]}...")

    @classmethod
    def budget_probe(cls) -> "Solver":
        """An instance with default options, for budget arithmetic (`calls`, `num_points`) from a name."""
        return cls()

    # ---- helpers for subclasses ---------------------------------------------------------------
    def _sample(self, den: "_Checked", x: torch.Tensor, t: list[float], afs: bool) -> torch.Tensor:
        raise NotImplementedError

    def check_grid(self, sigmas, x_T: torch.Tensor, afs: bool):
        """Validate the grid; return it as a list of Python floats (float64 arithmetic for coefficients), or, for a
        (B, N) grid with differing rows, as `Columns`."""
        if not isinstance(x_T, torch.Tensor) or x_T.dim() < 1:
            raise InputError("x_T must be a tensor of shape (B, ...)")
        if isinstance(sigmas, torch.Tensor) and sigmas.dim() == 2:
            rows = self.check_rows(sigmas, x_T, afs)
            if rows is not None:
                return rows
            sigmas = sigmas[0]                               # every row equal: the 1-D path
        if isinstance(sigmas, torch.Tensor):
            if sigmas.dim() != 1:
                raise InputError(f"sigmas must be 1-D (N,) or per-sample (B, N), got shape {tuple(sigmas.shape)}")
            t = sigmas.detach().double().cpu().tolist()
        else:
            t = [float(v) for v in sigmas]
        need = self.min_points + (1 if afs else 0)
        if len(t) < need:
            raise InputError(f"{self.name} needs at least {need} grid points{' with afs=True' if afs else ''}, "
                             f"got {len(t)}")
        if any(not math.isfinite(v) for v in t) or t[-1] < 0:
            raise InputError("sigmas must be finite and non-negative")
        if any(a <= b for a, b in zip(t, t[1:])):
            raise InputError("sigmas must be strictly descending (t_0 > t_1 > ... > t_{N-1})")
        if t[-2] == 0.0:
            raise InputError("only the last grid point may be 0")
        return t

    def check_rows(self, sigmas: torch.Tensor, x_T: torch.Tensor, afs: bool):
        """Validate a (B, N) grid row by row; return its `Columns`, or None when every row is the same grid (and
        no gradient is asked of it)."""
        g = sigmas.detach().double().cpu()
        if g.shape[0] != x_T.shape[0]:
            raise InputError(f"a per-sample grid needs one row per sample: {x_T.shape[0]} rows, got {g.shape[0]}")
        if not bool(torch.isfinite(g).all()) or bool((g < 0).any()):
            raise InputError("sigmas must be finite and non-negative (per-sample grid)")
        bad = (g[:, 1:] >= g[:, :-1]).any(dim=1)
        if bool(bad.any()):
            raise InputError(f"every row of a per-sample grid must be strictly descending; row "
                             f"{int(bad.nonzero()[0])} is not")
        if g.shape[1] >= 2 and bool((g[:, -2] == 0).any()):
            raise InputError("only the last grid point may be 0")
        if len({bool(v) for v in (g[:, -1] == 0)}) > 1:
            raise InputError("the rows of a per-sample grid must all end at 0 or all end above 0")
        if bool((g == g[:1]).all()) and not sigmas.requires_grad:
            return None
        if not self.per_sample_grids:
            raise InputError(f"{self.name} does not support per-sample (B, N) grids yet; solvers that do: the "
                             "handcrafted ones and dyweight")
        need = self.min_points + (1 if afs else 0)
        if g.shape[1] < need:
            raise InputError(f"{self.name} needs at least {need} grid points{' with afs=True' if afs else ''}, "
                             f"got {g.shape[1]}")
        return Columns(sigmas.to(torch.float64).unbind(1))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def options(self) -> dict:
        """The keyword options that rebuild this solver with `solvers.get(name, **options)`."""
        return {}


class Columns(list):
    """A per-sample grid as its N columns: element i is the (B,) float64 tensor of every sample's t_i (it keeps
    the grid's gradient, so a grid predicted by a network is trained through the solver)."""

    def rows(self) -> list[tuple]:
        """The grid row by row, as tuples of floats (for coefficients computed per grid)."""
        return [tuple(r) for r in torch.stack(list(self), 1).detach().cpu().tolist()]


# Scalar helpers for step coefficients: a grid value is a float (1-D grids), or a tensor, 0-d (a learned global
# grid, differentiable) or (B,) (a per-sample grid).
def is_zero(v) -> bool:
    """Whether the grid value is 0 (for every sample: the rows of a per-sample grid agree on it)."""
    return bool((v == 0).all()) if isinstance(v, torch.Tensor) else v == 0


def sqrt(v):
    return torch.sqrt(v) if isinstance(v, torch.Tensor) else math.sqrt(v)


def log(v):
    return torch.log(v) if isinstance(v, torch.Tensor) else math.log(v)


def reached(den, i: int, t, x: torch.Tensor, denoised=None) -> None:
    """Report grid point i (state x at t, and the denoiser output used there if not the latest call's at x) to the
    sampling callback, if the denoiser carries one (`Solver.sample`). Every solver calls it once per step, after its
    first evaluation at t_i, before the update; `sample` reports the last point."""
    hook = getattr(den, "reached", None)
    if hook is not None:
        hook(i, t, x, denoised)


# Derivatives in factored form (a, g) with d = a g: the scalar a rides in the update's `combine`, so forming d costs
# one tensor pass (x - D) and the analytical first step none.
def derivative(den, x: torch.Tensor, t: float) -> tuple[float, torch.Tensor]:
    """d(x, t) = (x - D(x, t)) / t as the pair (1 / t, x - D(x, t))."""
    return 1.0 / t, x - den(x, t)


def afs_pair(x0: torch.Tensor, t0: float) -> tuple[float, torch.Tensor]:
    """The analytical first step d_0 = x_0 / sqrt(1 + t_0^2) (i.e. D(x_0, t_0) ~ E[x] = 0 at sigma_max) as the pair
    (1 / sqrt(1 + t_0^2), x_0)."""
    return 1.0 / sqrt(1.0 + t0 * t0), x0


def combine(*terms) -> torch.Tensor:
    """sum_k c_k y_k for terms (c_k, y_k): the linear combinations every update of these solvers is made of.

    Python-number coefficients cost one tensor pass per term: the first term makes the output (one multiply, none
    when c = 1 and a second term follows), the rest add into it in place (`add_(y, alpha=c)`); zero coefficients
    cost nothing. Tensor coefficients (DyWeight's parameters during distillation) keep the plain differentiable form
    `out + c * y`. A coefficient of shape (B,) for y of shape (B, ...) is per sample (a per-sample grid's): it
    scales sample b's row by c[b], in y's dtype and on y's device.
    """
    if any(isinstance(c, torch.Tensor) for c, _ in terms):
        out = None
        for c, y in terms:
            if isinstance(c, torch.Tensor) and c.dim() == 1 and y.dim() > 1 and c.shape[0] == y.shape[0]:
                c = c.to(dtype=y.dtype, device=y.device).reshape(-1, *[1] * (y.dim() - 1))
            out = c * y if out is None else out + c * y
        return out
    terms = [(c, y) for c, y in terms if c] or terms[:1]
    (c, y), rest = terms[0], terms[1:]
    if c != 1:
        out = torch.mul(y, c)
    elif rest:
        (c2, y2), rest = rest[0], rest[1:]
        out = torch.add(y, y2, alpha=c2)
    else:
        return y
    for c, y in rest:
        if y.dtype == out.dtype and y.shape == out.shape:
            out.add_(y, alpha=c)                         # into the fresh output: no allocation
        else:
            out = torch.add(out, y, alpha=c)             # promotes / broadcasts like the plain sum
    return out


class _Checked:
    """Wraps a denoiser: sigma as a (B,) tensor in x's dtype, and a record of non-finite outputs.

    The record is the (min, max) of every output, one fused reduction per call without a device sync: both are
    finite iff every entry is (NaN propagates). They are read once, after sampling (`raise_if_nonfinite`).
    """

    def __init__(self, denoiser: Denoiser, callback: Callable[[dict], None] | None = None):
        self.denoiser = denoiser
        self.features = getattr(denoiser, "features", None)
        self.callback = callback
        self.last = None                             # (input, output) of the latest call, kept for the callback
        self.extrema: list = []
        self.sigmas: list = []                       # each call's sigma as given, for the error message

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor):
            s = sigma.to(dtype=x.dtype, device=x.device).reshape(-1)
            s = s.expand(x.shape[0]) if s.numel() == 1 else s
        else:
            s = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
        out = self.denoiser(x, s)
        if out.shape != x.shape:
            raise InputError(f"the denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        self.extrema.append(torch.aminmax(out.detach()))
        self.sigmas.append(sigma)
        if self.callback is not None:
            self.last = (x, out)
        return out

    def reached(self, i: int, t, x: torch.Tensor, denoised=None) -> None:
        """Hand grid point i to the callback (see `Solver.sample`); `denoised` None: the latest call's output when
        that call was made at this very state x, else None (no call at this point)."""
        if self.callback is None:
            return
        if denoised is None and self.last is not None and self.last[0] is x:
            denoised = self.last[1]
        self.callback({"i": i, "t": t, "x": x, "denoised": denoised})

    def raise_if_nonfinite(self, x: torch.Tensor, name: str) -> None:
        """NonFiniteError if any denoiser output or the result is NaN/inf (naming the first bad call)."""
        values = torch.stack([v for pair in self.extrema + [torch.aminmax(x.detach())] for v in pair])  # promotes
        finite = torch.isfinite(values).reshape(-1, 2).all(dim=1).tolist()
        if all(finite):
            return
        bad = [i for i, ok in enumerate(finite[:-1]) if not ok]
        where = (f"the denoiser returned NaN/inf at call {bad[0] + 1} of {len(self.extrema)} "
                 f"(sigma={float(torch.as_tensor(self.sigmas[bad[0]]).detach().reshape(-1)[0]):.6g})" if bad
                 else "the denoiser's outputs were finite, so the solver's update diverged")
        raise NonFiniteError(f"{name}: sampling produced non-finite values; {where}")
