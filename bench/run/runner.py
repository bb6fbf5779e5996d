"""The runner: grid -> cells -> (distil) -> sample -> metric -> results.

`run(grid, results_dir)` records the run and the cells its grid expanded to (bench.store), then, for each cell
not yet stored: builds its solver through its row kind (distilling or loading a learned one), samples it
(bench.run.sample), computes each metric on all its samples and stores the cell in one transaction, with the
per-sample scores of metrics that have them and the artefacts of the solvers it distilled. It ends with a short
summary, the cells that failed (the run's exit code is then 1) and the command that renders the report.

Under `torchrun --nproc_per_node=K`, each cell's seeds are split into K contiguous shards (gloo on CPU, nccl on
GPU); rank 0 alone distils, reduces metrics and writes. Samples do not depend on the batch size or the number of
processes, because every seed has its own generator. Ranks meet without timeouts and fail together (bench.run.dist).

Threads: torch's default (one thread per core) oversubscribes a shared machine badly on small problems, so the run
sets its threads from the work: the `threads` given (`--threads`, or the grid's), else the fewest its models ask
for (`Model.threads`: 1 for the analytic mixtures and the digits network), else torch's default; under torchrun
on CPUs, one per rank.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.grid import Grid, GridCell
from bench.provenance import code_version
from bench.store import Artefact, Store, now
from bench.store.layout import Layout
from solvers.errors import InputError, one_line

from . import dist as dist_mod
from .build import Builder, CellFailed
from .progress import Progress
from .sample import cell_results, run_cell


@dataclass
class Summary:
    """What a run did: its cells, how many it computed, which failed (described, with their errors)."""

    grid: str
    results_dir: Path
    run_id: str = ""
    cells: int = 0
    computed: int = 0
    failed: list = field(default_factory=list)          # (cell description, error)
    wall: float = 0.0
    distill_seconds: float = 0.0
    threads: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def pending(grid: Grid, store: Store, retry_failed: bool = False) -> list[GridCell]:
    """Cells with a metric not yet stored (or stored as failed, with retry_failed)."""
    todo = []
    for c in grid.cells:
        stored = store.stored(c.key)
        if any(k not in stored or (retry_failed and stored[k] != "ok") for k in c.metric_keys.values()):
            todo.append(c)
    return todo


def choose_threads(grid: Grid, cells: list[GridCell], requested: int | None, world: int) -> int | None:
    """The torch threads for this run (module docstring); None keeps torch's default."""
    if requested is None:
        requested = grid.raw.get("threads")
    if requested is not None:
        return int(requested)
    hints = [getattr(grid.models[c.model], "threads", None) for c in cells]
    if hints and all(h is not None for h in hints):
        return min(hints)
    if world > 1 and all(torch.device(getattr(grid.models[c.model], "device", "cpu")).type == "cpu" for c in cells):
        return 1
    return None


