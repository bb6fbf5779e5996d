"""GITS (Chen et al., ICML 2024): a time grid searched by dynamic programming over teacher trajectories, for any
handcrafted base solver (docs/learned-solvers.md, section 2; official code github:zju-pi/diff-sampler, folder
`gits-main`, gits_utils.py `get_dp_list`, `dp`, `cal_deviation`).

GITS learns no solver parameters: it selects N grid points among the teacher's M points T_0 > ... > T_{M-1}.
With teacher states X_j and derivatives d_j (at X_j; the AFS value at j = 0 with AFS):

  cost (i < j)   Y_ij = X_i + (T_j - T_i) d_i  (one Euler step from a teacher state)
                 "l1" / "l2": C_ij = mean_b ||Y_ij - X_j||_1 or _2
                 "dev" (default): dev(y) = ||(X_end - y) - <X_end - y, u> u||_2, u = (X_end - X_0) / ||X_end - X_0||,
                 C_ij = mean_b dev(Y_ij) - mean_b dev(X_j) (signed; dev(X_end) = 0)
  DP (K = N-1)   V[i][1] = C[i][M-1];  V[j][k] = min_{j < i <= M-2} C[j][i] + coeff V[i][k-1]  (coeff 1.15)
                 backtrack from 0, taking the smallest j with V[w][k] = C[w][j] + coeff V[j][k-1]
  grid           T[0, j_1, ..., j_{K-1}, M-1]

AFS (GITS's own form): after the DP, each teacher index k in 1 .. j_1 - 1 is tried as an extra point at position 1
(N + 1 points; the base solver with AFS spends N - 1 calls), the one whose base-solver endpoint is closest (mean
L2) to the teacher's on the search samples wins. If j_1 = 1 the official code inserts nothing and so spends one
call less than labelled; here the DP then chooses all N points itself (metadata "afs_insertion": false), so the
budget stays exact.

The learned result is the grid (`timesteps`), sampled by `base` (a registered handcrafted solver with
`base_options`). Untrained (no `timesteps`), it samples the grid it is given: the handcrafted baseline, which the
search space contains when (M-1) is a multiple of (N-1).
"""
from __future__ import annotations

import math

import torch

from .errors import InputError
from .learned import LearnedSolver

METRICS = ("dev", "l1", "l2")


def cost_matrix(X: torch.Tensor, d: torch.Tensor, T: list[float], metric: str = "dev") -> torch.Tensor:
    """C (M, M), float64, C[i][j] for i < j (0 elsewhere), from teacher states X (M, B, ...) and derivatives
    d (M-1, B, ...) on the teacher grid T (M points)."""
    if metric not in METRICS:
        raise InputError(f"unknown gits metric {metric!r}; accepted: {', '.join(METRICS)}")
    M = len(T)
    X = X.double().flatten(2)
    d = d.double().flatten(2)
    C = torch.zeros(M, M, dtype=torch.float64)
    if metric == "dev":
        u = X[-1] - X[0]
        u = u / u.norm(dim=1, keepdim=True)

        def dev(y):
            r = X[-1] - y
            return (r - (r * u).sum(1, keepdim=True) * u).norm(dim=1).mean()
        base = [dev(X[j]) if j < M - 1 else torch.tensor(0.0, dtype=torch.float64) for j in range(M)]
    for i in range(M - 1):
        for j in range(i + 1, M):
            Y = X[i] + (T[j] - T[i]) * d[i]
            if metric == "dev":
                C[i, j] = dev(Y) - base[j]
            else:
                C[i, j] = (Y - X[j]).abs().sum(1).mean() if metric == "l1" else (Y - X[j]).norm(dim=1).mean()
    return C


def dp(C: torch.Tensor, num_points: int, coeff: float = 1.15) -> list[int]:
    """Indices [0, j_1, ..., M-1] of the N = num_points grid minimising
    C[0][j_1] + coeff C[j_1][j_2] + ... + coeff^(K-1) C[j_{K-1}][M-1] (the official recursion and backtrack)."""
    M, K = C.shape[0], num_points - 1
    if not 1 <= K <= M - 1:
        raise InputError(f"gits cannot choose {num_points} points from a teacher grid of {M}")
    C = C.tolist()
    V = [[math.inf] * (K + 1) for _ in range(M)]
    for i in range(M):
        V[i][1] = C[i][M - 1]
    for k in range(2, K + 1):
        for j in range(M - 1):
            V[j][k] = min((C[j][i] + coeff * V[i][k - 1] for i in range(j + 1, M - 1)), default=math.inf)
    out, w = [0], 0
    for k in range(K, 1, -1):
        w = next(j for j in range(w + 1, M - 1) if V[w][k] == C[w][j] + coeff * V[j][k - 1])
        out.append(w)
    return out + [M - 1]


