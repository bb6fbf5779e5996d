"""One interface for every diffusion ODE sampler.

    import solvers
    solver = solvers.get("ipndm")                       # a name from solvers.names(); options as keywords
    x = solver.sample(denoiser, x_T, sigmas, afs=False)  # denoiser(x, sigma) -> D(x, sigma), sigma of shape (B,)

Each solver lives in its own module next to the equations it implements (docs/solver-conventions.md).
"""
from __future__ import annotations

import importlib
import inspect

from . import schedules
from .base import Denoiser, NonFiniteError, Solver
from .nfe import CountingDenoiser
from .base import InputError

# name -> "module:Class"; adding a solver = adding a module and a line here (grids pick it up automatically)
_REGISTRY = {
    "euler": "solvers.euler:Euler",
    "heun": "solvers.heun:Heun",
    "ipndm": "solvers.ipndm:IPNDM",
    "ipndm_v": "solvers.ipndm_v:IPNDMV",
    "dpm_solver_pp": "solvers.dpm_solver_pp:DPMSolverPP",
    "unipc": "solvers.unipc:UniPC",
    "dyweight": "solvers.dyweight:DyWeight",
}


def names() -> list[str]:
    """Every registered solver name."""
    return list(_REGISTRY)


def solver_class(name: str) -> type:
    if name not in _REGISTRY:
        raise InputError(f"unknown solver {name!r}; accepted: {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


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
    """Register a user's solver: target is "module:Class" (a Solver subclass)."""
    _REGISTRY[name] = target


def learned_names() -> list[str]:
    """The registered learned solvers (solvers.learned.LearnedSolver)."""
    return [n for n in _REGISTRY if solver_class(n).learned]


def load(path) -> Solver:
    """Load a saved learned solver of any kind (the file records its kind and grid)."""
    from .learned import read_state
    return from_state(read_state(path))


def from_state(state: dict) -> Solver:
    """Rebuild a learned solver from its `state()` (what `save` writes), whatever its kind."""
    kind = state.get("solver") if isinstance(state, dict) else None
    if kind not in _REGISTRY or not solver_class(kind).learned:
        raise InputError(f"not a saved learned solver (solver={kind!r}); learned solvers: "
                         f"{', '.join(learned_names())}")
    return solver_class(kind).from_state(state)


__all__ = ["get", "names", "learned_names", "load", "from_state", "register", "solver_class", "schedules", "Solver", "Denoiser",
           "NonFiniteError", "CountingDenoiser"]