def run(grid: Grid, results_dir: str | Path = "results", progress: bool = True, retry_failed: bool = False,
        out=print, threads: int | None = None, save_samples: str | Path | None = None, command: str = "") -> Summary:
    """Run every pending cell of `grid`, storing results in `results_dir`; returns the run's Summary."""
    results_dir = Path(results_dir)
    layout = Layout.of(results_dir)
    dist = dist_mod.init()
    summary = Summary(grid=grid.name, results_dir=results_dir)
    if grid.kind != "sampling":
        from bench.grid import study_module
        if dist.main:
            study_module(grid.kind).run(grid.raw, results_dir)
        dist.sync()
        return summary
    check_requirements(grid)
    store = Store(results_dir) if dist.main else None
    todo_keys = dist.broadcast([c.key for c in pending(grid, store, retry_failed)] if dist.main else None)
    todo = [c for c in grid.cells if c.key in set(todo_keys)]
    metrics = build_metrics(grid, todo)
    preflight(grid, todo, metrics)
    chosen = choose_threads(grid, todo, threads, dist.world)
    before = torch.get_num_threads()
    if chosen is not None:
        torch.set_num_threads(chosen)
    summary.threads = torch.get_num_threads()
    summary.cells = len(grid.cells)
    if dist.main:
        summary.run_id = store.begin_run(grid.name, grid.raw, command, code_version(), dist.world, summary.threads,
                                         [(c.key, k) for c in grid.cells for k in c.metric_keys.values()])
    bars = Progress(todo, _first_distils(todo, layout, grid), dist.main and progress)
    builder = Builder(grid, results_dir, dist, log=bars.write, progress=bars if dist.main and progress else None)
    prov = {"code_version": code_version(), "config_hash": grid.config_hash, "run_id": summary.run_id}
    t_start, status = time.perf_counter(), "failed"
    try:
        with dist.guard():
            if dist.main and len(todo) < len(grid.cells):
                bars.write(f"{len(grid.cells) - len(todo)} of {len(grid.cells)} cells already stored in "
                           f"{results_dir}; running {len(todo)}")
            for c in todo:
                _one_cell(c, grid, builder, metrics, dist, store, prov, retry_failed, layout, save_samples, bars)
                summary.computed += 1
        status = "finished"
    finally:
        bars.close()
        summary.wall = time.perf_counter() - t_start
        summary.distill_seconds = builder.distill_seconds
        if store is not None:
            summary.failed = failed_cells(grid, store)
            store.finish_run(summary.run_id, status, summary.computed, len(summary.failed), summary.wall)
            store.close()
        torch.set_num_threads(before)
    if dist.main:
        out(report_summary(grid, summary))
    dist.sync()
    return summary


def _first_distils(todo: list[GridCell], layout: Layout, grid: Grid) -> set:
    """The cells whose solver this run will distil (the first cell of each distilled solver without a saved one)."""
    out, seen = set(), set()
    for c in todo:
        if c.row.kind == "distilled":
            path = layout.solver(grid.name, c.distill_source, c.row.label, c.nfe)
            if path not in seen and not path.exists():
                out.add(id(c))
            seen.add(path)
    return out


def _one_cell(c, grid, builder, metrics, dist, store, prov, retry_failed, layout, save_samples, bars) -> None:
    model = grid.models[c.model]
    release_others(grid, c)
    made = len(builder.made)
    t0 = time.perf_counter()
    try:
        solver = builder.solver(c)
    except CellFailed as err:                        # e.g. its distillation ran out of device memory
        values = {m: (None, str(err), None) for m in c.metrics}
    else:
        saver = _saver(save_samples, layout, c, model, dist) if save_samples else None
        values = run_cell(c, builder.problem(c), solver, metrics[c.model], dist, layout.cache, saver)
    wall = time.perf_counter() - t0
    if not dist.main:
        return
    solver_key = builder.settings_digest(c) if c.row.kind == "distilled" else ""
    if len(builder.made) > made:
        store.write_artefacts(artefacts_of(builder.made[-1][1], solver_key, c))
    prov.update(device=str(getattr(model, "device", "cpu")), released_key=model.released_key, now=now(),
                solver_key=solver_key)
    results, scores = cell_results(c, values, prov, wall, dist.world, metrics[c.model])
    store.write_cell(results, scores, replace=retry_failed)
    failed = [r.error for r in results if r.status != "ok"]
    if failed:
        bars.write(f"cell {c.describe()} failed: {failed[0]}")
    bars.cell_done(c, "1 failed" if failed else "")


