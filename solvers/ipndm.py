"""iPNDM: Adams-Bashforth with the uniform-step coefficients applied on any grid (the lineage's form).

The order at step i is min(max_order, i + 1) (max_order 4):
    p=1  h d_i
    p=2  h (3 d_i - d_{i-1}) / 2
    p=3  h (23 d_i - 16 d_{i-1} + 5 d_{i-2}) / 12
    p=4  h (55 d_i - 59 d_{i-1} + 37 d_{i-2} - 9 d_{i-3}) / 24
With AFS the analytic d_0 enters the buffer like any other derivative.
"""
from __future__ import annotations

from .base import Solver, afs_pair, combine, derivative, reached
from .errors import InputError

# Adams-Bashforth rows, oldest derivative first, newest last.
AB_COEFFS = {
    1: (1.0,),
    2: (-1 / 2, 3 / 2),
    3: (5 / 12, -16 / 12, 23 / 12),
    4: (-9 / 24, 37 / 24, -59 / 24, 55 / 24),
}


class IPNDM(Solver):
    name = "ipndm"
    min_points = 2

    def __init__(self, max_order: int = 4):
        if max_order not in (1, 2, 3, 4):
            raise InputError(f"ipndm max_order must be 1, 2, 3 or 4, got {max_order!r}")
        self.max_order = max_order

    def options(self) -> dict:
        return {"max_order": self.max_order}

    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return num_points - 1 - int(afs)

    def coefficients(self, t: list[float], i: int, order: int) -> tuple:
        """Weights of the last `order` derivatives (oldest first) at step i."""
        return AB_COEFFS[order]

    def _sample(self, den, x, t, afs):
        buffer = []                                          # past derivatives d_j = a_j g_j, oldest first
        for i in range(len(t) - 1):
            if afs and i == 0:
                d = afs_pair(x, t[0])
            else:
                d = derivative(den, x, t[i])
            reached(den, i, t[i], x)
            buffer = (buffer + [d])[-self.max_order:]
            order = min(self.max_order, i + 1)
            h = t[i + 1] - t[i]
            coeffs = self.coefficients(t, i, order)
            x = combine((1, x), *((h * c * a, g) for c, (a, g) in zip(coeffs, buffer[-order:])))  # x + h sum c_j d_j
        return x
