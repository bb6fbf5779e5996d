"""DyWeight (paper Section 3.3, Algorithm 2): learned, unconstrained, time-varying gradient weights with time
calibration (time shifting + time scaling).

Parameters: W (N-1 rows; row i weighs the last p = min(i+1, K) derivatives, oldest first) and s (one time scale
per network call: N-2 entries with AFS, N-1 without). Starting from t^_0 = t_0:

    d_i     = (x_i - D(x_i, |s t^_i|)) / (t^_i + eps)            time scaling (eps = 1e-8 in the lineage)
              (AFS at i = 0: d_0 = x_0 / sqrt(1 + t^_0^2); then s[j] serves step j+1)
    x_{i+1} = x_i + (t_{i+1} - t^_i) sum_j W_ij d_j              gradient weighting
    t^_{i+1} = t^_i + (sum_j W_ij) (t_{i+1} - t^_i)               time shifting

W and s are torch Parameters (float64), so `bench.distill` can learn them by backpropagation through `sample`.

Two options follow DyWeight's FLUX code (dyweight_flux/, models/flux/dyweight.py and dyweight_pipeline_flux.py of
Westlake-AGI-Lab/DyWeight at commit 620534e3), where the solver runs in flow time (solvers/flow.py):
  divisor = "scaled"          d_i = (x_i - D(x_i, s t^_i)) / (s t^_i): the derivative (velocity) at the time the
                              network saw, used as is (the lineage, divisor = "shifted", divides by t^_i + eps);
  time_scale_bounds = (a, b)  s = a + (b - a) sigmoid(phi) with phi the learned parameter (FLUX: (0.5, 1.5), phi = 0
                              at init, so s = 1); weight decay then pulls s towards the middle of the range, as there.
Saved files and `time_scale=` hold s itself (post-activation) in both parameterisations.
"""
from __future__ import annotations

import torch

from .base import afs_pair, combine, reached
from .errors import InputError
from .ipndm import AB_COEFFS
from .learned import LearnedSolver

INITS = ("adams_bashforth", "euler", "uniform")
DIVISORS = ("shifted", "scaled")


def init_rows(num_steps: int, history: int, init: str = "adams_bashforth") -> list[list[float]]:
    """Initial weight rows (oldest first) of order min(i+1, K): Adams-Bashforth (paper default), Euler or uniform."""
    if init not in INITS:
        raise InputError(f"unknown init {init!r}; accepted: {', '.join(INITS)}")
    rows = []
    for i in range(num_steps):
        p = min(i + 1, history)
        if init == "adams_bashforth":
            rows.append(list(AB_COEFFS[min(p, 4)]) if p <= 4 else [0.0] * (p - 4) + list(AB_COEFFS[4]))
        elif init == "euler":
            rows.append([0.0] * (p - 1) + [1.0])
        else:
            rows.append([1.0 / p] * p)
    return rows


