"""EPD-Solver (Zhu et al., ICCV 2025): K parallel intermediate points per step, with learned global tables
(docs/learned-solvers.md, section 1; official code github:BeierZhu/EPD, branch `EPD-Solver`, solvers.py
`epd_parallel_sampler` and training/networks.py `EPD_predictor`).

Four raw tables of shape (N-1, K), one row per step, in the official constrained forms:

    r = sigmoid(r_raw)                                  in (0, 1): where each point sits between t_i and t_{i+1}
    w = softmax(w_raw) along K                          the points' weights (a row sums to 1)
    c = 2 sigmoid(c_raw / 2) a_d + (1 - a_d)            in (1 - a_d, 1 + a_d)  (a_d = scale_dir_bound; 0: c = 1)
    a = 2 sigmoid(a_raw / 2) a_t + (1 - a_t)            in (1 - a_t, 1 + a_t)  (a_t = scale_time_bound; 0: a = 1)

Step i (h_i = t_{i+1} - t_i), from x_0 = t_0 z:

    d_i = d(x_i, t_i)                       (AFS at i = 0: d_0 = x_0 / sqrt(1 + t_0^2))
    s_k = t_{i+1}^{r_ik} t_i^{1 - r_ik}     geometric interpolation, k = 1..K
    y_k = x_i + (s_k - t_i) d_i             base "euler"; base "ipndm": the iPNDM Adams-Bashforth combination of
                                            d_i and the buffered past d's (order min(max_order, buffered + 1))
    g_k = (y_k - D(y_k, a_ik s_k)) / s_k    the divisor is s_k, not a_ik s_k (as the official code)
    x_{i+1} = x_i + h_i sum_k w_ik c_ik g_k

NFE. This project counts network evaluations: (N-1)(1 + K) - [afs]. The official count treats the K points as one
batched call ("latency" NFE 2(N-1) - [afs]); `latency_calls` gives it, and the K points are evaluated here as K
sequential calls (the same result; the runner counts every call). The grid must end above 0 (s_k is a geometric
interpolation).

Initialisation. "official": the four raw tables drawn from N(0, 1) (a generator seeded by `seed`; the official code
draws them from the global RNG, which this does not replay); "neutral": raw zeros (r = 1/2, w = 1/K, a = c = 1).
Explicit tables are given in constrained form (`r=`, `weights=`, `scale_dir=`, `scale_time=`, each (N-1, K)).

Reductions (tests): K = 1, r = 1/2, a = c = 1 is DPM-Solver-2 with the geometric midpoint; K = 2, r = (0, 1),
w = (1/2, 1/2), a = c = 1 is Heun (with one extra evaluation at r = 0).

Training follows bench.distill's shared loop. The official recipe supervises every step with the teacher's state at
the student's grid points (here `supervision = "path"`), with the teacher Heun; its per-step optimisation order
and the final-step Inception loss weight (alpha = 10) are not replicated.
"""
from __future__ import annotations

import torch

from .base import afs_pair, combine, reached
from .errors import InputError
from .ipndm import AB_COEFFS
from .learned import LearnedSolver

BASES = ("euler", "ipndm")
INITS = ("official", "neutral")


def _bounded(raw: torch.Tensor, bound: float) -> torch.Tensor:
    return 2 * torch.sigmoid(raw / 2) * bound + (1 - bound) if bound else torch.ones_like(raw)


def _unbounded(value: torch.Tensor, bound: float, what: str) -> torch.Tensor:
    """The raw table whose constrained form is `value` (the inverse of _bounded)."""
    if not bound:
        if not torch.allclose(value, torch.ones_like(value), rtol=0, atol=1e-12):
            raise InputError(f"epd {what} must be all ones when its bound is 0")
        return torch.zeros_like(value)
    u = (value - (1 - bound)) / (2 * bound)
    if bool(((u <= 0) | (u >= 1)).any()):
        raise InputError(f"epd {what} values must lie inside (1 - bound, 1 + bound) = ({1 - bound}, {1 + bound})")
    return 2 * torch.logit(u)


