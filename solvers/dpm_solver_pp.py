"""DPM-Solver++ multistep (2M / 3M): data prediction M_i = D(x_i, t_i), in lambda = -log t.

h = lambda_{i+1} - lambda_i, r0 = h_prev / h, r1 = h_prevprev / h.
    1st order: x_{i+1} = (t_{i+1}/t_i) x_i - (e^{-h} - 1) M_i
    2M:        x_{i+1} = (t_{i+1}/t_i) x_i - (e^{-h} - 1) (M_i + (M_i - M_{i-1}) / (2 r0))
    3M:        D1_0 = (M_i - M_{i-1}) / r0,  D1_1 = (M_{i-1} - M_{i-2}) / r1,
               D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1),
               phi1 = e^{-h} - 1,  phi2 = phi1/h + 1,  phi3 = phi2/h - 1/2,
               x_{i+1} = (t_{i+1}/t_i) x_i - (phi1 M_i - phi2 D1 + phi3 D2)
Order at step s = i+1 (lower order final): s if s < order, else min(order, N - s).
AFS: M_0 = x_0 - t_0 d_0. A step that ends at sigma = 0 is taken at order 1 (x_{i+1} = M_i): the higher-order
terms are undefined there (the lineage's grids end at sigma_min and never reach this case).

Every update is linear in x_i and the buffered M's, so `coefficients` evaluates the equations above on
coefficient vectors (M_i, M_{i-1}, M_{i-2} as unit vectors), once per grid for a grid of floats (cached), and the
sampling loop spends one fused linear combination per step on the tensors. On a grid of tensors (a per-sample grid's
(B,) columns) the same equations give (B,) coefficients, differentiable in the grid.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .base import Solver, afs_pair, combine, is_zero, log, reached
from .errors import InputError
from .thresholding import dynamic_threshold


class DPMSolverPP(Solver):
    name = "dpm_solver_pp"
    min_points = 2
    exponential_integrator = True     # its flow-time form is this form (solvers/flow.py)

    def __init__(self, order: int = 3, dynamic_thresholding: bool = False, threshold_ratio: float = 0.995,
                 threshold_max: float = 1.0):
        if order not in (1, 2, 3):
            raise InputError(f"dpm_solver_pp order must be 1, 2 or 3 (1 = DPM-Solver++(1S), 2M, 3M), got {order!r}")
        self.order = order
        self.dynamic_thresholding = bool(dynamic_thresholding)
        self.threshold_ratio = threshold_ratio
        self.threshold_max = threshold_max

    def options(self) -> dict:
        return {"order": self.order, "dynamic_thresholding": self.dynamic_thresholding}

    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return num_points - 1 - int(afs)

    def _data(self, m):
        if self.dynamic_thresholding:
            return dynamic_threshold(m, self.threshold_ratio, self.threshold_max)
        return m

    def step_order(self, i: int, n: int) -> int:
        s = i + 1
        return s if s < self.order else min(self.order, n - s)

    def _sample(self, den, x, t, afs):
        ms = []                                                  # data predictions, newest first
        # the coefficients are cached per grid of floats; a grid of tensors (per-sample columns) gets them as tensors
        tensor_grid = any(isinstance(v, torch.Tensor) for v in t)
        coeffs, key = (coefficients, t) if tensor_grid else (step_coefficients, tuple(t))
        for i in range(len(t) - 1):
            if afs and i == 0:
                m = combine((1 - t[0] * afs_pair(x, t[0])[0], x))   # M_0 = x_0 - t_0 d_0
            else:
                m = den(x, t[i])
            reached(den, i, t[i], x)
            ms = [self._data(m)] + ms[:2]
            order = 1 if is_zero(t[i + 1]) else self.step_order(i, len(t))
            ratio, b = coeffs(key, i, order)
            x = combine((ratio, x), *zip(b, ms))                 # x_{i+1} = ratio x_i + sum_k b_k M_{i-k}
        return x


@functools.lru_cache(maxsize=4096)
def step_coefficients(t: tuple, i: int, order: int) -> tuple[float, tuple]:
    """(ratio, b) with x_{i+1} = ratio x_i + sum_k b_k M_{i-k}: the module docstring's update at this order, as
    Python floats, cached per grid."""
    ratio, b = coefficients(t, i, order)
    return ratio, tuple(float(v) for v in b)


def coefficients(t, i: int, order: int) -> tuple:
    """`step_coefficients` for grid values that are floats, or tensors of one shape S (then the ratio and each
    b_k have shape S)."""
    if isinstance(t[i], torch.Tensor):                           # unit vectors (3, 1, ..) broadcast against S
        M0, M1, M2 = torch.eye(3, dtype=torch.float64, device=t[i].device).reshape(3, 3, *[1] * t[i].dim())
        lam = [-log(v) for v in t]                               # log 0 = -inf: lambda = inf at sigma = 0
    else:
        M0, M1, M2 = np.eye(3)                                   # M_i, M_{i-1}, M_{i-2}
        lam = [-math.log(v) if v > 0 else math.inf for v in t]
    ratio = t[i + 1] / t[i]                                      # = e^{-h}
    phi1 = ratio - 1                                             # e^{-h} - 1
    if order == 1:
        b = -phi1 * M0
    elif order == 2:
        h, h_prev = lam[i + 1] - lam[i], lam[i] - lam[i - 1]
        r0 = h_prev / h
        b = -phi1 * (M0 + (M0 - M1) / (2 * r0))
    else:
        h = lam[i + 1] - lam[i]
        r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
        d1_0, d1_1 = (M0 - M1) / r0, (M1 - M2) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi2 = phi1 / h + 1
        phi3 = phi2 / h - 0.5
        b = -(phi1 * M0 - phi2 * d1 + phi3 * d2)
    return ratio, tuple(b[:order])
