"""Heun (EDM's 2nd-order sampler, deterministic):
    x' = x_i + h_i d_i;  x_{i+1} = x_i + h_i (d_i + d(x', t_{i+1})) / 2.
It corrects on every step, the last one too; a step that ends at sigma = 0 is left as Euler (d is undefined at 0).
"""
from __future__ import annotations

from .base import Solver, afs_pair, combine, derivative, is_zero, reached


class Heun(Solver):
    name = "heun"
    min_points = 2

    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return 2 * (num_points - 1) - int(afs) - int(ends_at_zero)

    def _sample(self, den, x, t, afs):
        for i in range(len(t) - 1):
            h = t[i + 1] - t[i]
            if afs and i == 0:
                a, g = afs_pair(x, t[0])                     # AFS skips only step 0's predictor call
            else:
                a, g = derivative(den, x, t[i])              # d_i = a g
            reached(den, i, t[i], x)
            x_pred = combine((1, x), (h * a, g))             # x' = x_i + h d_i
            if is_zero(t[i + 1]):
                x = x_pred
                continue
            a_pred, g_pred = derivative(den, x_pred, t[i + 1])
            x = combine((1, x), (h / 2 * a, g), (h / 2 * a_pred, g_pred))   # trapezoidal correction
        return x