def artefacts_of(solver, solver_key: str, c: GridCell) -> list[Artefact]:
    """The stored artefacts of a distilled solver: what it declares (solvers.artefacts), its per-sample grids and
    its training record."""
    from solvers import artefacts as kinds
    items = list(solver.artefacts()) if hasattr(solver, "artefacts") else []
    meta = getattr(solver, "metadata", {}) or {}
    rec = meta.get("sample_grids")
    if isinstance(rec, dict):
        glob = next((a.timesteps for a in items if isinstance(a, kinds.TimeGrid)), None)
        items.append(kinds.SampleGrids(rec["seeds"], rec["grids"], rec.get("classes"), glob))
    t = meta.get("training")
    if isinstance(t, dict):
        steps = t["step"][-1] + 1 if isinstance(t.get("step"), list) and t["step"] else int(t.get("steps") or 0)
        items.append(kinds.TrainingRecord(
            parameters=int(t.get("parameters", 0)), steps=steps, teacher_calls=int(t.get("teacher_calls", 0)),
            student_calls=int(t.get("student_calls", 0)), wall_time=float(t.get("wall_time", 0.0)),
            step=list(t.get("step") or []), loss=[float(v) for v in t.get("loss") or [] if isinstance(v, (int, float))],
            eval_step=list(t.get("eval_step") or []), eval_error=list(t.get("eval_error") or []),
            kept_step=t.get("kept_step"), learns=dict(t.get("learns") or {})))
    return [Artefact(solver_key=solver_key, kind=a.kind, grid=c.grid, model=c.distill_source or c.model,
                     label=c.row.label, nfe=c.nfe, data=a.to_json(), created_at=now()) for a in items]


def failed_cells(grid: Grid, store: Store) -> list[tuple[str, str]]:
    """(description, first error) of every cell of the grid stored as failed."""
    out = []
    for c in grid.cells:
        rows = store.conn.execute("SELECT error FROM results WHERE cell_key = ? AND status != 'ok'",
                                  (c.key,)).fetchall()
        if rows:
            out.append((c.describe(), rows[0][0]))
    return out


def _saver(base, layout: Layout, c: GridCell, model, dist):
    """`--save-samples`: each seed's image as <seed>.png in one folder per cell (EDM's convention, what FID tools
    read), or, for other data, one .npz per cell and rank."""
    import numpy as np
    target = layout.samples(Path(base), c.grid, c.model, c.row.label, c.nfe)
    images = len(model.shape) == 3 and model.shape[0] in (1, 3)
    if images:
        folder = target.with_suffix("")
        folder.mkdir(parents=True, exist_ok=True)

        def save(seeds, decoded):
            from PIL import Image

            from bench.metrics.features import to_uint8
            x = to_uint8(decoded.detach().float().cpu())
            for s, img in zip(seeds, x.permute(0, 2, 3, 1).numpy()):
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{int(s):06d}.png")
        return save
    parts: list = []

    def save(seeds, decoded):
        parts.append((list(seeds), decoded.detach().cpu().numpy()))
        if sum(len(p[0]) for p in parts) == len(dist.shard(c.seeds)):
            target.parent.mkdir(parents=True, exist_ok=True)
            name = target if dist.world == 1 else target.with_name(f"{target.stem}.rank{dist.rank}.npz")
            np.savez(name, seeds=np.concatenate([p[0] for p in parts]), samples=np.concatenate([p[1] for p in parts]))
    return save


def release_others(grid: Grid, c: GridCell) -> None:
    """Free the networks of every model this cell does not use (one big model in memory at a time)."""
    from bench.models import loaded
    needed = {grid.models[m].weights_key() for m in (c.model, c.distill_source) if m}
    for m in grid.models.values():
        key = m.weights_key()
        if key is not None and key not in needed and loaded.is_loaded(key):
            m.release()


def build_metrics(grid: Grid, cells) -> dict:
    """model -> {metric name: Metric} for the cells, built with the grid's metric options, on the model's device."""
    import bench.metrics
    out: dict = {}
    for c in cells:
        per_model = out.setdefault(c.model, {})
        for m in c.metrics:
            if m not in per_model:
                metric = bench.metrics.get(m, **c.metric_options.get(m, {}))
                metric.device = str(getattr(grid.models[c.model], "device", "cpu"))
                per_model[m] = metric
    return out


