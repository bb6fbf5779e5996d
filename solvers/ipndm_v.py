"""iPNDM-v: variable-step Adams-Bashforth (paper Appendix A).

At step i the derivative is extrapolated by the Lagrange polynomial through the last p = min(max_order, i+1)
points (t_i, d_i), (t_{i-1}, d_{i-1}), ... and integrated exactly over [t_i, t_{i+1}]:

    x_{i+1} = x_i + h_i sum_j beta_j d_{i-j},   beta_j = (1/h_i) int_0^{h_i} L_j(u) du,   u = t - t_i.

On a uniform grid beta reduces to the classical Adams-Bashforth rows (Eqs. A.10, A.14).
On a per-sample grid the weights are computed row by row (the same polynomials) and stacked into (B,) vectors;
they are not differentiable in the grid, so a per-sample grid that carries a gradient is refused.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from .base import Columns
from .errors import InputError
from .ipndm import IPNDM


def lagrange_ab_weights(times: list[float], t_next: float) -> list[float]:
    """(1/h) int_{t_cur}^{t_next} L_j(t) dt for the Lagrange basis through `times` (oldest first, current last)."""
    nodes = np.asarray(times, dtype=np.float64) - times[-1]          # u-coordinates, current node at 0
    h = t_next - times[-1]
    weights = []
    for j in range(len(nodes)):
        others = np.delete(nodes, j)
        basis = np.poly1d(np.poly(others)) / np.prod(nodes[j] - others) if len(others) else np.poly1d([1.0])
        integral = np.polyint(basis)
        weights.append(float((integral(h) - integral(0.0)) / h))
    return weights


class IPNDMV(IPNDM):
    name = "ipndm_v"

    def coefficients(self, t, i: int, order: int) -> tuple:
        if not isinstance(t, Columns):
            return _cached_weights(tuple(t[i - order + 1:i + 1]), t[i + 1])
        if any(v.requires_grad for v in t):
            raise InputError("ipndm_v's weights are not differentiable in a per-sample grid; train a grid "
                             "predictor on ipndm, euler, heun, dpm_solver_pp, unipc or dyweight")
        rows = [_cached_weights(r[i - order + 1:i + 1], r[i + 1]) for r in t.rows()]
        return tuple(torch.tensor(w, dtype=torch.float64, device=t[i].device) for w in zip(*rows))


@functools.lru_cache(maxsize=4096)
def _cached_weights(times: tuple, t_next: float) -> tuple:
    """The weights depend on the grid only: computed once per grid (numpy polynomials cost ~0.3 ms per step)."""
    return tuple(lagrange_ab_weights(list(times), t_next))
