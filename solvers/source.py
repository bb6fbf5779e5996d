"""The content of a solver's code, for the keys of stored results: a researcher who edits a solver gets new cells.

`code_hash(cls)` is a SHA-256 (16 hex digits) over the source files that define the class:
  * a class of this package: every module of the package (solvers/*.py) as one hash, since a registered solver may
    run any other (LD3's and GITS's base solvers, the teachers of a distillation), so an edit anywhere in the
    package is a new version of each;
  * a user's class (its own file, or a module outside the package): its module's file and every module that file
    imports from the same folder, transitively (read from its import statements), plus the package's hash, since it
    builds on solvers.base.
A class whose source file cannot be found (built in a notebook cell, say) hashes its name and the package.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import inspect
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def package_hash() -> str:
    """The hash of every module of the solvers package."""
    return _digest(sorted(PACKAGE.glob("*.py")))


def local_imports(path: Path) -> list[Path]:
    """The files of `path`'s folder that it imports (`import x`, `from x import y`, `from .x import y`)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and node.module is None:
                names.update(a.name for a in node.names)
            elif node.module:
                names.add(node.module.split(".")[0])
    found = [path.parent / f"{n}.py" for n in sorted(names)]
    return [f for f in found if f.is_file() and f.resolve() != path.resolve()]


def file_closure(path: Path) -> list[Path]:
    """`path` and every file of its folder it imports, transitively."""
    seen, todo = [], [Path(path).resolve()]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.append(f)
        todo += [g.resolve() for g in local_imports(f)]
    return seen


def code_hash(cls: type) -> str:
    """The hash of the source that defines `cls` (module docstring)."""
    try:
        src = Path(inspect.getsourcefile(cls) or "").resolve()
    except TypeError:
        src = None
    if src is None or not src.is_file():
        return hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}:{package_hash()}".encode()).hexdigest()[:16]
    if src.parent == PACKAGE:
        return package_hash()
    return hashlib.sha256((_digest(file_closure(src)) + package_hash()).encode()).hexdigest()[:16]
