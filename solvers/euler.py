"""Euler: x_{i+1} = x_i + h_i d_i, with d_i = (x_i - D(x_i, t_i)) / t_i and h_i = t_{i+1} - t_i."""
from __future__ import annotations

from .base import Solver, afs_pair, combine, derivative, reached


class Euler(Solver):
    name = "euler"
    min_points = 2

    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return num_points - 1 - int(afs)  # one call per step; AFS replaces step 0's

    def _sample(self, den, x, t, afs):
        for i in range(len(t) - 1):
            if afs and i == 0:
                a, g = afs_pair(x, t[0])                     # analytical first step
            else:
                a, g = derivative(den, x, t[i])              # d_i = (x_i - D(x_i, t_i)) / t_i = a g
            reached(den, i, t[i], x)                         # the callback sees x_i (and D there)
            x = combine((1, x), ((t[i + 1] - t[i]) * a, g))  # x_{i+1} = x_i + h_i d_i
        return x
