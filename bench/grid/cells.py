"""A grid's cells: one model × row × NFE each, carrying everything needed to sample it and to key its results.

A cell's key is a hash of everything that determines its samples: the grid's name, the model and its options, the
row's identity (kind, solver, the hash of the solver's code, AFS, schedule, options, distillation table and its
resolved settings), the NFE and the seeds (start, count, replicas). Each metric's row is keyed beside it by the
metric's identity (`metric_keys`: its name and the options that change its value, bench.metrics.identity). Batch
size, world size and label do not enter either key. Nothing stored under one key is ever shown as another.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..plan import Plan
from .files import canonical_hash
from .rows import Row

KEY_FORMAT = 2          # bump when the meaning of a cell key changes (2: code hash, resolved distillation settings)


@dataclass
class GridCell:
    grid: str
    model: str
    model_options: dict
    row: Row
    plan: Plan                              # the grid it samples on, its budget and AFS (bench.plan)
    metrics: list
    seed_start: int
    num_samples: int
    batch_size: int
    metric_options: dict = field(default_factory=dict)     # metric name -> options it is built with
    replicas: int = 1                       # disjoint seed sets of num_samples each (bench.stats)
    instance_of: str = ""                   # the registered model this cell's model is an instance of, or ""
    distill_settings: dict | None = None    # a distilled row: its resolved bench.distill settings
    distill_source: str | None = None       # a distilled row: the model it is distilled on

    @property
    def nfe(self) -> int:
        return self.plan.nfe

    @property
    def num_points(self) -> int:
        return self.plan.num_points

    @property
    def schedule(self) -> str:
        """The schedule actually used (released: the checkpoint's)."""
        return self.plan.schedule

    @property
    def seeds(self) -> range:
        """Every seed the cell samples: `replicas` consecutive sets of `num_samples`."""
        return range(self.seed_start, self.seed_start + self.num_samples * self.replicas)

    @property
    def seeds_text(self) -> str:
        text = f"{self.seed_start}-{self.seed_start + self.num_samples * self.replicas - 1}"
        return text + (f" ({self.replicas} sets of {self.num_samples})" if self.replicas > 1 else "")

    @property
    def key(self) -> str:
        """Hash of everything that determines the cell's samples (module docstring)."""
        ident = {"format": KEY_FORMAT, "grid": self.grid, "model": self.model, "model_options": self.model_options,
                 "solver": self.row.identity(), "nfe": self.nfe, "seed_start": self.seed_start,
                 "num_samples": self.num_samples, "replicas": self.replicas}
        if self.distill_settings is not None:
            ident["distill_settings"] = self.distill_settings
        return canonical_hash(ident)

    @property
    def metric_keys(self) -> dict[str, str]:
        """metric name -> the key of its identity (name and value-changing options)."""
        from bench.metrics import identity
        return {m: canonical_hash(identity(m, self.metric_options.get(m, {}))) for m in self.metrics}

    @property
    def evaluations(self) -> int:
        """Network evaluations spent on sampling (not counting distillation or reference solutions)."""
        return self.nfe * self.num_samples * self.replicas

    def describe(self) -> str:
        return f"{self.model} / {self.row.describe()} / NFE {self.nfe}"


@dataclass
class Grid:
    name: str
    description: str
    kind: str
    raw: dict
    path: Path | None
    cells: list = field(default_factory=list)
    skipped: list = field(default_factory=list)       # (model, label, nfe, reason) dropped by skip_unreachable
    rows: list = field(default_factory=list)
    models: dict = field(default_factory=dict)        # name -> Model instance

    @property
    def config_hash(self) -> str:
        return canonical_hash(self.raw)
