"""The store's row types, in one typed place: every table's columns and SQL types are read from these dataclasses.

    Result     one row per (cell, metric identity): the value with its 95 % interval and everything the report and
               `bench check` read without the model's code (direction, labels, family, paper key, provenance)
    Run        one row per `bench run` of a grid: when it started and ended, the command, the grid's settings
               (the report reads its `ratios` and row order there), how many cells it ran and how many failed
    RunCell    which (cell, metric identity) a run's grid expanded to, whether computed or resumed: the report's
               default table is exactly the latest run's cells
    Score      the per-sample scores of a cell's metric (a metric that is a mean of per-sample scores), for paired
               comparisons and exports
    Artefact   what a distilled solver declares for the report (solvers.artefacts), keyed by the solver's settings
"""
from __future__ import annotations

from dataclasses import dataclass, fields

SCHEMA_VERSION = 2
_SQL = {str: "TEXT", int: "INTEGER", float: "REAL", bool: "INTEGER", bytes: "BLOB"}
_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "bytes": bytes}


@dataclass
class Result:
    cell_key: str                 # bench.grid.cells: everything that determines the cell's samples
    metric_key: str               # the metric's name and value-changing options (bench.metrics.identity)
    grid: str
    model: str
    solver: str                   # registry name or spec ("floor" for a noise floor)
    label: str                    # the row's display name
    family: str                   # "handcrafted" | "learned" | "floor"
    kind: str                     # the row kind: handcrafted, untrained, distilled, released, floor
    paper_method: str             # the paper's name of the method ("" if none)
    options: str                  # JSON of the row's stored options
    nfe: int
    afs: bool
    schedule: str
    metric: str
    metric_label: str
    metric_options: str           # JSON of the metric's value-changing options
    higher_is_better: bool
    value: float                  # NaN when failed
    status: str                   # "ok" | "failed"
    error: str
    ci_low: float                 # the 95 % interval (bench.stats); NaN when unknown
    ci_high: float
    ci_method: str                # "bootstrap:B", "jackknife:G", "replicas:R"
    replicas: int
    num_samples: int
    seeds: str
    paper_key: str                # the paper's dataset key of the model ("" if none)
    instance_of: str              # the registered model whose problem instance `model` is ("" if none)
    distilled_on: str             # a learned row: the model it was distilled on, or "released:<key>"
    solver_key: str               # a distilled row: the key of its artefacts ("" otherwise)
    code_hash: str                # the solver's code (solvers.source)
    code_version: str             # the project's `git describe` or version
    config_hash: str              # the grid's settings
    torch_version: str
    device: str
    world_size: int
    wall_time: float              # seconds of the cell (sampling and metrics)
    created_at: str
    run_id: str                   # the run that computed it


@dataclass
class Run:
    run_id: str
    grid: str
    started_at: str
    finished_at: str
    status: str                   # "running" (or killed), "finished", "failed" (an error ended it)
    command: str
    config: str                   # JSON of the grid's raw settings, as run
    code_version: str
    world_size: int
    threads: int
    cells: int                    # cells of the grid
    computed: int                 # cells this run computed (the rest were stored already)
    failed: int                   # cells of the grid stored as failed at the end
    wall_time: float


@dataclass
class RunCell:
    run_id: str
    cell_key: str
    metric_key: str


@dataclass
class Score:
    cell_key: str
    metric_key: str
    seeds: str                    # the cell's seeds in order ("A-B", or a JSON list)
    data: bytes                   # float64 little-endian, one value per seed


@dataclass
class Artefact:
    solver_key: str
    kind: str                     # solvers.artefacts kind
    grid: str
    model: str
    label: str
    nfe: int
    data: str                     # JSON
    created_at: str


TABLES = {"results": (Result, ("cell_key", "metric_key")), "runs": (Run, ("run_id",)),
          "run_cells": (RunCell, ("run_id", "cell_key", "metric_key")), "scores": (Score, ("cell_key", "metric_key")),
          "artefacts": (Artefact, ("solver_key", "kind"))}


def columns(cls) -> dict[str, str]:
    """column -> SQL type of a row type, in field order."""
    return {f.name: _SQL[_TYPES[f.type] if isinstance(f.type, str) else f.type] for f in fields(cls)}


def create_sql(table: str) -> str:
    cls, key = TABLES[table]
    cols = ", ".join(f"{c} {t}" for c, t in columns(cls).items())
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({', '.join(key)}))"
