"""The NFE plan: (model, solver entry, NFE) -> the grid a cell samples on, computed once and carried by the cell.

A plan fixes everything about a cell's budget:
  * the time variable the solver integrates in (`time`: "sigma", or "flow" for the flow-time form of
    solvers/flow.py; an exponential integrator asked for "flow" runs in sigma, where it is the same method);
  * the number of grid points that spends exactly `nfe` network evaluations (Solver.num_points, with the model's
    evaluations per call, AFS, and whether the grid ends at 0: Heun then skips its last correction);
  * the grid itself, in the solver's variables, over the model's own range; a released checkpoint's grid uses
    the checkpoint's schedule and point count on the model's range (as the reference sample.py does with the
    network's sigma_min/sigma_max);
  * for a distilled entry, the grid of the model it is distilled on (its own model, or `distill_from`);
  * the denoiser calls per sample, which the runner counts and checks.

`grid.load` builds the plan of every cell (so a grid that cannot spend a budget fails at load time, in one line),
`--dry-run` prints it, the runner samples on it, and nothing else maps a budget to a grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import solvers
from solvers import flow
from solvers.errors import InputError


@dataclass(frozen=True)
class Plan:
    nfe: int
    num_points: int
    schedule: str
    time: str                                   # the variable the solver integrates in: "sigma" or "flow"
    sigmas: tuple                               # the sampling grid, in that variable
    evals_per_call: int
    ends_at_zero: bool
    source_sigmas: tuple | None = None          # a distilled entry: the grid it is distilled on

    @property
    def calls(self) -> int:
        """Denoiser calls per sample (network evaluations / evaluations per call)."""
        return self.nfe // self.evals_per_call


def probe(entry) -> solvers.Solver:
    """A solver instance for budget arithmetic (`calls`, `num_points`) of a grid entry."""
    cls = solvers.solver_class(entry.name)
    if cls.learned and (entry.learned or not any(k in entry.options for k in cls.parameter_options)):
        # its structure decides its budget (EPD's K): the untrained entry's options, or the distillation's
        given = {**entry.options, **(entry.distill or {})}
        structure = {k: v for k, v in given.items() if k in cls.structure}
        return cls.from_options(num_points=cls.min_points + 1, **structure) if structure else cls.budget_probe()
    return solvers.get(entry.name, **entry.options)


def time_for(entry, solver) -> str:
    """The time variable the entry's solver integrates in (flow only where its flow form differs)."""
    return "flow" if entry.time == "flow" and flow.flow_form(solver) else "sigma"


def grid_of(model, num_points: int, schedule: str | None, schedule_options: dict):
    return model.grid(num_points, schedule, **schedule_options)


def make(model, entry, nfe: int, source=None) -> Plan:
    """The plan of `entry` on `model` at `nfe` (`source`: the model a distilled entry is distilled on, if another).
    Raises InputError when the budget cannot be spent exactly."""
    if entry.released:
        return _released(model, entry, nfe)
    s = probe(entry)
    time = time_for(entry, s)
    problem = model.view(time)
    schedule = entry.schedule or model.schedule
    ends_at_zero = float(grid_of(problem, 3, schedule, entry.schedule_options)[-1]) == 0.0
    n = s.num_points(nfe, afs=entry.afs, evals_per_call=model.evals_per_call, ends_at_zero=ends_at_zero)
    sigmas = tuple(float(v) for v in grid_of(problem, n, schedule, entry.schedule_options))
    source_sigmas = None
    if entry.distill is not None:
        src = (source or model).view(time)
        src_schedule = entry.schedule or (source or model).schedule
        src_zero = float(grid_of(src, 3, src_schedule, entry.schedule_options)[-1]) == 0.0
        n_src = s.num_points(nfe, afs=entry.afs, evals_per_call=(source or model).evals_per_call,
                             ends_at_zero=src_zero)
        if n_src != n:
            raise InputError(f"distilled on {source.name!r} it needs {n_src} grid points at NFE {nfe}, but "
                             f"{model.name!r} needs {n} (their evaluations per call differ); it cannot transfer")
        source_sigmas = tuple(float(v) for v in grid_of(src, n, src_schedule, entry.schedule_options))
    return Plan(nfe=nfe, num_points=n, schedule=schedule, time=time, sigmas=sigmas,
                evals_per_call=model.evals_per_call, ends_at_zero=ends_at_zero, source_sigmas=source_sigmas)


def _released(model, entry, nfe: int) -> Plan:
    """A released checkpoint's grid: its schedule and point count, in its time variable, on the model's range."""
    from baselines import released_checkpoint_for
    if model.released_key is None:
        raise InputError(f"model {model.name!r} has no released DyWeight coefficients (released_key is unset)")
    ck = released_checkpoint_for(model.released_key, nfe, entry.afs)
    time = ck.get("time", "sigma")
    if entry.time != time:
        raise InputError(f"the released coefficients for {model.released_key!r} integrate in time = \"{time}\"; "
                         f"set time = \"{time}\"")
    problem = model.view(time)
    n = int(ck["num_time_points"])
    opts = {"rho": ck["schedule_rho"]} if ck["schedule"] == "polynomial" else {}
    sigmas = tuple(float(v) for v in grid_of(problem, n, ck["schedule"], opts))
    calls = n - 1 - int(entry.afs)
    if calls * problem.evals_per_call != nfe:
        raise InputError(f"the released coefficients for {problem.released_key!r} at NFE {nfe} spend "
                         f"{calls * problem.evals_per_call} evaluations on this model")
    return Plan(nfe=nfe, num_points=n, schedule=ck["schedule"], time=time, sigmas=sigmas,
                evals_per_call=problem.evals_per_call, ends_at_zero=sigmas[-1] == 0.0)
