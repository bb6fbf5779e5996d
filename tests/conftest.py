"""Shared test helpers: synthetic stored results written the way a run writes them (rows + the run that covers
them), so report and check tests exercise the same selection as real runs."""
from __future__ import annotations

import math
from dataclasses import fields

from bench.store import Result, Store

DEFAULTS = dict(metric_key="", kind="handcrafted", paper_method="", metric_label="", metric_options="{}",
                higher_is_better=False, status="ok", error="", ci_low=math.nan, ci_high=math.nan, ci_method="",
                replicas=1, num_samples=10, seeds="0-9", paper_key="", instance_of="", distilled_on="", solver_key="",
                code_hash="c", code_version="t", config_hash="h", torch_version="2.13.0", device="cpu",
                world_size=1, wall_time=0.1, created_at="2026-11-22T00:00:00", run_id="", options="{}",
                schedule="polynomial", afs=True, family="handcrafted", solver="ipndm")


def result(**values) -> Result:
    """A Result from keyword values (defaults above; metric_key = metric, metric_label = metric)."""
    names = {f.name for f in fields(Result)}
    out = {**DEFAULTS, **{k: v for k, v in values.items() if k in names}}
    out["metric_key"] = out["metric_key"] or out["metric"]
    out["metric_label"] = out["metric_label"] or out["metric"]
    if not isinstance(out["value"], float) or not math.isfinite(out["value"]):
        out["status"] = values.get("status", "failed")
    return Result(**out)


def store_rows(path, rows, config=None) -> str:
    """Write `rows` (dicts or Results) as one run per grid, as `bench run` would; returns the last run id."""
    items = [r if isinstance(r, Result) else result(**r) for r in rows]
    run_id = ""
    with Store(path) as s:
        for grid in dict.fromkeys(r.grid for r in items):
            mine = [r for r in items if r.grid == grid]
            run_id = s.begin_run(grid, config or {}, "test", "t", 1, 1, [(r.cell_key, r.metric_key) for r in mine])
            for r in mine:
                r.run_id = run_id
                s.write_cell([r])
            s.finish_run(run_id, "finished", len(mine), 0, 0.0)
    return run_id
