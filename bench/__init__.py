"""The benchmark harness: models, metrics, grids, the runner, results and reports.

Data flows one way: grid -> cells -> (distil) -> sample -> metric -> results -> report. The layers, lowest first:
solvers (the library) <- bench.stats, bench.models, bench.metrics <- bench.distill <- bench.grid <- bench.store <-
bench.run <- bench.report <- bench.commands; a lower layer never imports an upper one (tests/test_layers.py).

In a notebook, `bench.evaluate` runs one solver on one model through the same path as `bench run`:

    import bench
    df = bench.evaluate("ipndm", "gmm64", nfe=[3, 5], metrics=["endpoint_error"], afs=True)
    df[["nfe", "metric", "value", "ci_low", "ci_high"]]
"""
from __future__ import annotations

from .provenance import VERSION as __version__  # noqa: F401


def evaluate(solver, model: str, nfe, metrics=("endpoint_error",), *, num_samples: int = 1000, seed_start: int = 0,
             afs: bool = False, options: dict | None = None, distill: dict | None = None, schedule: str | None = None,
             model_options: dict | None = None, batch_size: int = 500, results_dir=None, progress: bool = False):
    """Evaluate `solver` (a registered name, a "file.py:Class" / "module:Class" spec, or a Solver subclass defined
    in an importable module or a notebook's __main__) on `model` at each NFE of `nfe`, with `metrics`; return the
    stored rows (one per NFE and metric, bench.store.schema.Result columns: value, ci_low, ci_high, ...).

    `distill = {...}` distils a learned solver per NFE (bench.distill options). Results go to `results_dir` (a run
    there resumes like `bench run`), by default a temporary folder removed afterwards."""
    import tempfile

    from .grid import from_dict
    from .run import run
    from .store.select import select
    name = solver if isinstance(solver, str) else f"{solver.__module__}:{solver.__qualname__}"
    row = {"name": name, "label": getattr(solver, "label", "") or name.rpartition(":")[2] or name, "afs": afs,
           "options": dict(options or {})}
    if distill is not None:
        row["distill"] = dict(distill)
    if schedule is not None:
        row["schedule"] = schedule
    raw = {"name": "evaluate", "nfe": list(nfe) if isinstance(nfe, (list, tuple)) else [nfe],
           "num_samples": num_samples, "seed_start": seed_start, "batch_size": batch_size,
           "models": [{"name": model, "metrics": list(metrics), "options": dict(model_options or {})}],
           "solvers": [row]}
    grid = from_dict(raw)
    tmp = tempfile.TemporaryDirectory(prefix="bench-evaluate-") if results_dir is None else None
    where = tmp.name if tmp is not None else results_dir
    try:
        summary = run(grid, where, progress=progress, out=lambda *_: None, command="bench.evaluate")
        return select(where, run=summary.run_id).rows.reset_index(drop=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
