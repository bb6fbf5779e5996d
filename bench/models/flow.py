"""A model seen in flow time (the change of variables of solvers/flow.py): `FlowView`, defined beside `Model` in
bench/models/base.py, re-exported here for the flow models that subclass it."""
from __future__ import annotations

from .base import FlowView

__all__ = ["FlowView"]
