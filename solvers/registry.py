"""Registries: one small type for every name -> object table of the project (solvers here; models, metrics, loss
distances and weights files in bench), and the solver registry itself with what reads and writes learned solvers.

A `Registry` maps names to targets, each either "module:attribute" (imported on first use, so listing names costs
no import), a user's "path/to/file.py:Class" where the registry allows files, or the object itself. Unknown names
are one InputError naming what is accepted.
"""
from __future__ import annotations

import importlib
import inspect

from .base import Solver
from .errors import InputError
from .learned import read_state, state_of  # noqa: F401  (re-exported)


class Registry:
    """name -> target (module docstring); `targets` is the live table (tests patch it)."""

    def __init__(self, kind: str, targets: dict | None = None, loader=None):
        self.kind = kind
        self.targets: dict = dict(targets or {})
        self._loader = loader

    def names(self) -> list[str]:
        return list(self.targets)

    def __contains__(self, name) -> bool:
        return name in self.targets

    def register(self, name: str, target) -> None:
        self.targets[name] = target

    def unknown(self, name) -> InputError:
        return InputError(f"unknown {self.kind} {name!r}; accepted: {', '.join(self.targets) or '(none)'}")

    def load(self, name: str):
        """The object a name stands for (importing its module on first use)."""
        if name not in self.targets:
            raise self.unknown(name)
        target = self.targets[name]
        if not isinstance(target, str):
            return target
        return self._loader(target) if self._loader is not None else import_target(target)


def import_target(target: str):
    """The attribute of "package.module:attribute"."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


# name -> "module:Class"; adding a solver = adding a module and a line here (grids pick it up automatically)
_SOLVERS = {
    "euler": "solvers.euler:Euler",
    "heun": "solvers.heun:Heun",
    "ipndm": "solvers.ipndm:IPNDM",
    "ipndm_v": "solvers.ipndm_v:IPNDMV",
    "dpm_solver_pp": "solvers.dpm_solver_pp:DPMSolverPP",
    "unipc": "solvers.unipc:UniPC",
    "dyweight": "solvers.dyweight:DyWeight",
    "epd": "solvers.epd:EPD",
    "gits": "solvers.gits:GITS",
    "ld3": "solvers.ld3:LD3",
    "amed": "solvers.amed:AMED",
    "instance_aware": "solvers.instance_aware:InstanceAware",
}


def _solver_target(target: str) -> type:
    return _load_spec(target) if target.split(":")[0].endswith(".py") else import_target(target)


REGISTRY = Registry("solver", _SOLVERS, loader=_solver_target)


def names() -> list[str]:
    """Every registered solver name."""
    return REGISTRY.names()


def is_spec(name: str) -> bool:
    """Whether `name` names a user's solver class: "path/to/file.py:Class" or "package.module:Class"."""
    return isinstance(name, str) and ":" in name


def solver_class(name: str) -> type:
    """The class of a registered name, or of a user's solver named by its spec (see `is_spec`; the class records
    it as `spec`, so a saved learned solver of that class can be loaded again)."""
    if name not in REGISTRY.targets and is_spec(name):
        return _load_spec(name)
    if name not in REGISTRY.targets:
        raise InputError(f"unknown solver {name!r}; accepted: {', '.join(REGISTRY.targets)}, or a user's solver as "
                         "path/to/file.py:Class or package.module:Class")
    return REGISTRY.load(name)


def _load_spec(spec: str) -> type:
    """Import the class of "file.py:Class" (relative to the working directory) or "package.module:Class"."""
    import hashlib
    import importlib.util
    import sys
    from pathlib import Path
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"solver file {where} does not exist (solver {spec!r})")
        modname = f"_user_solver_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if modname not in sys.modules:
            loader = importlib.util.spec_from_file_location(modname, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[modname] = module
            sys.path.insert(0, str(path.parent))          # its own folder's modules import, as for a script
            try:
                loader.loader.exec_module(module)
            except BaseException:
                del sys.modules[modname]
                raise
            finally:
                sys.path.remove(str(path.parent))
        module = sys.modules[modname]
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise InputError(f"solver {spec!r}: cannot import module {where!r} ({e})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise InputError(f"solver {spec!r}: {attr!r} is not a solvers.Solver subclass in {where}")
    cls.spec = spec
    return cls


def code_hash(name: str) -> str:
    """The hash of the code of a registered solver or a user's spec (solvers/source.py): stored results are keyed by
    it, so editing a solver makes its cells new."""
    from .source import code_hash as hash_of
    return hash_of(solver_class(name))


def get(name: str, **options) -> Solver:
    """Build a solver by name; unknown names and options raise ValueError listing what is accepted."""
    cls = solver_class(name)
    factory = getattr(cls, "from_options", cls)
    params = inspect.signature(factory).parameters
    accepted = [p for p in params if p not in ("self", "cls")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise InputError(f"solver {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"accepted: {', '.join(accepted) or '(none)'}")
    return factory(**options)


def register(name: str, target: str) -> None:
    """Register a user's solver: target is "module:Class" or "path/to/file.py:Class" (a Solver subclass)."""
    REGISTRY.register(name, target)


def learned_names() -> list[str]:
    """The registered learned solvers (solvers.learned.LearnedSolver)."""
    return [n for n in REGISTRY.targets if solver_class(n).learned]


def load(path, spec: str | None = None) -> Solver:
    """Load a saved learned solver of any registered kind (the file records its kind and grid). A file of a user's
    solver names that solver's code ("file.py:Class"): it is data, so that code is imported only when the caller
    names the same spec here (`solvers.load(path, spec="my.py:Mine")`)."""
    return from_state(read_state(path), spec)


def from_state(state: dict, spec: str | None = None) -> Solver:
    """Rebuild a learned solver from its `state()` (what `save` writes), whatever its registered kind; a state that
    names a user's solver (`spec`) is rebuilt only when the caller passes the same `spec` (see `load`)."""
    kind = state.get("solver") if isinstance(state, dict) else None
    named = state.get("spec") if isinstance(state, dict) else None
    if is_spec(named):
        if spec != named:
            raise InputError(f"this saved solver names code to import ({named!r}); load it with spec={named!r} if you "
                             "trust that file")
        kind = named
    if not (kind in REGISTRY.targets or is_spec(kind)) or not solver_class(kind).learned:
        raise InputError(f"not a saved learned solver (solver={kind!r}); learned solvers: "
                         f"{', '.join(learned_names())}")
    return solver_class(kind).from_state(state)
