"""Grids: TOML files (or dicts) that name models × solvers × NFEs (× schedules) × metrics, and the cells they expand
to. The schema is documented in bench/grids/README.md.

    grid = bench.grid.load("quick", {"num_samples": 200})      # a shipped name or a .toml path, with overrides
    grid = bench.grid.from_dict({"name": "mine", "nfe": [3], ...})

Both validate the whole grid before any work starts: every bad name, option, unreachable budget or distillation
setting raises one InputError naming what is accepted. `grid.cells` is the list of `GridCell`s to evaluate, in a
fixed order. The package's rooms: files (where grids live, names), overrides (command-line changes), schema (keys
and value checks), rows (the row kinds), cells (GridCell, Grid, keys), expand (raw dict -> cells).
"""
from __future__ import annotations

import copy
from pathlib import Path

from solvers.errors import InputError

from . import overrides as _overrides
from .cells import KEY_FORMAT, Grid, GridCell
from .files import GRIDS_DIR, canonical_hash, check_name, names, path_of, read
from .overrides import parse_assignment, parse_seeds, set_path, user_solver_table
from .rows import Distilled, Floor, Handcrafted, Released, Row, Untrained
from .schema import SAMPLING


def load(name_or_path: str | Path, overrides: dict | None = None, extra_solvers: list | None = None) -> Grid:
    """Read a shipped grid (by name) or a .toml file, apply `overrides` and `extra_solvers` ((spec, distill)
    pairs: a user's solver as one more row), and validate it."""
    raw, path = read(name_or_path)
    return from_dict(raw, path, overrides, extra_solvers)


def from_dict(raw: dict, path: Path | None = None, overrides: dict | None = None,
              extra_solvers: list | None = None) -> Grid:
    """A grid from its raw dict (the parsed TOML), validated as `load` does; `raw` is not modified."""
    if not isinstance(raw, dict):
        raise InputError(f"a grid is a table of settings, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for spec, distill in extra_solvers or []:
        raw.setdefault("solvers", []).append(user_solver_table(raw, spec, distill))
    _overrides.apply(raw, overrides or {})
    where = f"grid {path}" if path is not None else "grid"
    name = check_name(raw.get("name", path.stem if path is not None else None), where)
    kind = raw.get("kind", SAMPLING)
    grid = Grid(name=name, description=str(raw.get("description", "")), kind=kind, raw=raw, path=path)
    if kind != SAMPLING:
        module = study_module(kind)                          # must exist; the study checks its own table now
        if hasattr(module, "validate"):
            module.validate(raw)
        return grid
    from .expand import expand
    expand(grid)
    return grid


def study_module(kind: str):
    """The module of a non-sampling grid kind (bench.studies.<kind>)."""
    import importlib
    import pkgutil

    import bench.studies as pkg
    kinds = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    if not isinstance(kind, str) or kind not in kinds:
        raise InputError(f"unknown grid kind {kind!r}; accepted: {', '.join([SAMPLING] + kinds)}")
    return importlib.import_module(f"bench.studies.{kind}")


__all__ = ["load", "from_dict", "names", "path_of", "read", "study_module", "parse_assignment", "parse_seeds",
           "set_path", "canonical_hash", "Grid", "GridCell", "KEY_FORMAT", "GRIDS_DIR", "SAMPLING", "Row",
           "Handcrafted", "Untrained", "Distilled", "Released", "Floor"]
