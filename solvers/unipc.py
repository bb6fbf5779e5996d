"""UniPC (UniP predictor + UniC corrector), data prediction, in lambda = -log t; B(h) = expm1(-h) (bh2) or -h (bh1).

One call at t_0 (AFS: M_0 = x_0 (1 - t_0 / sqrt(1 + t_0^2))); the history holds data predictions M.
Step i from t_i to t_{i+1}, h = log t_i - log t_{i+1} > 0, hh = -h:
  order, corrector: while i + 1 < order_max: order i + 1, corrector on; then order min(order_max, N - 1 - i) and
                    the corrector is on while i < N - 2 (the last step is order 1, no corrector).
  r_k = (log t_i - log t_{i-k}) / h,  D1_k = (M_{i-k} - M_i) / r_k  (k = 1..order-1),  r_order = 1
  phi = expm1(hh)/hh - 1, fac = 1;  for k = 1..order: R_k = r^(k-1), b_k = phi fac / B, fac *= k+1,
                                                      phi = phi/hh - 1/fac
  x_lin = (t_{i+1}/t_i) x_i - expm1(-h) M_i
  predictor: x~ = x_lin - B sum_k rho_p_k D1_k   (rho_p = 0.5 at order 2; R[:-1,:-1] rho_p = b[:-1] at order 3)
  corrector: M_t = D(x~, t_{i+1}); rho_c = 0.5 (order 1) or R rho_c = b;
             x_{i+1} = x_lin - B (sum_k rho_c_k D1_k + rho_c_last (M_t - M_i));  M_t is reused as M_{i+1}.
A step that ends at sigma = 0 is taken at order 1 without corrector (x_{i+1} = M_i): r_k is 0 there.

Predictor and corrector are linear in x_i, the buffered M's and M_t, so `step_coefficients` evaluates the equations
above on coefficient vectors (x_i, M_i, M_{i-1}, M_{i-2}, M_t as unit vectors), once per grid, and the sampling loop
spends one fused linear combination on the tensors for each.
"""
from __future__ import annotations

import functools

import torch

from .base import Solver, afs_pair, combine, is_zero, reached
from .errors import InputError
from .thresholding import dynamic_threshold


class UniPC(Solver):
    name = "unipc"
    min_points = 2
    exponential_integrator = True     # its flow-time form is this form (solvers/flow.py)

    def __init__(self, order: int = 3, variant: str = "bh2", dynamic_thresholding: bool = False,
                 threshold_ratio: float = 0.995, threshold_max: float = 1.0):
        if order not in (1, 2, 3):
            raise InputError(f"unipc order must be 1, 2 or 3, got {order!r}")
        if variant not in ("bh1", "bh2"):
            raise InputError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
        self.order = order
        self.variant = variant
        self.dynamic_thresholding = bool(dynamic_thresholding)
        self.threshold_ratio = threshold_ratio
        self.threshold_max = threshold_max

    def options(self) -> dict:
        return {"order": self.order, "variant": self.variant, "dynamic_thresholding": self.dynamic_thresholding}

    def schedule(self, n: int, ends_at_zero: bool = False) -> list[tuple[int, bool]]:
        """(order, corrector on) for each of the N-1 steps."""
        plan = []
        for i in range(n - 1):
            if ends_at_zero and i == n - 2:
                plan.append((1, False))
            elif i + 1 < self.order:
                plan.append((i + 1, True))
            else:
                plan.append((min(self.order, n - 1 - i), i < n - 2))
        return plan

    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return 1 - int(afs) + sum(c for _, c in self.schedule(num_points, ends_at_zero))

    def _data(self, m):
        if self.dynamic_thresholding:
            return dynamic_threshold(m, self.threshold_ratio, self.threshold_max)
        return m

    def _sample(self, den, x, t, afs):
        if afs:
            m = combine((1 - t[0] * afs_pair(x, t[0])[0], x))    # analytical first step: M_0 = x_0 - t_0 d_0
        else:
            m = den(x, t[0])
        ms = [self._data(m)]                                     # data predictions, newest first
        # the coefficients are cached per grid; a grid of tensors (LD3's learned steps, a per-sample grid's (B,)
        # columns) gets differentiable ones
        learned_grid = any(isinstance(v, torch.Tensor) for v in t)
        coeffs, key = (coefficients, t) if learned_grid else (step_coefficients, tuple(t))
        for i, (order, correct) in enumerate(self.schedule(len(t), ends_at_zero=is_zero(t[-1]))):
            # the data prediction at t_i (step i > 0: D at the predictor's state, the M the solver uses there)
            reached(den, i, t[i], x, None if afs and i == 0 else ms[0])
            pred, corr = coeffs(key, i, order, correct, self.variant)
            x_pred = combine(*zip(pred, [x] + ms))               # predictor (UniP)
            if corr is None:
                x = x_pred
                continue
            m_t = self._data(den(x_pred, t[i + 1]))              # corrector (UniC): one evaluation at t_{i+1},
            x = combine(*zip(corr, [x] + ms[:order] + [m_t]))    # reused as the next step's M
            ms = [m_t] + ms[:self.order - 1]
        return x


