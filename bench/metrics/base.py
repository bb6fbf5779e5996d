"""The metric interface."""
from __future__ import annotations

from bench.models.base import Cell, Model, Requirement


class Metric:
    name: str = ""
    label: str = ""                 # how reports name it, e.g. "FID-50k", "FD-digits (miniature analogue)"
    higher_is_better: bool = False

    def supports(self, model: Model) -> bool:
        """Whether this metric can score samples of `model` (e.g. exact-distribution metrics need an analytic model)."""
        return True

    def requirements(self, model: Model) -> list[Requirement]:
        """Local files needed (Inception weights, reference statistics), checked before any work starts."""
        return []

    def compute(self, cell: Cell) -> float:
        raise NotImplementedError
