"""The learned-solver protocol: what every learned solver declares, so that distillation, grids, the runner and
the reports treat them as one family without naming any of them.

A learned solver is a `Solver` that is also a `torch.nn.Module` (its learned quantities are Parameters, trained by
backpropagation through `sample`), and subclasses `LearnedSolver`, which sets `learned = True`. It provides:

  from_options(num_points=N, afs=..., **structure)   the untrained solver at the method's official
                                                     initialisation for a grid of N points; other keywords of
                                                     from_options give explicit parameters (post-activation)
  structure                                          the from_options keywords a distillation passes through
                                                     (e.g. DyWeight's history, init); the rest of a distillation's
                                                     options are shared settings (bench.distill.Settings)
  parameter_options                                  the keywords that give explicit parameters (with them no
                                                     num_points is needed)
  distill_defaults                                   the method's official distillation settings, overridable
  state() / from_state(state)                        everything that rebuilds it, "solver" naming its registry
                                                     kind; `save`/`solvers.load` write and read it as JSON
  learns()                                           parameter name -> number of learned values
  sigmas, metadata                                   the grid it was distilled for, and its provenance (the
                                                     distillation's settings and curves), saved in its state
  row_name, ends_above_zero (optional)               what its per-step parameters are called (then sample checks
                                                     the grid has the points they were built for, and the AFS
                                                     setting), and why it needs a grid ending above 0
  grids(x_T, t_max, t_min) (optional)                its per-sample grids (B, N), recorded beside a distilled
                                                     solver for the report's figure; default None (one grid)
  artefacts() (optional)                             what it shows in a report (solvers.artefacts: its coefficient
                                                     table, its learned grid); stored beside its cells
  penalty(), begin_step(step, steps) (optional)      a regulariser of the latest `sample` run, per sample (added to
                                                     each sample's loss), and a hook before each optimiser step
                                                     (training phases); defaults: None, nothing
  trained_by = "search" (optional)                   trained without gradients: bench.distill hands its
                                                     `search(T, X, d, afs, denoiser, x_T)` the teacher's whole
                                                     trajectories instead of running the gradient loop (GITS)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .base import Solver, is_zero
from .errors import InputError


class LearnedSolver(Solver, torch.nn.Module):
    learned = True
    per_sample_grids = False          # a learned solver that integrates (B, N) grids says so
    structure: tuple = ()
    parameter_options: tuple = ()
    distill_defaults: dict = {}

    def __init__(self):
        torch.nn.Module.__init__(self)
        self.sigmas = None            # the grid it was distilled for (set by bench.distill)
        self.metadata: dict = {}      # provenance: released checkpoint, or the distillation's settings and curves

    @classmethod
    def untrained(cls, num_points: int, afs: bool = False, **structure) -> "LearnedSolver":
        """The official initialisation for a grid of `num_points` points (what distillation starts from)."""
        unknown = [k for k in structure if k not in cls.structure]
        if unknown:
            raise InputError(f"{cls.name} has no structure option {', '.join(map(repr, unknown))}; accepted: "
                             f"{', '.join(cls.structure) or '(none)'}")
        return cls.from_options(num_points=num_points, afs=afs, **structure)

    @classmethod
    def budget_probe(cls) -> "LearnedSolver":
        return cls.from_options(num_points=cls.min_points + 1)

    #: what its per-step parameters are called ("weight rows"); set, `check_grid` also checks that the grid has
    #: the `grid_points` they were built for and that `afs` matches the AFS setting they were built with
    row_name: str | None = None
    #: why it needs a grid ending above 0, if it does (e.g. it interpolates sigma geometrically)
    ends_above_zero: str | None = None

    def check_grid(self, sigmas, x_T, afs):
        t = super().check_grid(sigmas, x_T, afs)
        if self.row_name is not None:
            if len(t) != self.grid_points:
                raise InputError(f"this {self.name} solver has {self.grid_points - 1} {self.row_name}, so it needs a "
                                 f"grid of {self.grid_points} points, got {len(t)}")
            if self.afs is not None and bool(afs) != bool(self.afs):
                raise InputError(f"this {self.name} solver was built for afs={self.afs}; call sample(..., "
                                 f"afs={self.afs})")
        if self.ends_above_zero and is_zero(t[-1]):
            raise InputError(f"{self.name} needs a grid ending above 0 ({self.ends_above_zero})")
        return t

    def penalty(self):
        """A regulariser of the latest `sample` run, per sample ((B,) tensor), or None (the default)."""
        return None

    def begin_step(self, step: int, steps: int) -> None:
        """Called before each of the `steps` optimiser steps of a distillation (e.g. to switch training phases)."""

    def grids(self, x_T, t_max: float, t_min: float):
        """The per-sample grids (B, N) it integrates the noises x_T on, for a solver that predicts one grid per
        sample; None (the default) for a solver with one grid for all."""
        return None

    def artefacts(self) -> list:
        """What the report shows of it (solvers.artefacts records); none by default."""
        return []

    def learns(self) -> dict[str, int]:
        """Every learned quantity and its number of values (trainable Parameters)."""
        return {name: p.numel() for name, p in self.named_parameters() if p.requires_grad}

    def parameter_count(self) -> int:
        return sum(self.learns().values())

    # ---- persistence ----------------------------------------------------------------------------------------
    def state(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_state(cls, st: dict) -> "LearnedSolver":
        raise NotImplementedError

    @classmethod
    def load(cls, path) -> "LearnedSolver":
        return cls.from_state(read_state(path))

    def save(self, path) -> None:
        """JSON with float64 values written exactly (repr round-trips), plus the grid and training settings; written
        to a temporary file moved into place, so a kill never leaves half a file."""
        import os

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state_of(self), indent=1))
        os.replace(tmp, path)


def read_state(path) -> dict:
    """The JSON state of a saved learned solver; one-line errors for a missing or malformed file."""
    try:
        st = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no saved solver at {path}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not a saved solver (invalid JSON: {e})") from None
    if not isinstance(st, dict) or not isinstance(st.get("solver"), str):
        raise InputError(f"{path} is not a saved solver (no 'solver' kind recorded)")
    return st


def state_of(solver: Solver) -> dict:
    """A learned solver's `state()`, with the spec of a user's class loaded from its file (solvers.registry
    `solver_class` records it as `spec`), so the file can name the code it needs."""
    st = solver.state()
    spec = getattr(type(solver), "spec", None)
    return {**st, "spec": spec} if spec else st
