"""Solvers for cells: each row kind builds its own (bench.grid.rows); a distilled row asks `Builder.distilled`.

A distilled solver is made once per (source model, row, NFE) and run: rank 0 loads the saved one whose recorded
settings digest matches, or distils it, while the other ranks wait in `Dist.sync` without a timeout; the state is
then broadcast (no shared file system is needed between nodes). A failed distillation ends every rank with its
message.

Saved solvers are data. Before anything in a saved file is built, its JSON is read as plain data and its
settings digest (which covers the row's solver name or spec and the hash of its code) is compared; a file whose
digest differs, whose solver is not the one the grid names, or whose parameters do not hash to the digest stored
beside them is ignored and distilled again, so a crafted results file can never make the run import code the grid
does not name.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from bench.grid import GridCell, canonical_hash
from bench.store.layout import Layout

from .dist import Dist, RankFailed

SAMPLE_GRIDS = 256      # per-sample grids recorded beside a distilled solver that predicts them (report figure)


class Builder:
    """Solvers for the cells of one run; distilled ones made (rank 0) or loaded once per run."""

    def __init__(self, grid, results_dir: Path, dist: Dist, log=print, progress=None):
        self.grid, self.layout, self.dist, self.log = grid, Layout.of(results_dir), dist, log
        self.progress = progress                   # bench.run.progress.Progress, or None
        self._learned: dict[Path, object] = {}
        self.distill_seconds = 0.0
        self.made: list[tuple[GridCell, object]] = []   # (cell, solver) of every solver distilled or loaded here

    def problem(self, c: GridCell):
        """The cell's model in the plan's time variable (itself, or its flow-time view)."""
        return self.grid.models[c.model].view(c.plan.time)

    def solver(self, c: GridCell):
        """The cell's solver, as its row kind builds it (None for a noise floor)."""
        return c.row.build(c, self.grid.models[c.model], self)

    def settings_digest(self, c: GridCell) -> str:
        """What determines a distilled solver: its source model and options, the row's identity (solver, code hash,
        distillation table), the resolved settings and the grid it is distilled on."""
        row = c.row
        source = c.distill_source
        return canonical_hash({"model": source, "model_options": c.model_options if source == c.model else {},
                               "row": row.identity(), "settings": c.distill_settings,
                               "sigmas": list(c.plan.source_sigmas), "time": c.plan.time})

    def distilled(self, c: GridCell):
        """The distilled solver of a cell (module docstring). Every rank learns from rank 0 whether a saved one
        serves; if not, the ranks distil it together (data-parallel, when the method trains by gradients without
        per-sample state) or rank 0 alone while the others wait in `Dist.sync`, without a timeout. Bad input ends
        every rank; running out of device memory fails this cell alone (CellFailed) and the run goes on."""
        import solvers
        row = c.row
        path = self.layout.solver(self.grid.name, c.distill_source, row.label, c.nfe)
        if path in self._learned:
            return self._learned[path]
        digest = self.settings_digest(c)
        saved = None
        if self.dist.main:
            found = load_matching(path, digest, row.name)
            saved = solvers.state_of(found) if found is not None else None
        saved = self.dist.broadcast(saved)
        if saved is not None:
            solver = solvers.solver_class(row.name).from_state(saved)
        else:
            solver = self._distilled_together(c, digest, path)
        self._learned[path] = solver
        self.made.append((c, solver))
        return solver

    def _distilled_together(self, c: GridCell, digest: str, path: Path):
        import solvers
        together = self.dist.world > 1 and data_parallel(c, self.dist.world)
        solver, outcome = None, ("ok", "")
        if together or self.dist.main:
            solver, outcome = self._distil(c, digest, self.dist if together else None)
        self.dist.sync()                               # the other ranks wait here, without a timeout
        outcomes = [(kind, f"rank {r}: {msg}" if self.dist.world > 1 else msg)
                    for r, (kind, msg) in enumerate(self.dist.all_gather(outcome))]
        for kind, error in (("input", RankFailed), ("oom", CellFailed)):
            bad = next((msg for k, msg in outcomes if k == kind), None)
            if bad is not None:
                raise error(bad)
        if not together:
            state = self.dist.broadcast(solvers.state_of(solver) if self.dist.main else None)
            if not self.dist.main:
                solver = solvers.solver_class(c.row.name).from_state(state)
        if self.dist.main:
            save(solver, path)
        return solver

    def _distil(self, c: GridCell, digest: str, group):
        """(solver, ("ok", "")), or (None, ("input" | "oom", message))."""
        from bench.distill import distill
        from bench.grid.expand import distill_options
        row, source_name = c.row, c.distill_source
        source = self.grid.models[source_name].view(c.plan.time)
        options = distill_options(row.distill, row.label)
        seed = row.distill.get("seed", 0)
        what = f"{row.label} for {source_name} at NFE {c.nfe}"
        bar = self.progress.distillation(what, c) if self.progress is not None and self.dist.main else None
        if bar is None and self.dist.main:
            self.log(f"distilling {what}" + (f" on {self.dist.world} ranks" if group is not None else "") + " ...")
        extra = {"progress": bar} if bar else {}
        if group is not None:
            extra["group"] = group
        if torch.device(getattr(source, "device", "cpu")).type == "cuda":
            extra["memory"] = "auto"
        t0 = time.perf_counter()
        try:
            solver = distill(row.name, source, list(c.plan.source_sigmas), afs=row.afs, seed=seed,
                             cache_dir=self.layout.distill_cache, **extra, **options)
        except torch.cuda.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            return None, ("oom", f"distilling {what} ran out of device memory: {str(err).splitlines()[0]}")
        except (ValueError, FileNotFoundError) as err:     # bad input: reported to every rank
            return None, ("input", f"distilling {what} failed: {err}".splitlines()[0])
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        self.distill_seconds += seconds
        solver.metadata["harness"] = {"settings_hash": digest, "grid": self.grid.name, "model": source_name,
                                      "label": row.label, "nfe": c.nfe, "distill_seconds": seconds,
                                      "ranks": group.world if group is not None else 1}
        record = sample_grids(solver, source, c.plan.source_sigmas, row.afs, list(c.seeds)[:SAMPLE_GRIDS])
        if record is not None:
            solver.metadata["sample_grids"] = record
        return solver, ("ok", "")


