"""Where and in which precision the real networks run (options of the EDM, latent and FLUX adapters).

Grid files pass options as TOML values, so a dtype may be given by name ("float16", "bfloat16", "float32").
Sampling state, grids and the EDM-form arithmetic stay float32/float64 whatever the network's precision.
"""
from __future__ import annotations

import torch

from solvers.errors import InputError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def device(name: str | None = None) -> str:
    """The given device, or CUDA (the current device, which the harness sets per rank) when there is one."""
    if name is None or name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


def dtype(value) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if value in DTYPES:
        return DTYPES[value]
    raise InputError(f"unknown torch_dtype {value!r}; accepted: {', '.join(DTYPES)}")


_FULL_PRECISION = [0]


class full_precision:
    """Within this context a model's network calls run in its full precision, without autocast (a distillation's
    student calls, as the reference trains its student in float32 while its teacher runs under autocast)."""

    def __enter__(self):
        _FULL_PRECISION[0] += 1
        return self

    def __exit__(self, *exc):
        _FULL_PRECISION[0] -= 1


def autocast_allowed() -> bool:
    """False inside `full_precision()`."""
    return _FULL_PRECISION[0] == 0
