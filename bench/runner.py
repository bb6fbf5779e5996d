"""The runner: grid -> cells -> (distil) -> sample -> metric -> results.

For each cell not yet stored: build the solver (distilling or loading a learned one), build the time grid that
spends exactly the cell's NFE, draw x_T = model.noise(seeds) (one generator per seed), sample in batches, decode,
gather every sample on rank 0, compute each metric on all of them, and store the cell in one transaction.

Under `torchrun --nproc_per_node=K`, each cell's seeds are split into K contiguous shards (gloo on CPU, nccl on
GPU); rank 0 alone distils, reduces metrics and writes. Samples do not depend on the batch size or the number of
processes, because every seed has its own generator. Ranks meet without timeouts and fail together (bench.dist).

Memory: a batch is sampled, decoded, and handed to each metric's `per_sample`, which keeps a few numbers per sample
(bench.metrics.base); decoded images are dropped with their batch, and ranks exchange those records, not images.
Every batch's denoiser calls are counted and checked against the cell's plan (bench.plan).
"""
from __future__ import annotations

import datetime
import importlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

import bench
from bench import dist as dist_mod
from bench import results as results_mod
from bench.grid import Grid, GridCell, canonical_hash, safe_filename


# ---- processes (bench.dist) --------------------------------------------------------------------------------------
Dist = dist_mod.Dist
init_distributed = dist_mod.init