class DyWeight(LearnedSolver):
    name = "dyweight"
    row_name = "weight rows"
    min_points = 2
    per_sample_grids = True
    structure = ("history", "init", "time_shift", "time_scaling", "divisor", "time_scale_bounds")
    parameter_options = ("weights", "time_scale")
    distill_defaults = {}                 # bench.distill.Settings' defaults are the paper's (Appendix D.2)

    def __init__(self, weights, time_scale=None, afs: bool | None = None, history: int | None = None,
                 time_shift: bool = True, divisor_eps: float = 1e-8, sigmas=None, metadata: dict | None = None,
                 divisor: str = "shifted", time_scale_bounds=None):
        LearnedSolver.__init__(self)
        if divisor not in DIVISORS:
            raise InputError(f"dyweight divisor must be one of {', '.join(DIVISORS)}, got {divisor!r}")
        bounds = None if time_scale_bounds is None else tuple(float(v) for v in time_scale_bounds)
        if bounds is not None and not (len(bounds) == 2 and 0 <= bounds[0] < bounds[1]):
            raise InputError(f"dyweight time_scale_bounds must be [low, high] with 0 <= low < high, got "
                             f"{time_scale_bounds!r}")
        rows = [[float(v) for v in row] for row in weights]
        if not rows:
            raise InputError("dyweight needs at least one weight row (a grid of 2 points)")
        K = history if history is not None else max(len(r) for r in rows)
        if K < 1:
            raise InputError(f"dyweight history must be >= 1, got {K}")
        for i, row in enumerate(rows):
            if len(row) != min(i + 1, K):
                raise InputError(f"dyweight weight row {i} must hold min(i+1, K={K}) = {min(i + 1, K)} weights "
                                 f"(oldest first), got {len(row)}")
        self.history = K
        self.grid_points = len(rows) + 1
        n_calls = len(rows) - (1 if afs else 0)
        if time_scale is None:
            scale = [1.0] * n_calls
        else:
            scale = [float(v) for v in time_scale]
            if afs is None:                              # infer: N-2 factors with AFS, N-1 without
                afs = len(scale) == len(rows) - 1
                n_calls = len(rows) - (1 if afs else 0)
            if len(scale) != n_calls:
                raise InputError(f"dyweight time_scale must have one factor per network call: {n_calls} for "
                                 f"{self.grid_points} grid points with afs={bool(afs)}, got {len(scale)}")
        self.afs = afs
        W = torch.zeros(len(rows), K, dtype=torch.float64)
        for i, row in enumerate(rows):
            W[i, K - len(row):] = torch.tensor(row, dtype=torch.float64)
        self.weights = torch.nn.Parameter(W)             # right-aligned: row i uses W[i, K-p:]
        self.divisor = divisor
        self.time_scale_bounds = bounds
        s_values = torch.tensor(scale, dtype=torch.float64)
        if bounds is not None:                           # the learned parameter is phi, s = a + (b - a) sigmoid(phi)
            a, b = bounds
            if bool(((s_values <= a) | (s_values >= b)).any()):
                raise InputError(f"dyweight time_scale values must lie inside time_scale_bounds {list(bounds)}")
            s_values = torch.logit((s_values - a) / (b - a))
        self.time_scale = torch.nn.Parameter(s_values)
        self.time_shift = bool(time_shift)
        self.divisor_eps = float(divisor_eps)
        self.sigmas = None if sigmas is None else [float(v) for v in sigmas]
        self.metadata = dict(metadata or {})

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_options(cls, weights=None, time_scale=None, num_points: int | None = None, afs: bool | None = None,
                     history: int = 3,
                     init: str = "adams_bashforth", time_shift: bool = True, divisor_eps: float = 1e-8,
                     divisor: str = "shifted", time_scale_bounds=None, time_scaling: bool = True):
        """solvers.get("dyweight", ...): from explicit `weights` (+ `time_scale`), or freshly initialised for
        `num_points` (+ `afs`). The paper's released coefficients: `baselines.released_solver(dataset, nfe)`, which
        passes a checkpoint to `from_checkpoint`.
        time_scaling=False freezes s (a training switch: s stays 1 at initialisation)."""
        for flag, value in (("time_shift", time_shift), ("time_scaling", time_scaling)):
            if not isinstance(value, bool):
                raise InputError(f"{flag} must be True or False, got {value!r}")
        if (weights is None) == (num_points is None):
            raise InputError("dyweight needs exactly one of weights=[[...], ...] or num_points=<N> (a fresh "
                             "Adams-Bashforth initialisation); released coefficients: baselines.released_solver")
        if weights is not None:
            return cls(weights, time_scale, afs=afs, history=None, time_shift=time_shift, divisor_eps=divisor_eps,
                       divisor=divisor, time_scale_bounds=time_scale_bounds)
        if num_points < 2:
            raise InputError(f"dyweight needs num_points >= 2, got {num_points}")
        if afs and num_points < 3:
            raise InputError("dyweight with afs=True needs num_points >= 3")
        if not isinstance(history, int) or history < 1:
            raise InputError(f"dyweight history must be an integer >= 1, got {history!r}")
        out = cls(init_rows(num_points - 1, history, init), None, afs=bool(afs), history=history,
                  time_shift=time_shift, divisor_eps=divisor_eps, divisor=divisor,
                  time_scale_bounds=time_scale_bounds)
        out.time_scale.requires_grad_(time_scaling)
        return out

    def options(self) -> dict:
        out = {"num_points": self.grid_points, "afs": self.afs, "history": self.history,
               "time_shift": self.time_shift}
        if self.divisor != "shifted":
            out["divisor"] = self.divisor
        if self.time_scale_bounds is not None:
            out["time_scale_bounds"] = list(self.time_scale_bounds)
        return out

    def scales(self) -> torch.Tensor:
        """The time scales s (post-activation), one per network call."""
        if self.time_scale_bounds is None:
            return self.time_scale
        a, b = self.time_scale_bounds
        return a + (b - a) * torch.sigmoid(self.time_scale)

    def rows(self) -> list[list[float]]:
        """The weight rows as lists, oldest first (row i has min(i+1, K) entries)."""
        W = self.weights.detach()
        return [W[i, self.history - min(i + 1, self.history):].tolist() for i in range(W.shape[0])]

    @classmethod
    def from_checkpoint(cls, ck: dict) -> "DyWeight":
        """A released checkpoint (a dict of baselines/data/dyweight_*released_coefficients.json), with its
        provenance in `metadata`."""
        return cls(ck["weights_oldest_to_newest"], ck["time_scale"], afs=ck["afs"], history=ck["history"],
                   divisor=ck.get("divisor", "shifted"), time_scale_bounds=ck.get("time_scale_bounds"),
                   metadata={"time": ck.get("time", "sigma"), "released": ck["dataset"], "nfe": ck["nfe"],
                             "run": ck["run"], "schedule": ck["schedule"], "sigma_min": ck["sigma_min_trained"],
                             "sigma_max": ck["sigma_max_trained"], "teacher": ck["teacher"],
                             "teacher_steps": ck["teacher_steps"], "loss": ck.get("loss")})

    @classmethod
    def untrained(cls, num_points: int, afs: bool = False, **structure) -> "DyWeight":
        """The paper's initialisation; a distillation's history must fit the grid (1 .. N-1)."""
        history = structure.get("history", 3)
        if not isinstance(history, int) or not 1 <= history <= num_points - 1:
            raise InputError(f"history must be an integer in 1..{num_points - 1} (the student's steps), got "
                             f"{history!r}")
        return super().untrained(num_points, afs, **structure)

    # ---- the interface -----------------------------------------------------------------------
    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return num_points - 1 - int(afs)

    def _sample(self, den, x, t, afs):
        # The scalars (weights, time scales, shifted times) are Python floats when no gradient is wanted, so every
        # update is one fused linear combination; during distillation they stay torch Parameters (same arithmetic).
        grad = torch.is_grad_enabled() and (self.weights.requires_grad or self.time_scale.requires_grad)
        W = self.weights if grad else self.weights.detach().tolist()
        scale = self.scales() if grad else self.scales().detach().tolist()
        if afs and self.afs is None:                       # time_scale was built without knowing afs
            scale = scale[1:]
        K = self.history
        t_hat = t[0]
        buffer = []
        for i in range(len(t) - 1):
            if afs and i == 0:
                d = afs_pair(x, t_hat)                          # analytical first step; d = a g as (a, g)
            else:
                s = scale[i - 1 if afs else i]
                t_in = abs(s * t_hat)                                            # time scaling: D at |s t^_i|
                d = 1 / (t_hat + self.divisor_eps if self.divisor == "shifted" else t_in), x - den(x, t_in)
            reached(den, i, t[i], x)
            buffer = (buffer + [d])[-K:]
            p = min(i + 1, K)
            w = W[i][K - p:]
            h = t[i + 1] - t_hat
            x = combine((1, x), *((h * w[j] * a, g) for j, (a, g) in enumerate(buffer[-p:])))   # gradient weighting
            if self.time_shift:
                t_hat = t_hat + sum(w) * h                     # time shifting
            else:
                t_hat = t[i + 1]
        return x

    def artefacts(self) -> list:
        """Its coefficient table (paper Fig. A.1): the weight rows, oldest first, and the time scales."""
        from .artefacts import CoefficientTable
        return [CoefficientTable(self.rows(), self.scales().detach().tolist(), bool(self.afs))]

    # ---- persistence -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"solver": "dyweight", "format": 1, "num_points": self.grid_points, "afs": self.afs,
                "history": self.history, "time_shift": self.time_shift, "divisor_eps": self.divisor_eps,
                "divisor": self.divisor, "time_scale_bounds": self.time_scale_bounds and list(self.time_scale_bounds),
                "weights_oldest_to_newest": self.rows(), "time_scale": self.scales().detach().tolist(),
                "sigmas": self.sigmas, "metadata": self.metadata}

    @classmethod
    def from_state(cls, st: dict) -> "DyWeight":
        if st.get("solver") != "dyweight":
            raise InputError(f"not a saved dyweight solver (solver={st.get('solver')!r})")
        return cls(st["weights_oldest_to_newest"], st["time_scale"], afs=st["afs"], history=st["history"],
                   time_shift=st["time_shift"], divisor_eps=st["divisor_eps"], sigmas=st.get("sigmas"),
                   metadata=st.get("metadata"), divisor=st.get("divisor", "shifted"),
                   time_scale_bounds=st.get("time_scale_bounds"))
