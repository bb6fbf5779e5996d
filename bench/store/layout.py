"""The layout of a results directory, named once:

    results.sqlite                                  the store (bench.store: results, runs, scores, artefacts)
    solvers/<grid>/<model>/<label>-nfe<N>.json      distilled solvers, reused by later runs with the same settings
    cache/distill/                                  teacher trajectories (bench.distill)
    cache/reference/                                reference ODE solutions and other per-model tensors
    studies/<grid>.csv                              tables written by non-sampling grid kinds
    reports/                                        `bench report`'s default output
    samples/<grid>/<model>/<label>-nfe<N>.npz       `bench run --save-samples` (also a .png sheet for images)

Every name that comes from a grid (model keys, labels) goes through `safe_filename`, and the grid name is checked
when the grid is read (bench.grid.files.check_name), so no path leaves the directory.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from solvers.errors import InputError

DB_NAME = "results.sqlite"


def safe_filename(label: str) -> str:
    """A label as one path component: runs of other characters become "_"; never "", "." or ".."."""
    out = re.sub(r"[^A-Za-z0-9._()+=-]+", "_", str(label)).strip("_")
    return out if out and set(out) != {"."} else "item"


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def of(cls, results_dir) -> "Layout":
        root = Path(results_dir)
        if root.exists() and not root.is_dir():
            raise InputError(f"results directory {root} is a file; name a directory (it holds {DB_NAME})")
        return cls(root)

    @property
    def db(self) -> Path:
        return self.root / DB_NAME

    def solver(self, grid: str, model: str, label: str, nfe: int) -> Path:
        name = f"{safe_filename(label)}-nfe{nfe}.json"
        return self.root / "solvers" / safe_filename(grid) / safe_filename(model) / name

    @property
    def distill_cache(self) -> Path:
        return self.root / "cache" / "distill"

    @property
    def cache(self) -> Path:
        """The cache root models and metrics read (`<cache>/reference/...`)."""
        return self.root / "cache"

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    def study(self, grid: str) -> Path:
        return self.studies / f"{safe_filename(grid)}.csv"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def samples(self, base: Path, grid: str, model: str, label: str, nfe: int) -> Path:
        """Where `--save-samples DIR` writes a cell's samples (DIR/<grid>/<model>/<label>-nfe<N>.npz)."""
        return Path(base) / safe_filename(grid) / safe_filename(model) / f"{safe_filename(label)}-nfe{nfe}.npz"