# ---- provenance ------------------------------------------------------------------------------------------------
def code_version() -> str:
    """`git describe` of the source tree when it is a git checkout, else the package version."""
    root = Path(bench.__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=root, capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return bench.__version__


# ---- requirements and plans ------------------------------------------------------------------------------------
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
        if c.entry.distill is not None:
            source = c.entry.distill_from or c.model
            add(f"model {source}", grid.models[source].requirements())
            add(f"distilling on {source}", grid.models[source].training_requirements())
            if c.entry.distill.get("loss") == "inception":
                from bench.metrics.features import inception_requirement
                add(f"distilling on {source} (inception loss)", [inception_requirement()])
    return out


def check_requirements(grid: Grid) -> None:
    missing = [f"{who}: {r.missing_message()}" for who, r in requirements(grid) if not r.present]
    if missing:
        raise FileNotFoundError(f"grid {grid.name} cannot run here: " + "; ".join(missing))


def pending(grid: Grid, store: results_mod.Store, retry_failed: bool = False) -> list[GridCell]:
    """Cells with a metric not yet stored (or stored as failed, with retry_failed)."""
    todo = []
    for c in grid.cells:
        stored = store.stored(c.key)
        if any(m not in stored or (retry_failed and stored[m] != "ok") for m in c.metrics):
            todo.append(c)
    return todo


def solver_path(results_dir: Path, grid: str, model: str, label: str, nfe: int) -> Path:
    return Path(results_dir) / "solvers" / grid / safe_filename(model) / f"{safe_filename(label)}-nfe{nfe}.json"


def dry_run(grid: Grid, results_dir: Path, out=print) -> int:
    """Print the cells with their plans, what each needs, where and in which precision every model runs, its weights'
    memory and the cost in network evaluations; nothing runs. The grid was loaded by the same code the run uses
    (every plan, metric sample count and distillation settings are checked there). 1 if files are missing."""
    if grid.kind != "sampling":
        out(f"grid {grid.name} (kind {grid.kind}): hands its settings to bench.studies.{grid.kind}.run; "
            f"writes {Path(results_dir) / 'studies' / (grid.name + '.csv')}")
        return 0
    store_path = Path(results_dir) / results_mod.DB_NAME
    stored = results_mod.Store(results_dir) if store_path.exists() else None
    out(f"grid {grid.name}: {grid.description}")
    out(f"{'model':<14} {'solver':<26} {'NFE':>4} {'points':>6} {'schedule':<12} {'time':<5} {'samples':>8} "
        f"{'evaluations':>12}  status")
    total, todo, distils = 0, 0, set()
    for c in grid.cells:
        done = stored is not None and all(m in stored.stored(c.key) for m in c.metrics)
        status = "stored" if done else "to run"
        if not done:
            total += c.evaluations
            todo += 1
            if c.entry.distill is not None:
                src = c.entry.distill_from or c.model
                p = solver_path(results_dir, grid.name, src, c.entry.label, c.nfe)
                if not p.exists():
                    distils.add(p)
                    status += f" (distils {src})"
        out(f"{c.model:<14} {c.entry.label + (' +AFS' if c.entry.afs else ''):<26} {c.nfe:>4} {c.num_points:>6} "
            f"{c.schedule:<12} {c.plan.time:<5} {c.num_samples:>8} {c.evaluations:>12,}  {status}")
    for model, label, nfe, why in grid.skipped:
        out(f"skipped: {model} / {label} / NFE {nfe}: {why}")
    for name in dict.fromkeys(c.model for c in grid.cells):
        out(model_line(grid.models[name]))
    reqs = requirements(grid)
    missing = [(who, r) for who, r in reqs if not r.present]
    for who, r in reqs:
        out(f"needs ({who}): {r.name} at {r.path} [{'present' if r.present else 'MISSING'}]")
    if not reqs:
        out("needs: no files (every model and metric of this grid ships with the project)")
    metric_names = {m for c in grid.cells for m in c.metrics}
    if "endpoint_error" in metric_names:
        out("needs: reference ODE solutions (computed once per model and cached in <results_dir>/cache/reference)")
    out(f"cost: {todo} of {len(grid.cells)} cells to run, {total:,} network evaluations for sampling"
        + (f", plus {len(distils)} distillations (teacher + training, see bench.distill)" if distils else ""))
    for who, r in missing:
        out(f"missing ({who}): {r.missing_message()}")
    if stored is not None:
        stored.close()
    return 1 if missing else 0


def model_line(model) -> str:
    """Where and in which precision a model runs, and its weights' memory (activations are not estimated)."""
    dtype = str(getattr(model, "net_dtype", model.dtype)).replace("torch.", "")
    autocast = getattr(model, "autocast", None)
    prec = dtype + (f" weights, {autocast} autocast on CUDA" if autocast else "")
    mem = model.weights_bytes()
    size = f"{mem / 2**30:.1f} GiB of weights" if mem else "no network weights"
    fit = ""
    if mem and torch.cuda.is_available() and torch.device(model.device).type == "cuda":
        total = torch.cuda.get_device_properties(torch.device(model.device)).total_memory
        fit = f" of {total / 2**30:.0f} GiB on the device" + (" -- DOES NOT FIT" if mem > total else "")
    return f"model {model.name}: device {model.device}, {prec}, {size}{fit} (batch {model.batch_hint} for teachers)"


# ---- building solvers and grids --------------------------------------------------------------------------------
class Builder:
    """Solvers and time grids for cells; learned solvers are distilled (rank 0) or loaded, once per run."""

    def __init__(self, grid: Grid, results_dir: Path, dist: Dist, log=print):
        self.grid, self.results_dir, self.dist, self.log = grid, Path(results_dir), dist, log
        self._learned: dict[Path, object] = {}
        self.distill_seconds = 0.0

    def sigmas(self, c: GridCell) -> torch.Tensor:
        """The cell's grid (its plan's), in the variable the solver integrates in."""
        return torch.tensor(c.plan.sigmas, dtype=torch.float64)

    def problem(self, c: GridCell):
        """The cell's model in the plan's time variable (itself, or its flow-time view)."""
        return self.grid.models[c.model].view(c.plan.time)

    def solver(self, c: GridCell):
        import solvers
        e = c.entry
        model = self.grid.models[c.model]
        if e.floor is not None:
            return None                                  # a noise-floor row samples its source, not a solver
        if e.released:
            from baselines import released_solver
            return released_solver(model.released_key, c.nfe, kind=e.name)
        if e.distill is not None:
            return self.distilled(c)
        cls = solvers.solver_class(e.name)
        if cls.learned and not any(k in e.options for k in cls.parameter_options):
            return cls.untrained(c.num_points, e.afs, **e.options)       # its official initialisation
        return solvers.get(e.name, **e.options)

    def distilled(self, c: GridCell):
        """Rank 0 distils (or loads a matching saved solver) while the other ranks wait in `Dist.sync`, without
        a timeout; a failed distillation ends every rank with its message."""
        import solvers
        e = c.entry
        source_name = e.distill_from or c.model
        source = self.grid.models[source_name].view(c.plan.time)
        sigmas = list(c.plan.source_sigmas)
        options = dict(e.distill)
        seed = options.pop("seed", 0)
        settings = {"model": source_name, "model_options": c.model_options if source_name == c.model else {},
                    "afs": e.afs, "seed": seed, "options": options, "sigmas": sigmas}
        if c.plan.time != "sigma":
            settings["time"] = c.plan.time
        digest = canonical_hash(settings)
        path = solver_path(self.results_dir, self.grid.name, source_name, e.label, c.nfe)
        if path in self._learned:
            return self._learned[path]
        error, state = None, None
        if self.dist.main:
            solver = _load_matching(path, digest)
            if solver is None:
                from bench.distill import distill
                self.log(f"distilling {e.label} for {source_name} at NFE {c.nfe} ...")
                t0 = time.perf_counter()
                try:
                    solver = distill(e.name, source, sigmas, afs=e.afs, seed=seed,
                                     cache_dir=self.results_dir / "cache", **options)
                except (ValueError, FileNotFoundError) as err:     # bad input: reported to every rank
                    error = f"distilling {e.label} for {source_name} at NFE {c.nfe} failed: {err}".splitlines()[0]
                else:
                    seconds = time.perf_counter() - t0
                    self.distill_seconds += seconds
                    solver.metadata["harness"] = {"settings_hash": digest, "grid": self.grid.name,
                                                  "model": source_name, "label": e.label, "nfe": c.nfe,
                                                  "distill_seconds": seconds}
                    record = sample_grids(solver, source, sigmas, e.afs, list(c.seeds)[:SAMPLE_GRIDS])
                    if record is not None:
                        solver.metadata["sample_grids"] = record
                    solver.save(path)
            state = solvers.state_of(solver) if error is None else None
        self.dist.sync(error)                          # the other ranks wait here, without a timeout
        state = self.dist.broadcast(state)             # (no shared file system needed between nodes)
        if not self.dist.main:
            solver = solvers.from_state(state)
        self._learned[path] = solver
        return solver


SAMPLE_GRIDS = 256      # per-sample grids recorded beside a distilled solver that predicts them (report figure)


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


def _load_matching(path: Path, digest: str):
    """The saved solver at `path` if it was distilled with the same settings, else None."""
    import solvers
    if not path.exists():
        return None
    try:
        solver = solvers.load(path)
    except (ValueError, KeyError):
        return None
    return solver if solver.metadata.get("harness", {}).get("settings_hash") == digest else None


# ---- one cell --------------------------------------------------------------------------------------------------
class BudgetError(RuntimeError):
    """A solver spent another number of denoiser calls than its cell's plan."""


def sample_batches(c: GridCell, problem, solver, seeds, batch_size: int, cache_dir=None):
    """Sample `seeds` batch by batch; yield each batch as a `Cell` for the metrics: decoded samples and final
    states in the base model's variables, the base grid. Counts every batch's denoiser calls against the
    plan (BudgetError); NonFiniteError propagates. Metrics that need x_T draw it from the seeds themselves.""" 
    from bench.models.base import Cell
    from solvers import CountingDenoiser
    model = problem.base
    sigmas = torch.tensor(c.plan.sigmas, dtype=torch.float64)
    base_sigmas = sigmas if problem is model else _base_sigmas(sigmas)
    if c.entry.floor is not None:                    # a noise floor: the source's samples at the cell's seeds
        whole = model.floor_samples(c.entry.floor, list(c.seeds), float(sigmas[0]), float(sigmas[-1]), cache_dir)
        rows = {s: i for i, s in enumerate(c.seeds)}
    for i in range(0, len(seeds), batch_size):
        batch = seeds[i:i + batch_size]
        if c.entry.floor is not None:
            final = whole[[rows[int(s)] for s in batch]].to(device=model.device)
            yield Cell(model=model, samples=model.decode(final), sigmas=base_sigmas, seeds=batch, final=final,
                       cell_seeds=c.seeds, cache_dir=None if cache_dir is None else str(cache_dir))
            continue
        cond = problem.conditions(batch)
        den = CountingDenoiser(problem.denoiser(cond), c.plan.evals_per_call)
        with torch.no_grad():
            x = solver.sample(den, problem.noise(batch), sigmas, afs=c.entry.afs)
            if den.calls != c.plan.calls:
                raise BudgetError(f"{c.describe()}: the solver made {den.calls} denoiser calls per sample "
                                  f"({den.evaluations} network evaluations), but the cell is labelled NFE {c.nfe} "
                                  f"({c.plan.calls} calls on its {c.num_points}-point grid)")
            final = problem.to_base(x)
            decoded = model.decode(final)
        yield Cell(model=model, samples=decoded, sigmas=base_sigmas, seeds=batch,
                   conditions=cond, final=final, cell_seeds=c.seeds, cache_dir=None if cache_dir is None
                   else str(cache_dir))


def _base_sigmas(t: torch.Tensor) -> torch.Tensor:
    from solvers import flow
    return flow.edm_sigma(t)


def run_cell(c: GridCell, problem, solver, metrics: dict, dist: Dist, cache_dir: Path):
    """Sample a cell (sharded over ranks), keeping each metric's per-sample records; on rank 0 reduce them to an
    estimate with its interval (over the cell's seed-set replicas): {metric: (Estimate or None, error)}. Ranks
    meet in `dist.sync` first, so a rank's unexpected failure ends them all."""
    from bench.models.base import Cell
    from solvers import NonFiniteError
    records = {m: [] for m in c.metrics}
    errors: dict[str, str] = {}
    failure = None
    unexpected = None
    try:
        for batch in sample_batches(c, problem, solver, dist.shard(c.seeds), c.batch_size, cache_dir):
            for m in c.metrics:
                if m in errors:
                    continue
                try:
                    records[m].append(metrics[m].per_sample(batch).detach().cpu())
                except (ValueError, FloatingPointError, RuntimeError) as e:
                    errors[m] = f"{m} failed: {e}"
    except (NonFiniteError, BudgetError) as e:
        failure = str(e)
    except Exception as e:                          # a bug or a broken model: every rank ends with its message
        unexpected = e
    try:
        dist.sync(None if unexpected is None else f"{type(unexpected).__name__}: {unexpected}".splitlines()[0])
    except dist_mod.RankFailed:
        if unexpected is not None:
            raise unexpected                          # this rank's own error keeps its traceback
        raise
    part = (failure, errors, {m: torch.cat(r) if r else None for m, r in records.items()})
    parts = dist.gather(part)
    if not dist.main:
        return None
    failures = [p[0] for p in parts if p[0]]
    if failures:
        return {m: (None, failures[0]) for m in c.metrics}
    model = problem.base
    whole = Cell(model=model, samples=None, sigmas=torch.tensor(c.plan.sigmas, dtype=torch.float64),
                 seeds=list(c.seeds), cache_dir=str(cache_dir))
    out = {}
    for m in c.metrics:
        err = next((p[1][m] for p in parts if m in p[1]), None)
        if err is not None:
            out[m] = (None, err)
            continue
        try:
            est = metrics[m].estimate(torch.cat([p[2][m] for p in parts if p[2][m] is not None]), whole,
                                      c.replicas)
            out[m] = (est, "") if math.isfinite(est.value) else (
                None, f"{m} is {est.value} (non-finite samples statistics)")
        except (ValueError, FloatingPointError, RuntimeError) as e:
            out[m] = (None, f"{m} failed: {e}")
    return out


def cell_rows(c: GridCell, values: dict, prov: dict, wall: float, world: int, metrics: dict) -> list[dict]:
    """The stored rows of a cell: per metric its estimate and interval, with what the report needs to read it
    (direction, labels, family, paper key) and provenance."""
    e = c.entry
    distilled_on = (e.distill_from or c.model) if e.distill is not None else (
        f"released:{prov['released_key']}" if e.released else "")
    options = dict(e.options)
    if e.distill is not None:
        options["distill"] = e.distill
    if e.distill_from:
        options["distill_from"] = e.distill_from
    if e.released:
        options["released"] = True
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if e.floor is not None:
        options = {"floor": e.floor}
    return [{
        "grid": c.grid, "model": c.model, "solver": e.name, "label": e.label, "family": e.family,
        "paper_method": e.paper_method or "", "options": json.dumps(options, sort_keys=True), "nfe": c.nfe,
        "afs": e.afs, "schedule": c.schedule,
        "metric": m, "value": est.value if est else math.nan, "status": "ok" if not err else "failed", "error": err,
        "ci_low": est.low if est else math.nan, "ci_high": est.high if est else math.nan,
        "ci_method": est.method if est else "", "replicas": c.replicas,
        "higher_is_better": bool(metrics[m].higher_is_better), "metric_label": metrics[m].label or m,
        "paper_key": prov.get("released_key") or "", "instance_of": c.instance_of,
        "num_samples": c.num_samples, "seeds": c.seeds_text, "distilled_on": distilled_on,
        "code_version": prov["code_version"], "config_hash": prov["config_hash"], "cell_key": c.key,
        "torch_version": torch.__version__, "device": prov["device"], "world_size": world, "wall_time": wall,
        "created_at": now,
    } for m, (est, err) in values.items()]


# ---- the run ---------------------------------------------------------------------------------------------------
def run(grid: Grid, results_dir: str | Path = "results", progress: bool = True, retry_failed: bool = False,
        out=print) -> int:
    """Run every pending cell of `grid`, storing results in `results_dir`; returns the number of cells run."""
    results_dir = Path(results_dir)
    dist = init_distributed()
    if grid.kind != "sampling":
        if dist.main:
            importlib.import_module(f"bench.studies.{grid.kind}").run(grid.raw, results_dir)
        dist.sync()
        return 0
    check_requirements(grid)
    store = results_mod.Store(results_dir) if dist.main else None
    todo_keys = dist.broadcast([c.key for c in pending(grid, store, retry_failed)] if dist.main else None)
    todo = [c for c in grid.cells if c.key in set(todo_keys)]
    if dist.main and len(todo) < len(grid.cells):
        out(f"{len(grid.cells) - len(todo)} of {len(grid.cells)} cells already stored in {results_dir}; "
            f"running {len(todo)}")
    metrics = build_metrics(grid, todo)
    bar = _progress(len(todo), dist.main and progress)
    log = (lambda s: _write_progress(s, bar)) if progress else out
    builder = Builder(grid, results_dir, dist, log=log)
    prov = {"code_version": code_version(), "config_hash": grid.config_hash}
    done_samples, t_start = 0, time.perf_counter()
    try:
        with dist.guard():
            for c in todo:
                model = grid.models[c.model]
                release_others(grid, c)
                solver = builder.solver(c)
                t0 = time.perf_counter()
                values = run_cell(c, builder.problem(c), solver, metrics[c.model], dist, results_dir / "cache")
                wall = time.perf_counter() - t0
                if dist.main:
                    prov.update(device=str(getattr(model, "device", "cpu")), released_key=model.released_key)
                    store.write_cell(cell_rows(c, values, prov, wall, dist.world, metrics[c.model]),
                                     replace=retry_failed)
                    failed = [err for _, err in values.values() if err]
                    if failed:
                        log(f"cell {c.describe()} failed: {failed[0]}")
                    done_samples += c.num_samples
                    if bar is not None:
                        bar.set_postfix_str(f"{done_samples / (time.perf_counter() - t_start):,.0f} samples/s")
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if store is not None:
            store.close()
    if dist.main:
        out(summary_table(grid, results_dir))
        if todo:
            out(f"\n{len(todo)} cells in {time.perf_counter() - t_start:.1f} s wall time"
                f" (distillation {builder.distill_seconds:.1f} s); results in {results_dir}")
    dist.sync()
    return len(todo)


def release_others(grid: Grid, c: GridCell) -> None:
    """Free the networks of every model this cell does not use (one big model in memory at a time)."""
    from bench.models import loaded
    needed = {grid.models[m].weights_key() for m in (c.model, c.entry.distill_from) if m}
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


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="cell", desc="cells", dynamic_ncols=True, file=sys.stderr)


