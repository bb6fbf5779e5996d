"""`bench run --dry-run`: the cells with their plans, what each needs, where and in which precision every model runs,
its weights' memory and the cost in network evaluations; nothing runs. The grid was loaded by the same code the run
uses (every plan, metric sample count and distillation setting is checked there)."""
from __future__ import annotations

from pathlib import Path

import torch

from bench.grid import Grid
from bench.store import Store
from bench.store.layout import Layout

from .runner import requirements


def dry_run(grid: Grid, results_dir: Path, out=print, device_memory: int | None = None, ranks: int = 1) -> int:
    """Print the plan of every cell and its status, and the memory plan of every distillation (on `device_memory`
    bytes per device, else the CUDA device's; `ranks` data-parallel processes); 1 if files are missing or a
    distillation cannot fit."""
    layout = Layout.of(results_dir)
    if grid.kind != "sampling":
        out(f"grid {grid.name} (kind {grid.kind}): hands its settings to bench.studies.{grid.kind}.run; writes "
            f"{layout.study(grid.name)} and its rows in {layout.db}")
        return 0
    stored = Store(results_dir) if layout.db.exists() else None
    out(f"grid {grid.name}: {grid.description}")
    out(f"{'model':<14} {'row':<26} {'NFE':>4} {'points':>6} {'schedule':<12} {'time':<5} {'samples':>8} "
        f"{'evaluations':>12}  status")
    total, todo, distils = 0, 0, set()
    for c in grid.cells:
        have = stored.stored(c.key) if stored is not None else {}
        done = all(k in have for k in c.metric_keys.values())
        status = "stored" if done else "to run"
        if not done:
            total += c.evaluations
            todo += 1
            if c.row.kind == "distilled":
                p = layout.solver(grid.name, c.distill_source, c.row.label, c.nfe)
                if not p.exists() and p not in distils:
                    distils.add(p)
                    status += f" (distils on {c.distill_source})"
        out(f"{c.model:<14} {c.row.describe():<26} {c.nfe:>4} {c.num_points:>6} {c.schedule:<12} {c.plan.time:<5} "
            f"{c.num_samples:>8} {c.evaluations:>12,}  {status}")
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
    if any("endpoint_error" in c.metrics for c in grid.cells):
        out(f"needs: reference solutions (computed once per model and cached in {layout.cache / 'reference'})")
    out(f"cost: {todo} of {len(grid.cells)} cells to run, {total:,} network evaluations for sampling"
        + (f", plus {len(distils)} distillations (teacher + training, see bench.distill)" if distils else ""))
    for who, r in missing:
        out(f"missing ({who}): {r.missing_message()}")
    unfit = memory_plans(grid, out, device_memory, ranks)
    if stored is not None:
        stored.close()
    return 1 if missing or unfit else 0


def memory_plans(grid: Grid, out, device_memory: int | None, ranks: int) -> int:
    """One line per distilled solver: its micro-batching, checkpointing and estimated peak on the device
    (bench.distill.memory, from the model's declared activation memory), or why it cannot fit; the count of those
    that cannot."""
    from bench.distill import losses, memory
    from solvers.errors import InputError
    unfit, seen = 0, set()
    for c in grid.cells:
        if c.row.kind != "distilled" or (c.distill_source, c.row.label, c.nfe) in seen:
            continue
        seen.add((c.distill_source, c.row.label, c.nfe))
        model = grid.models[c.distill_source]
        budget = device_memory
        if budget is None and torch.cuda.is_available() and torch.device(model.device).type == "cuda":
            budget = torch.cuda.get_device_properties(torch.device(model.device)).total_memory
        what = f"memory: {c.distill_source} / {c.row.label} at NFE {c.nfe}: "
        if budget is None or not model.activation_bytes:
            continue                                   # a CPU model: nothing to plan
        s = c.distill_settings or {}
        images = losses.reads_images(losses.get(s.get("distance", "mse"))[1]) if s.get("distance") in \
            losses.names() else False
        try:
            plan = memory.plan(int(s.get("batch_size", 16)) * int(s.get("accumulate", 1)), c.plan.calls,
                               model.activation_bytes, budget - model.weights_bytes(), ranks,
                               model.loss_bytes if images else 0, checkpoint=True if s.get("checkpoint") else None)
            out(what + plan.describe())
        except InputError as err:
            unfit += 1
            out(what + f"DOES NOT FIT: {err}")
    return unfit


def model_line(model) -> str:
    """Where and in which precision a model runs, and its weights' memory."""
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