class EPD(LearnedSolver):
    name = "epd"
    row_name = "table rows"
    ends_above_zero = "its points interpolate sigma geometrically"
    min_points = 2
    structure = ("K", "scale_dir_bound", "scale_time_bound", "base", "max_order", "init", "seed")
    parameter_options = ("r", "weights", "scale_dir", "scale_time")
    distill_defaults = {"supervision": "path", "teacher": "heun", "lr": 0.05}

    def __init__(self, r_raw, w_raw, c_raw, a_raw, afs: bool | None = None, scale_dir_bound: float = 0.05,
                 scale_time_bound: float = 0.05, base: str = "euler", max_order: int = 3):
        super().__init__()
        if base not in BASES:
            raise InputError(f"epd base must be one of {', '.join(BASES)}, got {base!r}")
        if max_order not in (1, 2, 3, 4):
            raise InputError(f"epd max_order must be 1, 2, 3 or 4, got {max_order!r}")
        for what, b in (("scale_dir_bound", scale_dir_bound), ("scale_time_bound", scale_time_bound)):
            if not isinstance(b, (int, float)) or not 0 <= b < 1:
                raise InputError(f"epd {what} must be a number in [0, 1), got {b!r}")
        tables = [torch.as_tensor(v, dtype=torch.float64) for v in (r_raw, w_raw, c_raw, a_raw)]
        shape = tables[0].shape
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1 or any(t.shape != shape for t in tables):
            raise InputError("epd tables r, weights, scale_dir, scale_time must all have shape (N-1, K), got "
                             f"{[tuple(t.shape) for t in tables]}")
        self.r_raw, self.w_raw, self.c_raw, self.a_raw = (torch.nn.Parameter(t.clone()) for t in tables)
        self.grid_points, self.K = shape[0] + 1, shape[1]
        self.afs = afs
        self.scale_dir_bound, self.scale_time_bound = float(scale_dir_bound), float(scale_time_bound)
        self.base, self.max_order = base, max_order

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_options(cls, r=None, weights=None, scale_dir=None, scale_time=None, num_points: int | None = None,
                     afs: bool | None = None, K: int = 2, scale_dir_bound: float = 0.05,
                     scale_time_bound: float = 0.05, base: str = "euler", max_order: int = 3,
                     init: str = "official", seed: int = 0):
        """solvers.get("epd", ...): fresh for `num_points` (+ K, init), or from explicit constrained tables."""
        if (r is None) == (num_points is None):
            raise InputError("epd needs exactly one of r=[[...]] (with weights=, optionally scale_dir=, "
                             "scale_time=) or num_points=<N>")
        bounds = dict(afs=afs, scale_dir_bound=scale_dir_bound, scale_time_bound=scale_time_bound, base=base,
                      max_order=max_order)
        if r is not None:
            if weights is None:
                raise InputError("epd r=... needs weights=[[...]] too (rows summing to 1)")
            r = torch.as_tensor(r, dtype=torch.float64)
            w = torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != r.shape or bool((w <= 0).any()) or not torch.allclose(w.sum(1), torch.ones(len(w),
                                                                                  dtype=w.dtype), atol=1e-9):
                raise InputError("epd weights must have r's shape (N-1, K), be positive and sum to 1 per row")
            if bool(((r < 0) | (r > 1)).any()):
                raise InputError("epd r values must lie in [0, 1]")
            ones = torch.ones_like(r)
            c = torch.as_tensor(scale_dir, dtype=torch.float64) if scale_dir is not None else ones
            a = torch.as_tensor(scale_time, dtype=torch.float64) if scale_time is not None else ones
            if c.shape != r.shape or a.shape != r.shape:
                raise InputError("epd scale_dir and scale_time must have r's shape (N-1, K)")
            return cls(torch.logit(r), torch.log(w), _unbounded(c, scale_dir_bound, "scale_dir"),
                       _unbounded(a, scale_time_bound, "scale_time"), **bounds)
        if not isinstance(num_points, int) or num_points < 2:
            raise InputError(f"epd needs num_points >= 2, got {num_points!r}")
        if not isinstance(K, int) or K < 1:
            raise InputError(f"epd K (points per step) must be an integer >= 1, got {K!r}")
        if init not in INITS:
            raise InputError(f"unknown epd init {init!r}; accepted: {', '.join(INITS)}")
        shape = (num_points - 1, K)
        if init == "neutral":
            raws = [torch.zeros(shape, dtype=torch.float64) for _ in range(4)]
        else:
            g = torch.Generator().manual_seed(int(seed))
            raws = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4)]
        return cls(*raws, **bounds)

    # ---- the constrained tables ----------------------------------------------------------------
    def tables(self) -> dict[str, torch.Tensor]:
        """r, weights, scale_dir, scale_time in constrained form, each (N-1, K)."""
        return {"r": torch.sigmoid(self.r_raw), "weights": torch.softmax(self.w_raw, dim=1),
                "scale_dir": _bounded(self.c_raw, self.scale_dir_bound),
                "scale_time": _bounded(self.a_raw, self.scale_time_bound)}

    def options(self) -> dict:
        out = {k: v.detach().tolist() for k, v in self.tables().items()}
        out.update(afs=self.afs, scale_dir_bound=self.scale_dir_bound, scale_time_bound=self.scale_time_bound,
                   base=self.base, max_order=self.max_order)
        return out

    def learns(self) -> dict[str, int]:
        out = super().learns()
        for raw, bound in (("c_raw", self.scale_dir_bound), ("a_raw", self.scale_time_bound)):
            if not bound:
                out.pop(raw, None)                        # a table with bound 0 is ignored (all ones)
        return out

    # ---- the interface -----------------------------------------------------------------------
    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return (num_points - 1) * (1 + self.K) - int(afs)

    def latency_calls(self, num_points: int, afs: bool = False) -> int:
        """The official NFE: the K parallel points of a step count as one batched call."""
        return 2 * (num_points - 1) - int(afs)

    def _sample(self, den, x, t, afs):
        grad = torch.is_grad_enabled() and self.r_raw.requires_grad
        tab = {k: (v if grad else v.detach().tolist()) for k, v in self.tables().items()}
        buffer = []                                           # past d_i (factored pairs), for base "ipndm"
        for i in range(len(t) - 1):
            # the derivative at t_i
            d = afs_pair(x, t[i]) if afs and i == 0 else (1.0 / t[i], x - den(x, t[i]))
            reached(den, i, t[i], x)
            order = min(self.max_order, len(buffer) + 1) if self.base == "ipndm" else 1
            ab = AB_COEFFS[order]
            past = (buffer + [d])[-order:]
            # the K intermediate points and their derivatives
            g_terms = []
            for k in range(self.K):
                r = tab["r"][i][k]
                s = t[i + 1] ** r * t[i] ** (1 - r)
                step = s - t[i]
                y = combine((1, x), *((step * c * a_j, g_j) for c, (a_j, g_j) in zip(ab, past)))
                s_in = tab["scale_time"][i][k] * s
                g_terms.append((tab["weights"][i][k] * tab["scale_dir"][i][k] / s, y - den(y, s_in)))
            # the update
            h = t[i + 1] - t[i]
            x = combine((1, x), *((h * c, g) for c, g in g_terms))
            if self.base == "ipndm":
                buffer = (buffer + [d])[-(self.max_order - 1):] if self.max_order > 1 else []
        return x

    # ---- persistence -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"solver": self.name, "format": 1, "num_points": self.grid_points, "K": self.K, "afs": self.afs,
                "scale_dir_bound": self.scale_dir_bound, "scale_time_bound": self.scale_time_bound,
                "base": self.base, "max_order": self.max_order,
                "raw": {k: getattr(self, k).detach().tolist() for k in ("r_raw", "w_raw", "c_raw", "a_raw")},
                "tables": {k: v.detach().tolist() for k, v in self.tables().items()},
                "sigmas": self.sigmas, "metadata": self.metadata}

    @classmethod
    def from_state(cls, st: dict) -> "EPD":
        if st.get("solver") != "epd":
            raise InputError(f"not a saved epd solver (solver={st.get('solver')!r})")
        raw = st["raw"]
        out = cls(raw["r_raw"], raw["w_raw"], raw["c_raw"], raw["a_raw"], afs=st["afs"],
                  scale_dir_bound=st["scale_dir_bound"], scale_time_bound=st["scale_time_bound"], base=st["base"],
                  max_order=st["max_order"])
        out.sigmas, out.metadata = st.get("sigmas"), dict(st.get("metadata") or {})
        return out
