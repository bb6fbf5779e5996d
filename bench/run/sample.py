"""One cell: sample its seeds batch by batch (sharded over ranks), keep each metric's per-sample records, reduce them
on rank 0 to an estimate with its interval, and build the rows the store keeps.

Each batch draws x_T = model.noise(seeds) (one generator per seed, so a sample never depends on the batch size or
the number of processes), samples on the plan's grid with the plan's AFS, and counts its denoiser calls against the
plan (BudgetError). A metric that fails on a batch ends that metric at once (its cell is stored as failed for it),
and a cell whose every metric has failed stops sampling: a broken metric file never costs a whole 50k-sample cell.
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from bench.grid import GridCell
from bench.store import Result, score_row

from . import dist as dist_mod
from .dist import Dist


class BudgetError(RuntimeError):
    """A solver spent another number of denoiser calls than its cell's plan."""


def sample_batches(c: GridCell, problem, solver, seeds, batch_size: int, cache_dir=None, save=None):
    """Sample `seeds` batch by batch; yield each batch as a `Cell` for the metrics: decoded samples and final
    states in the base model's variables, the base grid. `save(seeds, decoded)` receives every batch
    (`--save-samples`). NonFiniteError propagates."""
    from bench.models.base import Cell
    from solvers import CountingDenoiser
    model = problem.base
    sigmas = torch.tensor(c.plan.sigmas, dtype=torch.float64)
    base_sigmas = sigmas if problem is model else _base_sigmas(sigmas)
    cache = None if cache_dir is None else str(cache_dir)
    if c.row.kind == "floor":                        # a noise floor: the source's samples at the cell's seeds
        whole = model.floor_samples(c.row.source, list(c.seeds), float(sigmas[0]), float(sigmas[-1]), cache_dir)
        rows = {s: i for i, s in enumerate(c.seeds)}
    for i in range(0, len(seeds), batch_size):
        batch = seeds[i:i + batch_size]
        if c.row.kind == "floor":
            final = whole[[rows[int(s)] for s in batch]].to(device=model.device)
            decoded, cond = model.decode(final), None
        else:
            cond = problem.conditions(batch)
            den = CountingDenoiser(problem.denoiser(cond), c.plan.evals_per_call)
            with torch.no_grad():
                x = solver.sample(den, problem.noise(batch), sigmas, afs=c.plan.afs)
                if den.calls != c.plan.calls:
                    raise BudgetError(f"{c.describe()}: the solver made {den.calls} denoiser calls per sample "
                                      f"({den.evaluations} network evaluations), but the cell is labelled NFE "
                                      f"{c.nfe} ({c.plan.calls} calls on its {c.num_points}-point grid)")
                final = problem.to_base(x)
                decoded = model.decode(final)
        if save is not None:
            save(batch, decoded)
        yield Cell(model=model, samples=decoded, sigmas=base_sigmas, seeds=batch, conditions=cond, final=final,
                   cell_seeds=c.seeds, cache_dir=cache)


def _base_sigmas(t: torch.Tensor) -> torch.Tensor:
    from solvers import flow
    return flow.edm_sigma(t)


def run_cell(c: GridCell, problem, solver, metrics: dict, dist: Dist, cache_dir, save=None):
    """Sample a cell (sharded over ranks), keeping each metric's per-sample records; on rank 0 reduce them to an
    estimate with its interval: {metric: (Estimate or None, error, per-sample scores or None)}. Ranks meet in
    `dist.sync` first, so a rank's unexpected failure ends them all."""
    from solvers import NonFiniteError
    records = {m: [] for m in c.metrics}
    errors: dict[str, str] = {}
    failure, unexpected = None, None
    try:
        for batch in sample_batches(c, problem, solver, dist.shard(c.seeds), c.batch_size, cache_dir, save):
            for m in c.metrics:
                if m in errors:
                    continue
                try:
                    records[m].append(metrics[m].per_sample(batch).detach().cpu())
                except (ValueError, FloatingPointError, RuntimeError, OSError) as e:
                    errors[m] = f"{m} failed: {e}".splitlines()[0]
            if len(errors) == len(c.metrics):
                break                                 # every metric failed: sampling further is wasted
    except (NonFiniteError, BudgetError) as e:
        failure = str(e)
    except torch.cuda.OutOfMemoryError as e:         # this cell fails; the run goes on to the next
        torch.cuda.empty_cache()
        failure = (f"ran out of device memory sampling batches of {c.batch_size} (lower the grid's batch_size): "
                   f"{str(e).splitlines()[0]}")
    except Exception as e:                          # a bug or a broken model: every rank ends with its message
        unexpected = e
    try:
        dist.sync(None if unexpected is None else f"{type(unexpected).__name__}: {unexpected}".splitlines()[0])
    except dist_mod.RankFailed:
        if unexpected is not None:
            raise unexpected from None                # this rank's own error keeps its traceback
        raise
    parts = dist.gather((failure, errors, {m: torch.cat(r) if r else None for m, r in records.items()}))
    if not dist.main:
        return None
    return _reduce(c, problem.base, metrics, parts, cache_dir)


