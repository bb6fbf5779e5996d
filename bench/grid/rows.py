"""Row kinds: what a [[solvers]] table of a grid is, decided once when the grid is read.

    Handcrafted   a solver built from its options as given: a handcrafted one, or a learned one given explicit
                  parameters (its `parameter_options`, e.g. DyWeight's weights, EPD's r, LD3's positions)
    Untrained     a learned solver at its official initialisation for each cell's grid (no distillation, release
                  or parameters: its options are structure options)
    Distilled     a learned solver distilled per (model, NFE) with `distill = {...}` (on `distill_from`'s model, for
                  the cross-model transfer)
    Released      the coefficients the method's authors released for the model (`released = true`)
    Floor         a noise floor: no solver; the model's reference scored at the cell's seeds

Each kind owns its identity (what determines its samples: everything but the label, including the hash of the
solver's code, solvers.source), its plan (bench.plan: the grid that spends exactly the cell's NFE), how it builds
its solver for a cell (`build(cell, model, ctx)`; a distilled row asks the run's `ctx.distilled(cell)`), the
options stored beside its results, and its family for the report ("handcrafted", "learned" or "floor").
`parse(table, defaults, where)` turns one table into a row, with one-line errors naming what is accepted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import solvers
from solvers.errors import InputError

from .. import plan as plans
from . import schema

TIMES = ("sigma", "flow")


@dataclass
class Row:
    """What every kind shares: the table's display and sampling settings."""

    name: str                                   # registry name or a user's spec ("floor" for a noise floor)
    label: str
    afs: bool = False
    schedule: str | None = None                 # None: the model's own schedule
    schedule_options: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    time: str = "sigma"                         # "flow": the solver's flow-time form (solvers/flow.py)
    models: list | None = None                  # only these models (None: every model of the grid)
    nfe: list | None = None                     # overrides the grid's NFE list
    skip_unreachable: bool | None = None
    paper_method: str | None = None             # the paper's name of this row's method (reported-vs-measured)

    kind: ClassVar[str] = ""

    @property
    def family(self) -> str:
        """"handcrafted", "learned" or "floor", as the report groups rows."""
        return "learned" if solvers.solver_class(self.name).learned else "handcrafted"

    def identity(self) -> dict:
        """What determines this row's samples (the label is a display name and does not)."""
        out = {"kind": self.kind, "name": self.name, "code": solvers.code_hash(self.name), "afs": self.afs,
               "schedule": self.schedule, "schedule_options": self.schedule_options, "options": self.options}
        if self.time != "sigma":
            out["time"] = self.time
        return out

    def stored_options(self) -> dict:
        """The options stored beside the row's results (and compared by `bench check`)."""
        return dict(self.options)

    def probe(self) -> solvers.Solver:
        """A solver instance for budget arithmetic (`calls`, `num_points`)."""
        return solvers.get(self.name, **self.options)

    def plan(self, model, nfe: int, source=None) -> plans.Plan:
        return plans.for_solver(model, self, self.probe(), nfe)

    def build(self, cell, model, ctx) -> solvers.Solver | None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.label + (" +AFS" if self.afs else "")


@dataclass
class Handcrafted(Row):
    kind: ClassVar[str] = "handcrafted"

    def build(self, cell, model, ctx):
        return solvers.get(self.name, **self.options)


def _structure(cls, options: dict) -> dict:
    return {k: v for k, v in options.items() if k in cls.structure}


def _structure_probe(cls, given: dict) -> solvers.Solver:
    """A learned solver built for budget arithmetic: its structure decides its budget (EPD's K)."""
    structure = _structure(cls, given)
    return cls.from_options(num_points=cls.min_points + 1, **structure) if structure else cls.budget_probe()


@dataclass
class Untrained(Row):
    kind: ClassVar[str] = "untrained"

    def probe(self):
        return _structure_probe(solvers.solver_class(self.name), self.options)

    def build(self, cell, model, ctx):
        return solvers.solver_class(self.name).untrained(cell.num_points, self.afs, **self.options)


@dataclass
class Distilled(Row):
    kind: ClassVar[str] = "distilled"
    distill: dict = field(default_factory=dict)           # bench.distill options
    distill_from: str | None = None                       # distilled on this other model (transfer)

    def identity(self) -> dict:
        return {**super().identity(), "distill": self.distill, "distill_from": self.distill_from}

    def stored_options(self) -> dict:
        out = {**self.options, "distill": self.distill}
        if self.distill_from:
            out["distill_from"] = self.distill_from
        return out

    def probe(self):
        return _structure_probe(solvers.solver_class(self.name), {**self.options, **self.distill})

    def plan(self, model, nfe, source=None):
        return plans.for_solver(model, self, self.probe(), nfe, source=source, distilled=True)

    def build(self, cell, model, ctx):
        return ctx.distilled(cell)


