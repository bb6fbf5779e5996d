"""A grid's raw dict -> its models, rows and cells, every value checked before any work starts.

The order of the work: the top-level values, the models (and their problem instances, metrics, sample counts,
floors), the rows (bench.grid.rows), then one cell per model × row × NFE with its plan (bench.plan) and, for a
distilled row, its distillation validated on the cell's own grid by bench.distill's own checks; then the noise-floor
cells. Two rows of one model with the same identity (all but the label) are refused, naming both labels.
"""
from __future__ import annotations

from solvers.errors import InputError

from . import rows as row_kinds
from . import schema
from .cells import Grid, GridCell

MAX_NFE = 10_000         # a budget above this would need a grid too large to hold


def expand(grid: Grid) -> None:
    """Fill `grid.models`, `grid.rows` and `grid.cells` from `grid.raw` (a sampling grid)."""
    raw = grid.raw
    schema.unknown(raw, schema.TOP_KEYS, f"grid {grid.name}")
    top = _top(raw, grid.name)
    specs, bases = _models(grid, top)
    grid.rows = _rows(grid, raw.get("solvers"), bases)
    _check_ratios(raw.get("ratios", []), grid)
    for r in grid.rows:
        if isinstance(r, row_kinds.Distilled) and r.distill_from is not None and r.distill_from not in grid.models:
            import bench.models
            grid.models[r.distill_from] = bench.models.get(r.distill_from)
    for spec in specs:
        for r in grid.rows:
            if r.models is None or spec["name"] in r.models:
                grid.cells += _cells(grid, spec, r, top)
        grid.cells += _floor_cells(grid, spec, top["seed_start"])
    _refuse_duplicates(grid)
    if not grid.cells:
        raise InputError(f"grid {grid.name} has no cells to run (every cell was skipped as unreachable)")


def _top(raw: dict, gname: str) -> dict:
    where = f"grid {gname}"
    nfes = schema.int_list(raw.get("nfe"), where)
    if max(nfes) > MAX_NFE:
        raise InputError(f"{where}: NFE {max(nfes)} is above {MAX_NFE:,} network evaluations per sample")
    out = {"nfe": nfes, "num_samples": schema.positive_int(raw.get("num_samples", 1000), f"{where}: num_samples"),
           "batch_size": schema.positive_int(raw.get("batch_size", 500), f"{where}: batch_size"),
           "seed_start": schema.non_negative_int(raw.get("seed_start", 0), f"{where}: seed_start"),
           "skip": schema.boolean(raw.get("skip_unreachable", False), f"{where}: skip_unreachable")}
    if "threads" in raw:
        schema.positive_int(raw["threads"], f"{where}: threads")
    return out


# ---- models ------------------------------------------------------------------------------------------------------
def _models(grid: Grid, top: dict) -> tuple[list[dict], dict[str, list[str]]]:
    """Every model (and problem instance) of the grid as a spec of its cells' settings; and, per registered model,
    its keys in the grid."""
    import bench.models
    tables = grid.raw.get("models")
    if not isinstance(tables, list) or not tables:
        raise InputError(f"grid {grid.name}: needs at least one [[models]] table; models: "
                         f"{', '.join(bench.models.names())}")
    specs, bases = [], {}
    for i, mt in enumerate(tables):
        where = f"grid {grid.name}, models[{i}]"
        if not isinstance(mt, dict) or "name" not in mt:
            raise InputError(f"{where}: needs name = one of {', '.join(bench.models.names())}")
        schema.unknown(mt, schema.MODEL_KEYS, where)
        mname = mt["name"]
        if mname not in bench.models.names():
            raise InputError(f"{where}: unknown model {mname!r}; accepted: {', '.join(bench.models.names())}")
        options = schema.table(mt.get("options", {}), f"{where}: options")
        instances = mt.get("instances")
        if instances is not None and (not isinstance(instances, list) or not instances
                                      or not all(isinstance(x, dict) and x for x in instances)):
            raise InputError(f"{where}: instances must be a non-empty list of option tables, one per problem "
                             "instance, e.g. instances = [{ seed = 1 }, { seed = 2 }]")
        keyed = _instances(mname, options, instances) if instances else [(mname, options)]
        for key, opts in keyed:
            if key in grid.models:
                raise InputError(f"{where}: model {key!r} is listed twice")
            try:
                grid.models[key] = bench.models.get(mname, **opts)
            except TypeError as err:
                raise InputError(f"{where}: model {mname} does not take options {opts}: {err}") from None
            specs.append(_model_spec(grid, mt, key, opts, mname if instances else "", where, top))
        bases.setdefault(mname, []).extend(k for k, _ in keyed)
    return specs, bases