def _reduce(c: GridCell, model, metrics: dict, parts: list, cache_dir) -> dict:
    from bench.models.base import Cell
    failures = [p[0] for p in parts if p[0]]
    if failures:
        return {m: (None, failures[0], None) for m in c.metrics}
    whole = Cell(model=model, samples=None, sigmas=torch.tensor(c.plan.sigmas, dtype=torch.float64),
                 seeds=list(c.seeds), cache_dir=str(cache_dir))
    out = {}
    for m in c.metrics:
        err = next((p[1][m] for p in parts if m in p[1]), None)
        if err is not None:
            out[m] = (None, err, None)
            continue
        recs = torch.cat([p[2][m] for p in parts if p[2][m] is not None])
        try:
            est = metrics[m].estimate(recs, whole, c.replicas)
        except (ValueError, FloatingPointError, RuntimeError) as e:
            out[m] = (None, f"{m} failed: {e}".splitlines()[0], None)
            continue
        if not math.isfinite(est.value):
            out[m] = (None, f"{m} is {est.value} (non-finite sample statistics)", None)
            continue
        out[m] = (est, "", metrics[m].sample_values(recs))
    return out


def cell_results(c: GridCell, values: dict, prov: dict, wall: float, world: int, metrics: dict) -> tuple[list, list]:
    """The stored rows of a cell (per metric its estimate and interval, with what the report needs to read it:
    direction, labels, family, paper key, and provenance) and its per-sample score rows."""
    from bench.metrics import identity
    r = c.row
    distilled_on = c.distill_source or (f"released:{prov['released_key']}" if r.kind == "released" else "")
    keys = c.metric_keys
    results, scores = [], []
    for m, (est, err, per_sample) in values.items():
        results.append(Result(
            cell_key=c.key, metric_key=keys[m], grid=c.grid, model=c.model, solver=r.name, label=r.label,
            family=r.family, kind=r.kind, paper_method=r.paper_method or "",
            options=json.dumps(r.stored_options(), sort_keys=True), nfe=c.nfe, afs=c.plan.afs, schedule=c.schedule,
            metric=m, metric_label=metrics[m].label or m,
            metric_options=json.dumps(identity(m, c.metric_options.get(m, {}))["options"], sort_keys=True,
                                      default=str),
            higher_is_better=bool(metrics[m].higher_is_better), value=est.value if est else math.nan,
            status="ok" if not err else "failed", error=err, ci_low=est.low if est else math.nan,
            ci_high=est.high if est else math.nan, ci_method=est.method if est else "", replicas=c.replicas,
            num_samples=c.num_samples, seeds=c.seeds_text, paper_key=prov.get("released_key") or "",
            instance_of=c.instance_of, distilled_on=distilled_on, solver_key=prov.get("solver_key", ""),
            code_hash=r.identity().get("code", ""), code_version=prov["code_version"],
            config_hash=prov["config_hash"], torch_version=torch.__version__, device=prov["device"],
            world_size=world, wall_time=wall, created_at=prov["now"], run_id=prov["run_id"]))
        if per_sample is not None and not err:
            scores.append(score_row(c.key, keys[m], list(c.seeds), np.asarray(per_sample, dtype=np.float64)))
    return results, scores
