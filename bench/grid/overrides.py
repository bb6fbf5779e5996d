"""Command-line changes to a grid before it is validated: `--num-samples`, `--nfe`, `--seeds A-B`,
`--set KEY=VALUE` (a dotted path; `models[NAME]` / `solvers[LABEL]` pick tables, `solvers[*]` every one) and
`--solver FILE.py:Class` (a user's solver as one more row)."""
from __future__ import annotations

import re
from typing import Any

from solvers.errors import InputError

from .files import tomllib

PER_TABLE = ("num_samples", "batch_size", "nfe", "seed_start")     # a top-level override beats per-table values


def apply(raw: dict, overrides: dict) -> None:
    """Apply {"num_samples": 200, "solvers[DyWeight].distill.steps": 50, ...} to a raw grid, in place."""
    for k, v in overrides.items():
        if "." in k or "[" in k:
            set_path(raw, k, v)
            continue
        raw[k] = v
        if k in PER_TABLE:
            for key in ("models", "solvers") if k == "nfe" else ("models",):
                for t in raw.get(key) if isinstance(raw.get(key), list) else []:
                    if isinstance(t, dict):
                        t.pop(k, None)


def parse_seeds(text: str) -> tuple[int, int]:
    """EDM's seed syntax "A-B" (or one seed "A") -> (seed_start, num_samples)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", str(text))
    if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
        raise InputError(f"--seeds must be A-B with 0 <= A <= B (EDM's syntax, e.g. 0-49999) or one seed, "
                         f"got {text!r}")
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) is not None else a
    return a, b - a + 1


def parse_assignment(text: str) -> tuple[str, Any]:
    """'solvers[DyWeight].distill.steps=20' -> (path, 20); the value is read as TOML (a bare word as a string)."""
    if "=" not in text:
        raise InputError(f"--set needs KEY=VALUE (e.g. num_samples=200 or solvers[DyWeight].distill.steps=20), "
                         f"got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def set_path(raw: dict, path: str, value: Any) -> None:
    """Set a dotted path in a grid; `models[NAME]` / `solvers[LABEL]` pick a table (`solvers[*]`: every one)."""
    parts = path.split(".")
    targets = [raw]
    for depth, part in enumerate(parts):
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(.+)\])?", part)
        if not m:
            raise InputError(f"cannot read override path {path!r} at {part!r}")
        name, sel = m.groups()
        last = depth == len(parts) - 1
        nxt = []
        for t in targets:
            if sel is None:
                if last:
                    t[name] = value
                    continue
                child = t.setdefault(name, {})
                if not isinstance(child, dict):
                    raise InputError(f"override {path!r}: {name!r} is {child!r}, not a table, so it has no key "
                                     f"{parts[depth + 1]!r}")
                nxt.append(child)
                continue
            tables = t.get(name)
            if not isinstance(tables, list):
                raise InputError(f"override {path!r}: {name!r} is not a list of tables")
            found = [x for x in tables
                     if isinstance(x, dict) and (sel == "*" or sel in (x.get("label"), x.get("name")))]
            if not found:
                have = [x.get("label", x.get("name")) for x in tables if isinstance(x, dict)]
                raise InputError(f"override {path!r}: no {name} entry {sel!r}; accepted: {', '.join(map(str, have))}")
            if last:
                raise InputError(f"override {path!r} must name a key inside {name}[{sel}]")
            nxt += found
        targets = nxt


def user_solver_table(raw: dict, spec: str, distill: bool = False) -> dict:
    """A [[solvers]] table for a user's solver named by its spec (`bench run --solver file.py:Class`): labelled by
    the class's `label` or name, with AFS where every entry of the grid uses it, distilled with the defaults when
    asked."""
    import solvers
    if not solvers.is_spec(spec) and spec not in solvers.names():
        raise InputError(f"--solver {spec!r}: expected path/to/file.py:Class, package.module:Class or a registered "
                         f"name ({', '.join(solvers.names())})")
    try:
        cls = solvers.solver_class(spec)
    except (ValueError, FileNotFoundError) as err:
        raise InputError(f"--solver {spec!r}: {err}") from None
    if distill and not cls.learned:
        raise InputError(f"--distill needs a learned solver (a solvers.learned.LearnedSolver); {spec!r} is not one")
    tables = [t for t in raw.get("solvers", []) if isinstance(t, dict)]
    out = {"name": spec, "label": str(getattr(cls, "label", "") or cls.__name__),
           "afs": bool(tables) and all(t.get("afs", False) for t in tables)}
    if distill:
        out["distill"] = {}
    return out