def _instances(name: str, options: dict, instances: list) -> list[tuple[str, dict]]:
    """(key, options) per problem instance: the model's options overridden by the instance's, keyed
    "<model>@k=v,..." (the name the store and the report use; the results layout makes it a safe folder name)."""
    return [(f"{name}@" + ",".join(f"{k}={v}" for k, v in inst.items()), {**options, **inst}) for inst in instances]


def _model_spec(grid: Grid, mt: dict, key: str, options: dict, instance_of: str, where: str, top: dict) -> dict:
    """One model (or problem instance) of the grid: its metrics, sample counts, replicas and floors, checked."""
    import bench.metrics
    raw = grid.raw
    metrics = mt.get("metrics", raw.get("metrics"))
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise InputError(f"{where}: metrics must be a non-empty list; accepted: {', '.join(bench.metrics.names())}")
    n_samples = schema.positive_int(mt.get("num_samples", top["num_samples"]), f"{where}: num_samples")
    n_replicas = schema.positive_int(mt.get("replicas", raw.get("replicas", 1)), f"{where}: replicas")
    model = grid.models[key]
    floors = mt.get("floors", raw.get("floors", []))
    schema.strings(floors, f"{where}: floors", ", ".join(model.floor_sources) or "(none)")
    for f in floors:
        model.check_floor(f, n_samples * n_replicas)
    metric_options = _metric_options(raw.get("metric_options", {}), mt.get("metric_options", {}), where)
    stray = sorted(set(metric_options) - set(metrics))
    if stray:
        raise InputError(f"{where}: metric_options names {', '.join(map(repr, stray))}, which this model does not "
                         f"score; its metrics: {', '.join(metrics)}")
    for m in metrics:
        _check_metric(m, metric_options.get(m, {}), model, n_samples, where)
    nfe = schema.int_list(mt["nfe"], where) if "nfe" in mt else top["nfe"]
    if max(nfe) > MAX_NFE:
        raise InputError(f"{where}: NFE {max(nfe)} is above {MAX_NFE:,} network evaluations per sample")
    return {"name": key, "instance_of": instance_of, "options": options, "metrics": metrics,
            "metric_options": metric_options, "nfe": nfe, "num_samples": n_samples,
            "batch_size": schema.positive_int(mt.get("batch_size", top["batch_size"]), f"{where}: batch_size"),
            "replicas": n_replicas, "floors": floors}


def _metric_options(top: dict, model_level: dict, where: str) -> dict:
    """metric name -> options: the grid's metric_options table, overridden per model."""
    out = {}
    for t in (top, model_level):
        if not isinstance(t, dict) or not all(isinstance(v, dict) for v in t.values()):
            raise InputError(f"{where}: metric_options must map metric names to tables of options, "
                             "e.g. metric_options = { fid = { num_samples = 1000 } }")
        for k, v in t.items():
            out[k] = {**out.get(k, {}), **v}
    return out


def _check_metric(name: str, options: dict, model, num_samples: int, where: str) -> None:
    """The metric exists, takes these options, supports the model, and can score the cell's sample count."""
    import bench.metrics
    if name not in bench.metrics.names():
        raise InputError(f"{where}: unknown metric {name!r}; accepted: {', '.join(bench.metrics.names())}")
    metric = bench.metrics.build(name, options, where)
    if not metric.supports(model):
        ok = [n for n in bench.metrics.names() if bench.metrics.get(n).supports(model)]
        raise InputError(f"{where}: metric {name!r} does not support model {model.name!r}; "
                         f"accepted for it: {', '.join(ok) or '(none)'}")
    if num_samples < metric.min_samples:
        raise InputError(f"{where}: metric {name!r} ({metric.label}) needs at least {metric.min_samples} samples per "
                         f"cell, but the cells of {model.name!r} draw {num_samples}")
    if metric.num_samples is not None and metric.num_samples != num_samples:
        raise InputError(f"{where}: metric {name!r} ({metric.label}) scores exactly {metric.num_samples} samples, but "
                         f"the cells of {model.name!r} draw {num_samples}; name the metric of that size (e.g. "
                         f"fid_30k) or set metric_options = {{ {name} = {{ num_samples = {num_samples} }} }}")


