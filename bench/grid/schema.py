"""The keys a grid file may hold, and the small type checks every table's values go through (one-line errors that
name what is accepted)."""
from __future__ import annotations

from typing import Any

from solvers.errors import InputError

SAMPLING = "sampling"
TOP_KEYS = {"name", "description", "kind", "nfe", "num_samples", "seed_start", "batch_size", "schedule", "time",
            "metrics", "metric_options", "skip_unreachable", "models", "solvers", "replicas", "floors", "ratios",
            "threads"}
MODEL_KEYS = {"name", "metrics", "metric_options", "options", "instances", "nfe", "num_samples", "batch_size",
              "replicas", "floors"}
SOLVER_KEYS = {"name", "label", "afs", "schedule", "schedule_options", "time", "options", "distill", "distill_from",
               "released", "models", "nfe", "skip_unreachable", "paper_method"}
RATIO_KEYS = {"rows", "against", "metrics", "title"}


def unknown(table: dict, allowed: set, where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise InputError(f"{where}: unknown key {', '.join(map(repr, extra))}; accepted: {', '.join(sorted(allowed))}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def int_list(v: Any, where: str, what: str = "nfe") -> list[int]:
    """A positive integer or a non-empty list of them."""
    if is_int(v):
        v = [v]
    if not isinstance(v, list) or not v or not all(is_int(n) and n > 0 for n in v):
        raise InputError(f"{where}: '{what}' must be a positive integer or a non-empty list of them, got {v!r}")
    return v


def positive_int(v: Any, what: str) -> int:
    if not is_int(v) or v <= 0:
        raise InputError(f"{what} must be a positive integer, got {v!r}")
    return v


def non_negative_int(v: Any, what: str) -> int:
    if not is_int(v) or v < 0:
        raise InputError(f"{what} must be a non-negative integer, got {v!r}")
    return v


def table(v: Any, what: str) -> dict:
    if not isinstance(v, dict):
        raise InputError(f"{what} must be a table (e.g. {{ key = value }}), got {v!r}")
    return v


def boolean(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise InputError(f"{what} must be true or false, got {v!r}")
    return v


def strings(v: Any, what: str, accepted: str = "") -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise InputError(f"{what} must be a list of names" + (f"; accepted: {accepted}" if accepted else "")
                         + f", got {v!r}")
    return v
