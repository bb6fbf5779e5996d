"""The NFE plan: (model, grid row, NFE) -> everything a cell samples with, computed once and carried by the cell.

A plan fixes everything about a cell's budget:
  * the time variable the solver integrates in (`time`: "sigma", or "flow" for the flow-time form of
    solvers/flow.py; an exponential integrator asked for "flow" runs in sigma, where it is the same method);
  * whether the first network evaluation is replaced by the analytical first step (`afs`);
  * the number of grid points that spends exactly `nfe` network evaluations (Solver.num_points, with the model's
    evaluations per call, AFS, and whether the grid ends at 0: Heun then skips its last correction);
  * the grid itself, in the solver's variables, over the model's own range; a released checkpoint's grid uses
    the checkpoint's schedule and point count on the model's range (as the reference sample.py does with the
    network's sigma_min/sigma_max), and its solver's own count of calls;
  * for a distilled row, the grid of the model it is distilled on (its own model, or `distill_from`);
  * the denoiser calls per sample, which the runner counts and checks.

The grid loader builds the plan of every cell through its row kind (bench.grid.rows), so a grid that cannot spend a
budget fails at load time, in one line; `--dry-run` prints it, the runner samples on it, and nothing else maps a
budget to a grid. `Solver.num_points` inverts `calls` in O(log NFE) calls of it.
"""
from __future__ import annotations

from dataclasses import dataclass

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
    afs: bool = False                           # the analytical first step replaces the first evaluation
    source_sigmas: tuple | None = None          # a distilled row: the grid it is distilled on

    @property
    def calls(self) -> int:
        """Denoiser calls per sample (network evaluations / evaluations per call)."""
        return self.nfe // self.evals_per_call


def time_for(row, solver) -> str:
    """The time variable the row's solver integrates in (flow only where its flow form differs)."""
    return "flow" if row.time == "flow" and flow.flow_form(solver) else "sigma"


def grid_of(model, num_points: int, schedule: str | None, schedule_options: dict):
    return model.grid(num_points, schedule, **schedule_options)


def _points(model, row, solver, nfe: int) -> tuple[int, str, bool]:
    """(grid points that spend `nfe`, the schedule, whether the grid ends at 0) of `solver` on `model`."""
    schedule = row.schedule or model.schedule
    ends_at_zero = float(grid_of(model, 3, schedule, row.schedule_options)[-1]) == 0.0
    n = solver.num_points(nfe, afs=row.afs, evals_per_call=model.evals_per_call, ends_at_zero=ends_at_zero)
    return n, schedule, ends_at_zero


def for_solver(model, row, solver, nfe: int, source=None, distilled: bool = False) -> Plan:
    """The plan of a row whose solver (or a budget probe of it) is `solver`; a `distilled` row also gets the grid
    of `source` (the model it is distilled on, default `model`). Raises InputError when the budget cannot be spent
    exactly."""
    time = time_for(row, solver)
    problem = model.view(time)
    n, schedule, ends_at_zero = _points(problem, row, solver, nfe)
    sigmas = tuple(float(v) for v in grid_of(problem, n, schedule, row.schedule_options))
    source_sigmas = None
    if distilled:
        src = (source or model).view(time)
        n_src, src_schedule, _ = _points(src, row, solver, nfe)
        if n_src != n:
            raise InputError(f"distilled on {src.name!r} it needs {n_src} grid points at NFE {nfe}, but "
                             f"{model.name!r} needs {n} (their evaluations per call differ); it cannot transfer")
        source_sigmas = tuple(float(v) for v in grid_of(src, n, src_schedule, row.schedule_options))
    return Plan(nfe=nfe, num_points=n, schedule=schedule, time=time, sigmas=sigmas,
                evals_per_call=model.evals_per_call, ends_at_zero=ends_at_zero, afs=row.afs,
                source_sigmas=source_sigmas)


def released(model, row, nfe: int) -> Plan:
    """A released checkpoint's grid: its schedule and point count, in its time variable, on the model's range; the
    budget is its solver's own count of calls on that grid."""
    from baselines import released_checkpoint_for, released_solver
    if model.released_key is None:
        raise InputError(f"model {model.name!r} has no released coefficients (released_key is unset)")
    ck = released_checkpoint_for(model.released_key, nfe, row.afs)
    time = ck.get("time", "sigma")
    if row.time != time:
        raise InputError(f"the released coefficients for {model.released_key!r} integrate in time = \"{time}\"; "
                         f"set time = \"{time}\"")
    problem = model.view(time)
    n = int(ck["num_time_points"])
    opts = {"rho": ck["schedule_rho"]} if ck["schedule"] == "polynomial" else {}
    sigmas = tuple(float(v) for v in grid_of(problem, n, ck["schedule"], opts))
    ends_at_zero = sigmas[-1] == 0.0
    spent = released_solver(model.released_key, nfe, kind=row.name).calls(n, row.afs, ends_at_zero)
    if spent * problem.evals_per_call != nfe:
        raise InputError(f"the released coefficients for {problem.released_key!r} at NFE {nfe} spend "
                         f"{spent * problem.evals_per_call} evaluations on this model")
    return Plan(nfe=nfe, num_points=n, schedule=ck["schedule"], time=time, sigmas=sigmas,
                evals_per_call=problem.evals_per_call, ends_at_zero=ends_at_zero, afs=row.afs)


def floor(model) -> Plan:
    """A noise floor's plan: no solver, no evaluation; the model's own range (its two end points)."""
    sigmas = tuple(float(v) for v in model.grid(2))
    return Plan(nfe=0, num_points=2, schedule=model.schedule, time="sigma", sigmas=sigmas,
                evals_per_call=model.evals_per_call, ends_at_zero=sigmas[-1] == 0.0)


def make(model, row, nfe: int, source=None) -> Plan:
    """The plan of grid row `row` on `model` at `nfe` (`source`: the model a distilled row is distilled on, if
    another): the row kind's own plan (bench.grid.rows)."""
    return row.plan(model, nfe, source)