# ---- rows and cells ----------------------------------------------------------------------------------------------
def _rows(grid: Grid, tables, bases: dict) -> list:
    import bench.models
    import solvers
    if not isinstance(tables, list) or not tables:
        raise InputError(f"grid {grid.name}: needs at least one [[solvers]] table; solvers: "
                         f"{', '.join(solvers.names())}")
    out, labels = [], {}                                  # label -> the models it already names
    defaults = {"schedule": grid.raw.get("schedule"), "time": grid.raw.get("time", "sigma")}
    for i, table in enumerate(tables):
        where = f"grid {grid.name}, solvers[{i}]"
        row = row_kinds.parse(table, defaults, where)
        if isinstance(row, row_kinds.Distilled):
            if row.distill_from is not None and row.distill_from not in bench.models.names():
                raise InputError(f"{where}: distill_from names unknown model {row.distill_from!r}; "
                                 f"accepted: {', '.join(bench.models.names())}")
            _check_distill_options(row, where)
        if row.models is not None:
            if not isinstance(row.models, list) or any(m not in grid.models and m not in bases for m in row.models):
                raise InputError(f"{where}: models = {row.models!r} must list models of this grid: "
                                 f"{', '.join(dict.fromkeys([*bases, *grid.models]))} (a model's name covers "
                                 "all its instances)")
            row.models = list(dict.fromkeys(k for m in row.models for k in bases.get(m, [m])))
        covered = set(row.models if row.models is not None else grid.models)
        if covered & labels.get(row.label, set()):
            raise InputError(f"{where}: label {row.label!r} is used twice for model(s) "
                             f"{', '.join(sorted(covered & labels[row.label]))} (a label names one row per model; "
                             "entries may share it only with disjoint `models` lists)")
        labels.setdefault(row.label, set()).update(covered)
        out.append(row)
    return out


def _cells(grid: Grid, spec: dict, row, top: dict) -> list[GridCell]:
    """The cells of one model × row, one per NFE the row reaches (skip_unreachable drops the others)."""
    model = grid.models[spec["name"]]
    skip = top["skip"] if row.skip_unreachable is None else row.skip_unreachable
    source = grid.models[row.distill_from] if getattr(row, "distill_from", None) else None
    out = []
    for nfe in row.nfe or spec["nfe"]:
        where = f"grid {grid.name}: {spec['name']} / {row.label} at NFE {nfe}"
        try:
            p = row.plan(model, nfe, source)
        except ValueError as err:
            if skip:
                grid.skipped.append((spec["name"], row.label, nfe, str(err)))
                continue
            raise InputError(f"{where}: {err} (drop that NFE, or set skip_unreachable = true)") from None
        settings = None
        if isinstance(row, row_kinds.Distilled):
            settings = _check_distill(row, p, source or model, where)
        elif isinstance(row, row_kinds.Untrained):
            try:
                row.build(_Probe(p), model, None)
            except (TypeError, ValueError) as err:
                raise InputError(f"{where}: {err}") from None
        out.append(GridCell(
            grid=grid.name, model=spec["name"], model_options=spec["options"], row=row, plan=p,
            metrics=list(spec["metrics"]), seed_start=top["seed_start"], num_samples=spec["num_samples"],
            batch_size=spec["batch_size"], replicas=spec["replicas"], instance_of=spec["instance_of"],
            metric_options={m: spec["metric_options"].get(m, {}) for m in spec["metrics"]},
            distill_settings=settings, distill_source=(row.distill_from or spec["name"]) if settings else None))
    return out


class _Probe:
    """What an untrained row's build reads of a cell (its grid size), for checking it at load time."""

    def __init__(self, p):
        self.num_points, self.nfe = p.num_points, p.nfe


