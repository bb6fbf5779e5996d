"""What a learned solver declares for the report, as typed records (`LearnedSolver.artefacts()`).

The harness stores them beside the cells of the solver (bench.store, table `artefacts`, as JSON) and the report
reads them back by kind, so no code outside a solver's own module reads its state's keys or names it.

    CoefficientTable   per step, the weights of the past derivatives (oldest first) and the time scale of the step's
                       network call (DyWeight's W and s; paper Fig. A.1)
    TimeGrid           a learned grid and, where the network sees other times, those (GITS, LD3, the global part of
                       the instance-aware solver)
    SampleGrids        per-sample grids predicted for the first seeds of a cell, with the instance class each
                       sample ends in where the model names one (the instance-aware solver)
    TrainingRecord     what the distillation cost and how it went: parameters, steps, teacher and student denoiser
                       calls, the loss and held-out error curves, wall time (written by bench.distill)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import ClassVar


@dataclass
class Artefact:
    kind: ClassVar[str] = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class CoefficientTable(Artefact):
    kind: ClassVar[str] = "coefficients"
    weights: list                         # rows of past-derivative weights, oldest first (row i: min(i+1, K))
    time_scale: list                      # one per network call (none for the analytical first step)
    afs: bool


@dataclass
class TimeGrid(Artefact):
    kind: ClassVar[str] = "time_grid"
    timesteps: list                       # the solver's grid, descending
    model_times: list | None = None       # the times its network sees, where they differ


@dataclass
class SampleGrids(Artefact):
    kind: ClassVar[str] = "sample_grids"
    seeds: list
    grids: list                           # one descending grid per seed
    classes: list | None = None           # the instance class each sample ends in, where the model names one
    global_grid: list | None = None       # the grid the per-sample grids deviate from


@dataclass
class TrainingRecord(Artefact):
    kind: ClassVar[str] = "training"
    parameters: int = 0
    steps: int = 0
    teacher_calls: int = 0
    student_calls: int = 0
    wall_time: float = 0.0
    step: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    eval_step: list = field(default_factory=list)
    eval_error: list = field(default_factory=list)
    kept_step: int | None = None
    learns: dict = field(default_factory=dict)


KINDS = {cls.kind: cls for cls in (CoefficientTable, TimeGrid, SampleGrids, TrainingRecord)}


def from_json(kind: str, data: str) -> Artefact:
    """An artefact of `kind` from its JSON (unknown fields are ignored, so older stores stay readable)."""
    cls = KINDS[kind]
    values = json.loads(data)
    names = set(cls.__dataclass_fields__)
    return cls(**{k: v for k, v in values.items() if k in names})
