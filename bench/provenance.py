"""Where a result came from: the project's code version (`git describe` of a checkout, else the package version)."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

VERSION = "0.1.0"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe --always --dirty --tags` of the source tree when it is a git checkout, else the version."""
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=root, capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return VERSION
