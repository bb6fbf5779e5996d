"""The project's two error types, in one small module that every layer may import (solvers, bench, baselines).

InputError       bad input the user can fix: an unknown name, an invalid option, grid or file. Its message is one
                 line that says what was wrong and what is accepted; `python -m bench` prints it as that line
                 (exit 2), while any other exception, a bug, keeps its traceback.
NonFiniteError   a sampling run produced NaN or inf (the denoiser returned them, or the solver diverged).
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input the user can fix; the message is one line naming what was wrong and what is accepted."""


class NonFiniteError(FloatingPointError):
    """A sampling run produced NaN or inf (the denoiser returned them, or the solver diverged)."""