class CellFailed(RuntimeError):
    """A cell that cannot be computed on this device (its distillation ran out of memory); stored as failed."""


def data_parallel(c: GridCell, world: int) -> bool:
    """Whether `world` ranks can distil this cell's solver together: a gradient-trained method without per-sample
    state (LD3's relaxed ball) whose batch splits over the ranks."""
    import solvers
    s = c.distill_settings or {}
    cls = solvers.solver_class(c.row.name)
    return (getattr(cls, "trained_by", "gradient") == "gradient" and not s.get("relaxed_ball")
            and int(s.get("batch_size") or 1) % world == 0)


def sample_grids(solver, source, sigmas, afs: bool, seeds) -> dict | None:
    """For a solver with per-sample grids (`grids`), its grids for the noises of `seeds` and, where the model
    names each sample's instance class (`component_of`), the class each of its own samples ends in; else None."""
    x_T = source.noise(seeds)
    grids = solver.grids(x_T, float(sigmas[0]), float(sigmas[-1]))
    if grids is None:
        return None
    out = {"seeds": [int(s) for s in seeds], "grids": grids.detach().double().cpu().tolist()}
    if hasattr(source.base, "component_of"):
        with torch.no_grad():
            x = solver.sample(source.denoiser(source.conditions(seeds)), x_T,
                              torch.tensor(sigmas, dtype=torch.float64), afs=afs)
        out["classes"] = source.base.component_of(source.to_base(x).double()).cpu().tolist()
    return out


# ---- saved solvers are data ----------------------------------------------------------------------------------------
def parameter_digest(state: dict) -> str:
    """sha256 of a saved solver's state without its metadata and this digest: what its numbers are."""
    body = {k: v for k, v in state.items() if k not in ("metadata", "parameter_digest")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def save(solver, path: Path) -> None:
    """Write a distilled solver's state with the digest of its parameters, atomically (a unique temporary file
    moved into place: a kill never leaves half a file)."""
    import solvers
    state = solvers.state_of(solver)
    state["parameter_digest"] = parameter_digest(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def load_matching(path: Path, digest: str, name: str):
    """The saved solver at `path` if it is intact and was distilled with these settings for solver `name` (the
    grid's), else None; nothing in the file is imported or built before those checks."""
    import solvers
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("metadata"), dict):
        return None
    if state["metadata"].get("harness", {}).get("settings_hash") != digest:
        return None
    if state.get("spec", state.get("solver")) != name and state.get("solver") != name:
        return None
    if state.get("parameter_digest") != parameter_digest(state):
        return None
    try:
        return solvers.solver_class(name).from_state(state)
    except (ValueError, KeyError, TypeError):
        return None
