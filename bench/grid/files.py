"""Where grids live, how a grid file is read, and the names a grid may take.

A grid name becomes a folder under the results directory and a report's file name, so it is restricted to
letters, digits, '_', '.' and '-' (starting with a letter or digit); a path separator or '..' is refused.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from solvers.errors import InputError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

GRIDS_DIR = Path(__file__).resolve().parent.parent / "grids"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def names() -> list[str]:
    """The grids shipped with the package."""
    return sorted(p.stem for p in GRIDS_DIR.glob("*.toml"))


def path_of(name_or_path: str | Path) -> Path:
    """A shipped grid's file, or the path of a user's .toml (or .json) file."""
    s = str(name_or_path)
    if s.endswith((".toml", ".json")) or "/" in s or "\\" in s:
        p = Path(s).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"no grid file {p}; shipped grids: {', '.join(names())}")
        return p
    p = GRIDS_DIR / f"{s}.toml"
    if not p.exists():
        raise InputError(f"unknown grid {s!r}; accepted: {', '.join(names())} (or the path of a .toml file)")
    return p


def read(name_or_path: str | Path) -> tuple[dict, Path]:
    """The raw table of a grid file as a dict (no validation), and its path: TOML, or JSON for a .json file (what
    a program writes, e.g. `bench gpu-check` for its torchrun pass)."""
    p = path_of(name_or_path)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"grid file {p} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise InputError(f"cannot read grid file {p}: {e.strerror}") from None
    if p.suffix == ".json":
        try:
            return json.loads(text), p
        except json.JSONDecodeError as e:
            raise InputError(f"grid file {p} is not valid JSON: {e}") from None
    try:
        return tomllib.loads(text), p
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"grid file {p} is not valid TOML: {e}") from None


def check_name(name: Any, where: str) -> str:
    """A grid name that is safe as a folder and file name (module docstring), else one InputError."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise InputError(f"{where}: grid name {name!r} must be 1-100 letters, digits, '_', '.' or '-', starting with "
                         "a letter or digit (it names folders and report files)")
    return name


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys), 16 hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