@dataclass
class Released(Row):
    kind: ClassVar[str] = "released"

    def identity(self) -> dict:
        return {**super().identity(), "released": True}

    def stored_options(self) -> dict:
        return {**self.options, "released": True}

    def plan(self, model, nfe, source=None):
        return plans.released(model, self, nfe)

    def build(self, cell, model, ctx):
        from baselines import released_solver
        return released_solver(model.released_key, cell.nfe, kind=self.name)


@dataclass
class Floor(Row):
    kind: ClassVar[str] = "floor"
    source: str = ""                                      # the model's floor source (exact_ode, data, teacher, ...)

    @property
    def family(self) -> str:
        return "floor"

    def identity(self) -> dict:
        return {"floor": self.source}

    def stored_options(self) -> dict:
        return {"floor": self.source}

    def plan(self, model, nfe=0, source=None):
        return plans.floor(model)

    def build(self, cell, model, ctx):
        return None


KINDS = (Handcrafted, Untrained, Distilled, Released, Floor)


def parse(table: Any, defaults: dict, where: str) -> Row:
    """One [[solvers]] table -> its row kind, every value checked (`defaults`: the grid's schedule and time)."""
    if not isinstance(table, dict) or "name" not in table:
        raise InputError(f"{where}: needs name = one of {', '.join(solvers.names())}")
    schema.unknown(table, schema.SOLVER_KEYS, where)
    name = table["name"]
    if not isinstance(name, str) or (name not in solvers.names() and not solvers.is_spec(name)):
        raise InputError(f"{where}: unknown solver {name!r}; accepted: {', '.join(solvers.names())}, or a user's "
                         "solver as path/to/file.py:Class or package.module:Class")
    try:
        cls = solvers.solver_class(name)
    except (ValueError, FileNotFoundError) as err:
        raise InputError(f"{where}: {err}") from None
    common = _common(table, defaults, where)
    distill, released = table.get("distill"), table.get("released", False)
    schema.boolean(released, f"{where}: released")
    if distill is not None:
        schema.table(distill, f"{where}: distill")
    explicit = [k for k in common["options"] if k in getattr(cls, "parameter_options", ())] if cls.learned else []
    if (distill is not None) + released + bool(explicit) > 1:
        raise InputError(f"{where}: a learned row takes exactly one of distill = {{...}}, released = true or explicit "
                         f"parameters ({', '.join(getattr(cls, 'parameter_options', ())) or 'none for this solver'})")
    if (distill is not None or released) and not cls.learned:
        raise InputError(f"{where}: distill/released need a learned solver (one of "
                         f"{', '.join(solvers.learned_names())}), got {name!r}")
    if table.get("distill_from") is not None and distill is None:
        raise InputError(f"{where}: distill_from needs distill = {{...}} too")
    if distill is not None:
        return Distilled(**common, distill=distill, distill_from=table.get("distill_from"))
    if released:
        from baselines import RELEASED_KINDS
        if name not in RELEASED_KINDS:
            raise InputError(f"{where}: {name} has no released coefficients (released = true); released: "
                             f"{', '.join(RELEASED_KINDS)}")
        return Released(**common)
    if cls.learned and not explicit:
        unknown = [k for k in common["options"] if k not in cls.structure]
        if unknown:
            raise InputError(f"{where}: {name} has no structure option {', '.join(map(repr, unknown))}; accepted: "
                             f"{', '.join(cls.structure) or '(none)'} (or explicit parameters: "
                             f"{', '.join(cls.parameter_options) or 'none'})")
        return Untrained(**common)
    row = Handcrafted(**common)
    try:
        row.probe()
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {err}") from None
    return row


def _common(table: dict, defaults: dict, where: str) -> dict:
    from solvers import schedules
    out = dict(name=table["name"], label=str(table.get("label", table["name"])),
               afs=schema.boolean(table.get("afs", False), f"{where}: afs"),
               schedule=table.get("schedule", defaults.get("schedule")),
               schedule_options=schema.table(table.get("schedule_options", {}), f"{where}: schedule_options"),
               options=schema.table(table.get("options", {}), f"{where}: options"),
               time=table.get("time", defaults.get("time", "sigma")), models=table.get("models"),
               nfe=schema.int_list(table["nfe"], where) if "nfe" in table else None,
               skip_unreachable=table.get("skip_unreachable"), paper_method=table.get("paper_method"))
    if out["skip_unreachable"] is not None:
        schema.boolean(out["skip_unreachable"], f"{where}: skip_unreachable")
    if out["paper_method"] is not None and (not isinstance(out["paper_method"], str) or not out["paper_method"]):
        raise InputError(f"{where}: paper_method must be the paper's name of the method, e.g. \"DyWeight\"")
    if out["time"] not in TIMES:
        raise InputError(f"{where}: unknown time {out['time']!r}; accepted: {', '.join(TIMES)} (flow: the solver's "
                         "flow-time form, solvers/flow.py)")
    if out["schedule"] is not None and out["schedule"] not in schedules.KINDS:
        raise InputError(f"{where}: unknown schedule {out['schedule']!r}; accepted: {', '.join(schedules.KINDS)}")
    return out
