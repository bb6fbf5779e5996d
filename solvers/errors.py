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


def one_line(error: BaseException, limit: int = 400) -> str:
    """An exception's message as one line: its first non-empty line (joined with the next when it ends in ':',
    as torch's load_state_dict and pickle errors do), cut at `limit` characters; the type's name when empty."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text if len(text) <= limit else text[:limit - 1] + "…"