class GITS(LearnedSolver):
    name = "gits"
    min_points = 2
    structure = ("base", "base_options", "coeff", "metric")
    parameter_options = ("timesteps",)
    #: trained by `search` over teacher trajectories (bench.distill calls it), not by gradient descent
    trained_by = "search"
    distill_defaults = {"teacher_steps": 60, "num_samples": 256, "eval_samples": 0}

    def __init__(self, num_points: int, timesteps=None, afs: bool | None = None, base: str = "ipndm",
                 base_options: dict | None = None, coeff: float = 1.15, metric: str = "dev"):
        super().__init__()
        from . import get, solver_class
        if solver_class(base).learned:
            raise InputError(f"gits base must be a handcrafted solver, got the learned {base!r}")
        if metric not in METRICS:
            raise InputError(f"unknown gits metric {metric!r}; accepted: {', '.join(METRICS)}")
        if not isinstance(coeff, (int, float)) or coeff <= 0:
            raise InputError(f"gits coeff must be a positive number, got {coeff!r}")
        self.base_name, self.base_options = base, dict(base_options or {})
        self.base = get(base, **self.base_options)
        self.min_points = self.base.min_points
        self.grid_points, self.afs = int(num_points), afs
        self.coeff, self.metric = float(coeff), metric
        self.timesteps = None
        if timesteps is not None:
            t = [float(v) for v in timesteps]
            if len(t) != self.grid_points or any(a <= b for a, b in zip(t, t[1:])):
                raise InputError(f"gits timesteps must be {self.grid_points} strictly descending values")
            self.timesteps = t

    @classmethod
    def from_options(cls, timesteps=None, num_points: int | None = None, afs: bool | None = None,
                     base: str = "ipndm", base_options: dict | None = None, coeff: float = 1.15,
                     metric: str = "dev"):
        """solvers.get("gits", ...): a searched grid (`timesteps`), or untrained for `num_points` (the base solver
        on the grid it is given)."""
        if (timesteps is None) == (num_points is None):
            raise InputError("gits needs exactly one of timesteps=[...] or num_points=<N>")
        n = len(timesteps) if timesteps is not None else num_points
        return cls(n, timesteps, afs, base, base_options, coeff, metric)

    def options(self) -> dict:
        out = {"base": self.base_name, "base_options": self.base_options, "coeff": self.coeff, "metric": self.metric,
               "afs": self.afs}
        return {**out, "timesteps": self.timesteps} if self.timesteps else {**out, "num_points": self.grid_points}

    def learns(self) -> dict[str, int]:
        return {"timesteps": self.grid_points - 2}               # the interior points of the grid

    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return self.base.calls(num_points, afs, ends_at_zero)

    def check_grid(self, sigmas, x_T, afs):
        t = super().check_grid(sigmas, x_T, afs)
        if len(t) != self.grid_points:
            raise InputError(f"this gits solver has a grid of {self.grid_points} points, got {len(t)}")
        if self.timesteps is None:
            return t
        if not (math.isclose(t[0], self.timesteps[0], rel_tol=1e-9) and
                math.isclose(t[-1], self.timesteps[-1], rel_tol=1e-9, abs_tol=1e-300)):
            raise InputError(f"this gits grid spans [{self.timesteps[-1]}, {self.timesteps[0]}], the given grid "
                             f"[{t[-1]}, {t[0]}]")
        return list(self.timesteps)

    def _sample(self, den, x, t, afs):
        return self.base._sample(den, x, t, afs)

    # ---- the search ------------------------------------------------------------------------------------------
    def search(self, T: list[float], X: torch.Tensor, d: torch.Tensor, afs: bool, denoiser=None,
               x_T: torch.Tensor | None = None) -> "GITS":
        """Set `timesteps` from teacher trajectories: states X (M, B, ...) on the teacher grid T and derivatives
        d (M-1, B, ...); with AFS, `denoiser` and `x_T` (the search samples) choose the inserted point."""
        C = cost_matrix(X, d, T, self.metric)
        idx = dp(C, self.grid_points - (1 if afs else 0), self.coeff)
        if afs and idx[1] == 1:                  # nothing to insert: the DP chooses all N points itself
            idx = dp(C, self.grid_points, self.coeff)
            self.metadata["afs_insertion"] = False
        elif afs:
            best, ref = None, X[-1, :x_T.shape[0]].double()          # the teacher's endpoints of these samples
            for k in range(1, idx[1]):
                grid = [T[i] for i in [0, k] + idx[1:]]
                with torch.no_grad():
                    out = self.base.sample(denoiser, x_T, torch.tensor(grid, dtype=torch.float64), afs=True)
                err = float((out.double() - ref).flatten(1).norm(dim=1).mean())
                if best is None or err < best[0]:
                    best = (err, k)
            self.metadata["afs_insertion"] = True
            self.metadata["search_calls"] = (idx[1] - 1) * x_T.shape[0] * self.base.calls(len(idx) + 1, True)
            idx = [0, best[1]] + idx[1:]
        self.timesteps = [float(T[i]) for i in idx]
        self.metadata["indices"] = idx
        return self

    def artefacts(self) -> list:
        """Its searched grid."""
        from .artefacts import TimeGrid
        return [TimeGrid(list(self.timesteps))] if self.timesteps is not None else []

    # ---- persistence -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"solver": self.name, "format": 1, "num_points": self.grid_points, "afs": self.afs,
                "timesteps": self.timesteps, "base": self.base_name, "base_options": self.base_options,
                "coeff": self.coeff, "metric": self.metric, "sigmas": self.sigmas, "metadata": self.metadata}

    @classmethod
    def from_state(cls, st: dict) -> "GITS":
        out = cls(st["num_points"], st.get("timesteps"), st.get("afs"), st["base"], st.get("base_options"),
                  st.get("coeff", 1.15), st.get("metric", "dev"))
        out.sigmas, out.metadata = st.get("sigmas"), dict(st.get("metadata") or {})
        return out