def requirements(grid: Grid) -> list[tuple[str, object]]:
    """(who needs it, Requirement) for every model, metric and distillation of the grid's cells."""
    import bench.metrics
    out, seen = [], set()

    def add(who, reqs):
        for r in reqs:
            if (who, r.name) not in seen:
                seen.add((who, r.name))
                out.append((who, r))
    for c in grid.cells:
        model = grid.models[c.model]
        add(f"model {c.model}", model.requirements())
        for m in c.metrics:
            add(f"metric {m} on {c.model}", bench.metrics.get(m, **c.metric_options.get(m, {})).requirements(model))
        if c.row.kind == "distilled":
            source = c.distill_source
            add(f"model {source}", grid.models[source].requirements())
            add(f"distilling on {source}", grid.models[source].training_requirements())
            if c.row.distill.get("loss") == "inception":
                from bench.metrics.features import inception_requirement
                add(f"distilling on {source} (inception loss)", [inception_requirement()])
    return out


def check_requirements(grid: Grid) -> None:
    missing = [f"{who}: {r.missing_message()}" for who, r in requirements(grid) if not r.present]
    if missing:
        raise FileNotFoundError(f"grid {grid.name} cannot run here: " + "; ".join(missing))


def missing_packages(grid: Grid, cells) -> list[tuple[str, str]]:
    """(package, the extra that installs it) the cells' models and metrics need and this Python lacks."""
    import importlib.util

    import bench.metrics
    wanted = {}
    for c in cells:
        for name, extra in grid.models[c.model].packages:
            wanted.setdefault(name, extra)
        for m in c.metrics:
            for name, extra in bench.metrics.get(m, **c.metric_options.get(m, {})).packages:
                wanted.setdefault(name, extra)
    return [(n, e) for n, e in wanted.items() if importlib.util.find_spec(n) is None]


LOAD_ERRORS = (OSError, RuntimeError, ValueError, EOFError, KeyError, ImportError, AttributeError)


def preflight(grid: Grid, cells, metrics: dict) -> None:
    """Everything the cells need, before the first one: the Python packages (named with the extra that installs
    them), the files, every model's networks loaded and every metric's networks and files loaded and run on one
    batch. One line naming what failed."""
    import pickle
    lacking = missing_packages(grid, cells)
    if lacking:
        extras = sorted({e for _, e in lacking})
        raise InputError(f"grid {grid.name} needs the Python package(s) {', '.join(n for n, _ in lacking)}: "
                         + " and ".join(f"pip install -e '.[{e}]'" for e in extras))
    check_requirements(grid)
    for name in dict.fromkeys(c.model for c in cells):
        try:
            grid.models[name].preflight()
        except (*LOAD_ERRORS, pickle.UnpicklingError) as e:
            if isinstance(e, (InputError, FileNotFoundError)):
                raise
            raise InputError(f"model {name}: its networks do not load ({type(e).__name__}: "
                             f"{one_line(e)})") from None
        for metric_name, metric in metrics.get(name, {}).items():
            try:
                metric.preflight(grid.models[name])
            except (*LOAD_ERRORS, pickle.UnpicklingError) as e:
                if isinstance(e, (InputError, FileNotFoundError)):
                    raise
                raise InputError(f"metric {metric_name} on {name}: its files do not load ({type(e).__name__}: "
                                 f"{one_line(e)})") from None


def report_summary(grid: Grid, s: Summary) -> str:
    """The run's closing lines: what ran, the compact table of its cells, what failed, and what to do next."""
    from .summary import table
    lines = [table(grid, s.results_dir, s.run_id), ""]
    minutes = f"{s.wall / 60:.1f} min" if s.wall >= 90 else f"{s.wall:.1f} s"
    lines.append(f"{grid.name}: {s.cells} cells, {s.computed} computed in {minutes}"
                 + (f" ({s.distill_seconds:.0f} s distilling)" if s.distill_seconds else "")
                 + f", {s.cells - s.computed} already stored; {len(s.failed)} failed; torch threads {s.threads}; "
                 f"results in {s.results_dir}")
    for what, err in s.failed:
        lines.append(f"  FAILED {what}: {err}")
    if s.failed:
        lines.append("Rerun the failed cells with --retry-failed once their cause is fixed.")
    lines.append(f"Next: python -m bench report --results-dir {s.results_dir}   (tables, figures, HTML)")
    return "\n".join(lines)

