"""One interface for every diffusion ODE sampler.

    import solvers
    solver = solvers.get("ipndm")                       # a name from solvers.names(); options as keywords
    x = solver.sample(denoiser, x_T, sigmas, afs=False)  # denoiser(x, sigma) -> D(x, sigma), sigma of shape (B,)

Each solver lives in its own module next to the equations it implements (docs/solver-conventions.md).
"""
from __future__ import annotations

from . import schedules
from .base import Denoiser, Solver
from .errors import InputError, NonFiniteError
from .nfe import CountingDenoiser
from .registry import (
                       REGISTRY,
                       code_hash,
                       from_state,
                       get,
                       is_spec,
                       learned_names,
                       load,
                       names,
                       register,
                       solver_class,
                       state_of,
)

__all__ = ["get", "code_hash", "names", "learned_names", "is_spec", "state_of", "load", "from_state", "register",
           "solver_class", "schedules", "Solver", "Denoiser", "NonFiniteError", "InputError", "CountingDenoiser",
           "REGISTRY"]