@functools.lru_cache(maxsize=4096)
def step_coefficients(t: tuple, i: int, order: int, correct: bool, variant: str):
    """Coefficients of the predictor over (x_i, M_i, .., M_{i-order+1}) and of the corrector over the same plus
    M_t (None without corrector): the module docstring's equations on unit vectors, as Python floats, cached per
    grid."""
    pred, corr = coefficients(t, i, order, correct, variant)
    return tuple(pred.tolist()), None if corr is None else tuple(corr.tolist())


def coefficients(t, i: int, order: int, correct: bool, variant: str):
    """`step_coefficients` as float64 tensors, for grid values that are floats, 0-d tensors or tensors of one
    shape S (a per-sample grid's (B,) columns; then every coefficient has shape S); with tensors the coefficients
    are differentiable in the grid (LD3 learns its time steps through them)."""
    tt = {k: torch.as_tensor(t[k], dtype=torch.float64) for k in range(i - order + 1, i + 2)}
    batch = tt[i].dim()                                          # unit vectors (5, 1, ..) broadcast against S
    X, M0, M1, M2, MT = torch.eye(5, dtype=torch.float64, device=tt[i].device).reshape(5, 5, *[1] * batch)
    ms = [M0, M1, M2]
    ratio = tt[i + 1] / tt[i]
    x_lin = ratio * X - (ratio - 1) * M0                         # expm1(-h) = t_{i+1}/t_i - 1
    if order == 1 and not correct:
        return x_lin[:2], None
    lt = {k: torch.log(v) for k, v in tt.items()}
    h = lt[i] - lt[i + 1]
    hh = -h
    one = torch.ones_like(h)
    rks = [(lt[i] - lt[i - k]) / h for k in range(1, order)] + [one]
    d1s = [(ms[k] - M0) / rks[k - 1] for k in range(1, order)]
    B = torch.expm1(hh) if variant == "bh2" else hh
    phi, fac = torch.expm1(hh) / hh - 1, 1.0
    R, b = [], []
    for k in range(1, order + 1):
        R.append(torch.stack([r ** (k - 1) for r in rks]))
        b.append(phi * fac / B)
        fac *= k + 1
        phi = phi / hh - 1 / fac
    R, b = torch.stack(R), torch.stack(b)
    if order == 1:
        x_pred = x_lin
    elif order == 2:
        x_pred = x_lin - B * 0.5 * d1s[0]
    else:
        rho_p = _solve(R[:-1, :-1], b[:-1])
        x_pred = x_lin - B * sum(r * d for r, d in zip(rho_p, d1s))
    pred = x_pred[:1 + order]
    if not correct:
        return pred, None
    rho_c = 0.5 * one[None] if order == 1 else _solve(R, b)
    x_corr = x_lin - B * (sum(r * d for r, d in zip(rho_c[:-1], d1s)) + rho_c[-1] * (MT - M0))
    return pred, torch.cat([x_corr[:1 + order], x_corr[4:]])


def _solve(R: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """rho with R rho = b, for R (k, k, *S) and b (k, *S): one k x k system per entry of S."""
    if R.dim() == 2:
        return torch.linalg.solve(R, b)
    return torch.linalg.solve(R.movedim((0, 1), (-2, -1)), b.movedim(0, -1)).movedim(-1, 0)