def _write_progress(msg: str, bar) -> None:
    if bar is None:
        print(msg)
    else:
        from tqdm.auto import tqdm
        tqdm.write(msg, file=sys.stderr)


def summary_table(grid: Grid, results_dir: Path) -> str:
    """A compact table of the grid's stored cells: one block per (model, metric), solvers × NFE, each value with
    the half-width of its 95 % interval; a noise-floor row (NFE 0) sits in its own column."""
    from bench.stats import format_interval
    df = results_mod.load(results_dir)
    keys = {c.key for c in grid.cells}
    df = df[df["cell_key"].isin(keys)]
    if df.empty:
        return "no results stored for this grid"
    df = df.assign(solver_label=df["label"] + df["afs"].map({True: " +AFS", False: ""}),
                   shown=[format_interval(v, lo, hi) or f"{v:.4g}" if st == "ok" else "failed"
                          for v, lo, hi, st in zip(df["value"], df["ci_low"], df["ci_high"], df["status"])])
    blocks = []
    order = list(dict.fromkeys(c.entry.label + (" +AFS" if c.entry.afs else "") for c in grid.cells))
    for (model, metric), part in df.groupby(["model", "metric"], sort=False):
        table = part.pivot_table(index="solver_label", columns="nfe", values="shown", aggfunc="first")
        table = table.reindex([o for o in order if o in table.index]).fillna("-")   # "-": no such cell
        better = "higher" if part["higher_is_better"].iloc[0] else "lower"
        blocks.append(f"{model} · {metric} ({better} is better; ± 95 % interval)\n{table.to_string()}")
    return "\n\n".join(blocks)