def _floor_cells(grid: Grid, spec: dict, seed_start: int) -> list[GridCell]:
    """One cell per noise-floor source of a model: the source's samples (no solver, NFE 0) scored by the model's
    metrics that have a floor, at the same seeds and replicas as its solver cells."""
    import bench.metrics
    if not spec["floors"]:
        return []
    model = grid.models[spec["name"]]
    metrics = [m for m in spec["metrics"] if bench.metrics.get(m, **spec["metric_options"].get(m, {})).has_floor]
    if not metrics:
        accepted = ", ".join(n for n in bench.metrics.names() if bench.metrics.get(n).has_floor)
        raise InputError(f"grid {grid.name}, model {spec['name']}: floors need a metric against a reference "
                         f"distribution (one of {accepted})")
    out = []
    for f in spec["floors"]:
        row = row_kinds.Floor(name="floor", label=model.floor_sources[f], source=f)
        out.append(GridCell(grid=grid.name, model=spec["name"], model_options=spec["options"], row=row,
                            plan=row.plan(model), metrics=metrics, seed_start=seed_start,
                            num_samples=spec["num_samples"], batch_size=spec["batch_size"],
                            replicas=spec["replicas"], instance_of=spec["instance_of"],
                            metric_options={m: spec["metric_options"].get(m, {}) for m in metrics}))
    return out


def _refuse_duplicates(grid: Grid) -> None:
    """Two cells of one model and NFE whose rows differ only in label would store one value under two names."""
    seen: dict[str, str] = {}
    for c in grid.cells:
        label = seen.setdefault(c.key, c.row.label)
        if label != c.row.label:
            raise InputError(f"grid {grid.name}: rows {label!r} and {c.row.label!r} are the same cell on {c.model} at "
                             f"NFE {c.nfe} (they differ only in their label); drop one of them")


def _check_ratios(ratios, grid: Grid) -> None:
    """`[[ratios]]`: paired ratios the report shows (rows ÷ the best of `against` at each NFE, bench.report)."""
    if not isinstance(ratios, list) or not all(isinstance(r, dict) for r in ratios):
        raise InputError(f"grid {grid.name}: ratios must be a list of tables, e.g. [[ratios]] rows = [\"DyWeight\"] "
                         "against = [\"iPNDM\"]")
    labels = {r.label for r in grid.rows}
    for i, r in enumerate(ratios):
        where = f"grid {grid.name}, ratios[{i}]"
        schema.unknown(r, schema.RATIO_KEYS, where)
        for key in ("rows", "against"):
            names = schema.strings(r.get(key), f"{where}: {key}", ", ".join(sorted(labels)))
            missing = [n for n in names if n not in labels]
            if missing:
                raise InputError(f"{where}: {key} names no row {', '.join(map(repr, missing))}; rows: "
                                 f"{', '.join(sorted(labels))}")


# ---- distillation ------------------------------------------------------------------------------------------------
HARNESS_OPTIONS = ("afs", "cache_dir", "noise_shape")


def distill_options(options: dict, where: str) -> dict:
    """A row's distill table as bench.distill options (the harness sets afs, the cache and the noise shape)."""
    for k in HARNESS_OPTIONS:
        if k in options:
            raise InputError(f"{where}: distill option {k!r} is set by the harness; remove it")
    return {k: v for k, v in options.items() if k not in ("seed", "cache_id", "dtype")}


def _check_distill_options(row, where: str) -> None:
    """Reject options bench.distill does not accept for this learned solver (before any cell exists)."""
    import solvers
    from bench.distill import Settings
    try:
        Settings.from_options(distill_options(row.distill, where), solvers.solver_class(row.name).structure)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {err}") from None


def _check_distill(row, p, source, where: str) -> dict:
    """The distillation the runner will start, validated now on its own grid by bench.distill's own checks; its
    resolved settings (they enter the cell's key)."""
    from bench.distill import validate
    try:
        _, settings, _ = validate(row.name, p.source_sigmas, row.afs, source.view(p.time),
                                  **distill_options(row.distill, where))
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {err}") from None
    return {**settings.record(), "seed": row.distill.get("seed", 0)}
