"""Grids: TOML files that name models × solvers × NFEs (× schedules) × metrics, and the cells they expand to.

The schema is documented in bench/grids/README.md. `load(name_or_path)` parses and validates a grid before any work
starts: every bad name, unreachable budget or missing file raises one ValueError/FileNotFoundError naming what is
accepted. `Grid.cells` is the list of `GridCell`s to evaluate, in a fixed order.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from bench import plan
from bench.plan import Plan
from solvers.errors import InputError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

GRIDS_DIR = Path(__file__).parent / "grids"
SAMPLING = "sampling"
KEY_FORMAT = 1          # bump when the meaning of a cell key changes

_TOP_KEYS = {"name", "description", "kind", "nfe", "num_samples", "seed_start", "batch_size", "schedule", "time",
             "metrics", "metric_options", "skip_unreachable", "models", "solvers", "replicas", "floors"}
_MODEL_KEYS = {"name", "metrics", "metric_options", "options", "instances", "nfe", "num_samples", "batch_size",
               "replicas", "floors"}
_SOLVER_KEYS = {"name", "label", "afs", "schedule", "schedule_options", "time", "options", "distill", "distill_from",
                "released", "models", "nfe", "skip_unreachable", "paper_method"}


def names() -> list[str]:
    """The grids shipped with the package."""
    return sorted(p.stem for p in GRIDS_DIR.glob("*.toml"))


def path_of(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    if s.endswith(".toml") or "/" in s or "\\" in s:
        p = Path(s).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"no grid file {p}; shipped grids: {', '.join(names())}")
        return p
    p = GRIDS_DIR / f"{s}.toml"
    if not p.exists():
        raise InputError(f"unknown grid {s!r}; accepted: {', '.join(names())} (or the path of a .toml file)")
    return p


def read(name_or_path: str | Path) -> dict:
    """The raw TOML of a grid as a dict (no validation)."""
    p = path_of(name_or_path)
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"grid file {p} is not valid TOML: {e}") from None


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys), 16 hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def safe_filename(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._()+=-]+", "_", label).strip("_") or "solver"


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SolverEntry:
    """One [[solvers]] table: a registered solver with options, or a learned one (distilled or released)."""

    name: str
    label: str
    afs: bool = False
    schedule: str | None = None             # None: the model's own schedule
    schedule_options: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    distill: dict | None = None             # learned: distil per (model, NFE) with these bench.distill options
    distill_from: str | None = None         # ... on this other model (transfer)
    released: bool = False                  # learned: the paper's released coefficients for model.released_key
    time: str = "sigma"                     # "flow": the solver's flow-time form (solvers/flow.py), as FLUX's code
    models: list | None = None              # only these models (None: every model of the grid)
    nfe: list | None = None                 # overrides the grid's NFE list
    skip_unreachable: bool | None = None
    paper_method: str | None = None         # the paper's name of this row's method (reported-vs-measured tables)
    floor: str | None = None                # a noise-floor row: the model's floor source (no solver runs)

    @property
    def learned(self) -> bool:
        return self.distill is not None or self.released

    @property
    def family(self) -> str:
        """"floor" (a noise-floor row), "learned" or "handcrafted"."""
        import solvers
        if self.floor is not None:
            return "floor"
        return "learned" if self.learned or solvers.solver_class(self.name).learned else "handcrafted"

    def identity(self) -> dict:
        """What determines this entry's samples (the label is a display name and does not)."""
        out = {"name": self.name, "afs": self.afs, "schedule": self.schedule,
               "schedule_options": self.schedule_options, "options": self.options, "distill": self.distill,
               "distill_from": self.distill_from, "released": self.released}
        if self.time != "sigma":
            out["time"] = self.time
        if self.floor is not None:
            out = {"floor": self.floor}
        return out


@dataclass
class GridCell:
    """One model × solver entry × NFE cell: everything needed to sample it and to key its results."""

    grid: str
    model: str
    model_options: dict
    entry: SolverEntry
    plan: Plan                              # the grid it samples on, its budget (bench.plan)
    metrics: list
    seed_start: int
    num_samples: int
    batch_size: int
    metric_options: dict = field(default_factory=dict)     # metric name -> options it is built with
    replicas: int = 1                       # disjoint seed sets of num_samples each (bench.stats)
    instance_of: str = ""                   # the registered model this cell's model is an instance of, or ""

    @property
    def nfe(self) -> int:
        return self.plan.nfe

    @property
    def num_points(self) -> int:
        return self.plan.num_points

    @property
    def schedule(self) -> str:
        """The schedule actually used (released: the checkpoint's)."""
        return self.plan.schedule

    @property
    def seeds(self) -> range:
        """Every seed the cell samples: `replicas` consecutive sets of `num_samples`."""
        return range(self.seed_start, self.seed_start + self.num_samples * self.replicas)

    @property
    def seeds_text(self) -> str:
        text = f"{self.seed_start}-{self.seed_start + self.num_samples * self.replicas - 1}"
        return text + (f" ({self.replicas} sets of {self.num_samples})" if self.replicas > 1 else "")

    @property
    def key(self) -> str:
        """Hash of everything that determines the cell's samples (batch size and world size do not)."""
        ident = {"format": KEY_FORMAT, "grid": self.grid, "model": self.model, "model_options": self.model_options,
                 "solver": self.entry.identity(), "nfe": self.nfe, "seed_start": self.seed_start,
                 "num_samples": self.num_samples}
        if self.replicas != 1:
            ident["replicas"] = self.replicas
        return canonical_hash(ident)

    @property
    def evaluations(self) -> int:
        """Network evaluations spent on sampling (not counting distillation or reference solutions)."""
        return self.nfe * self.num_samples * self.replicas

    def describe(self) -> str:
        return f"{self.model} / {self.entry.label}{' +AFS' if self.entry.afs else ''} / NFE {self.nfe}"


@dataclass
class Grid:
    name: str
    description: str
    kind: str
    raw: dict
    path: Path
    cells: list = field(default_factory=list)
    skipped: list = field(default_factory=list)       # (model, label, nfe, reason) dropped by skip_unreachable
    entries: list = field(default_factory=list)
    models: dict = field(default_factory=dict)        # name -> Model instance

    @property
    def config_hash(self) -> str:
        return canonical_hash(self.raw)


# ---------------------------------------------------------------------------------------------------------------
def load(name_or_path: str | Path, overrides: dict | None = None, extra_solvers: list | None = None) -> Grid:
    """Read, override (e.g. {"num_samples": 200}) and validate a grid; raise one clear error on bad input."""
    path = path_of(name_or_path)
    raw = read(path)
    for spec in extra_solvers or []:
        raw.setdefault("solvers", []).append(user_solver_entry(raw, *spec))
    for k, v in (overrides or {}).items():
        if "." in k or "[" in k:
            set_path(raw, k, v)
            continue
        raw[k] = v
        if k in ("num_samples", "batch_size", "nfe"):      # a command-line override beats per-model values
            for m in raw.get("models", []) if isinstance(raw.get("models"), list) else []:
                if isinstance(m, dict):
                    m.pop(k, None)
            if k == "nfe":
                for s in raw.get("solvers", []) if isinstance(raw.get("solvers"), list) else []:
                    if isinstance(s, dict):
                        s.pop(k, None)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise InputError(f"grid {path}: 'name' must be a non-empty string")
    kind = raw.get("kind", SAMPLING)
    grid = Grid(name=name, description=str(raw.get("description", "")), kind=kind, raw=raw, path=path)
    if kind != SAMPLING:
        _study_module(kind)                                  # must exist; the study validates its own table
        return grid
    _unknown(raw, _TOP_KEYS, f"grid {name}")
    _expand(grid)
    return grid


def user_solver_entry(raw: dict, spec: str, distill: bool = False) -> dict:
    """A [[solvers]] table for a user's solver named by its spec (`bench run --solver file.py:Class`): labelled by
    the class's `label` or name, with AFS where every entry of the grid uses it, distilled with the defaults when
    asked."""
    import solvers
    if not solvers.is_spec(spec) and spec not in solvers.names():
        raise InputError(f"--solver {spec!r}: expected path/to/file.py:Class, package.module:Class or a registered "
                         f"name ({', '.join(solvers.names())})")
    try:
        cls = solvers.solver_class(spec)
    except (ValueError, FileNotFoundError) as err:
        raise InputError(f"--solver {spec!r}: {err}") from None
    if distill and not cls.learned:
        raise InputError(f"--distill needs a learned solver (a solvers.learned.LearnedSolver); {spec!r} is not one")
    tables = [t for t in raw.get("solvers", []) if isinstance(t, dict)]
    table = {"name": spec, "label": str(getattr(cls, "label", "") or cls.__name__),
             "afs": bool(tables) and all(t.get("afs", False) for t in tables)}
    if distill:
        table["distill"] = {}
    return table


def parse_assignment(text: str) -> tuple[str, Any]:
    """'solvers[DyWeight].distill.steps=20' -> (path, 20); the value is read as TOML (a bare word as a string)."""
    if "=" not in text:
        raise InputError(f"--set needs KEY=VALUE (e.g. num_samples=200 or solvers[DyWeight].distill.steps=20), "
                         f"got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def set_path(raw: dict, path: str, value: Any) -> None:
    """Set a dotted path in a grid; `models[NAME]` / `solvers[LABEL]` pick a table (`solvers[*]`: every one)."""
    parts = path.split(".")
    targets = [raw]
    for depth, part in enumerate(parts):
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(.+)\])?", part)
        if not m:
            raise InputError(f"cannot read override path {path!r} at {part!r}")
        name, sel = m.groups()
        last = depth == len(parts) - 1
        nxt = []
        for t in targets:
            if sel is None:
                if last:
                    t[name] = value
                else:
                    nxt.append(t.setdefault(name, {}))
                continue
            tables = t.get(name)
            if not isinstance(tables, list):
                raise InputError(f"override {path!r}: {name!r} is not a list of tables")
            found = [x for x in tables if sel == "*" or sel in (x.get("label"), x.get("name"))]
            if not found:
                have = [x.get("label", x.get("name")) for x in tables]
                raise InputError(f"override {path!r}: no {name} entry {sel!r}; accepted: {', '.join(map(str, have))}")
            if last:
                raise InputError(f"override {path!r} must name a key inside {name}[{sel}]")
            nxt += found
        targets = nxt


def _study_module(kind: str):
    import importlib
    import pkgutil

    import bench.studies as pkg
    kinds = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    if not isinstance(kind, str) or kind not in kinds:
        raise InputError(f"unknown grid kind {kind!r}; accepted: {', '.join([SAMPLING] + kinds)}")
    return importlib.import_module(f"bench.studies.{kind}")


def _unknown(table: dict, allowed: set, where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise InputError(f"{where}: unknown key {', '.join(map(repr, extra))}; accepted: {', '.join(sorted(allowed))}")


def _int_list(v, where: str) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                    for n in v):
        raise InputError(f"{where}: 'nfe' must be a positive integer or a non-empty list of them, got {v!r}")
    return v


def _positive_int(v, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise InputError(f"{what} must be a positive integer, got {v!r}")
    return v


def _expand(grid: Grid) -> None:
    import bench.metrics
    import bench.models
    import solvers
    from bench.models.base import TIMES
    from solvers import schedules

    raw, gname = grid.raw, grid.name
    nfes = _int_list(raw.get("nfe"), f"grid {gname}")
    num_samples = _positive_int(raw.get("num_samples", 1000), f"grid {gname}: num_samples")
    batch_size = _positive_int(raw.get("batch_size", 500), f"grid {gname}: batch_size")
    seed_start = raw.get("seed_start", 0)
    if not isinstance(seed_start, int) or isinstance(seed_start, bool) or seed_start < 0:
        raise InputError(f"grid {gname}: seed_start must be a non-negative integer, got {seed_start!r}")
    skip_default = bool(raw.get("skip_unreachable", False))

    model_tables = raw.get("models")
    if not isinstance(model_tables, list) or not model_tables:
        raise InputError(f"grid {gname}: needs at least one [[models]] table; models: {', '.join(bench.models.names())}")
    solver_tables = raw.get("solvers")
    if not isinstance(solver_tables, list) or not solver_tables:
        raise InputError(f"grid {gname}: needs at least one [[solvers]] table; solvers: {', '.join(solvers.names())}")

    # ---- models -------------------------------------------------------------------------------------------
    model_specs = []
    bases: dict[str, list[str]] = {}                        # registered model -> its keys in the grid
    for i, mt in enumerate(model_tables):
        where = f"grid {gname}, models[{i}]"
        if not isinstance(mt, dict) or "name" not in mt:
            raise InputError(f"{where}: needs name = one of {', '.join(bench.models.names())}")
        _unknown(mt, _MODEL_KEYS, where)
        mname = mt["name"]
        if mname not in bench.models.names():
            raise InputError(f"{where}: unknown model {mname!r}; accepted: {', '.join(bench.models.names())}")
        options = mt.get("options", {})
        if not isinstance(options, dict):
            raise InputError(f"{where}: options must be a table")
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
            model_specs.append(_model_spec(grid, raw, mt, key, opts, mname if instances else "", where,
                                           nfes, num_samples, batch_size))
        bases.setdefault(mname, []).extend(k for k, _ in keyed)

    # ---- solver entries -----------------------------------------------------------------------------------
    labels: dict[str, set] = {}                             # label -> the models it already names
    for i, st in enumerate(solver_tables):
        where = f"grid {gname}, solvers[{i}]"
        if not isinstance(st, dict) or "name" not in st:
            raise InputError(f"{where}: needs name = one of {', '.join(solvers.names())}")
        _unknown(st, _SOLVER_KEYS, where)
        if st["name"] not in solvers.names() and not solvers.is_spec(st["name"]):
            raise InputError(f"{where}: unknown solver {st['name']!r}; accepted: {', '.join(solvers.names())}, or "
                             "a user's solver as path/to/file.py:Class or package.module:Class")
        try:
            solvers.solver_class(st["name"])
        except (ValueError, FileNotFoundError) as err:
            raise InputError(f"{where}: {err}") from None
        e = SolverEntry(name=st["name"], label=str(st.get("label", st["name"])), afs=st.get("afs", False),
                        schedule=st.get("schedule", raw.get("schedule")),
                        schedule_options=st.get("schedule_options", {}), options=st.get("options", {}),
                        distill=st.get("distill"), distill_from=st.get("distill_from"),
                        released=st.get("released", False), time=st.get("time", raw.get("time", "sigma")),
                        models=st.get("models"),
                        nfe=_int_list(st["nfe"], where) if "nfe" in st else None,
                        skip_unreachable=st.get("skip_unreachable"), paper_method=st.get("paper_method"))
        if not isinstance(e.afs, bool) or not isinstance(e.released, bool):
            raise InputError(f"{where}: afs and released must be true or false")
        if not isinstance(e.options, dict) or not isinstance(e.schedule_options, dict):
            raise InputError(f"{where}: options and schedule_options must be tables")
        if e.paper_method is not None and (not isinstance(e.paper_method, str) or not e.paper_method):
            raise InputError(f"{where}: paper_method must be the paper's name of the method, e.g. \"DyWeight\"")
        if e.time not in TIMES:
            raise InputError(f"{where}: unknown time {e.time!r}; accepted: {', '.join(TIMES)} (flow: the solver's "
                             "flow-time form, solvers/flow.py)")
        if e.schedule is not None and e.schedule not in schedules.KINDS:
            raise InputError(f"{where}: unknown schedule {e.schedule!r}; accepted: {', '.join(schedules.KINDS)}")
        if e.distill is not None and not isinstance(e.distill, dict):
            raise InputError(f"{where}: distill must be a table of bench.distill options, e.g. distill = {{}}")
        if (e.distill is not None) + e.released + bool(e.options.get("weights") is not None) > 1:
            raise InputError(f"{where}: a learned entry takes exactly one of distill = {{...}}, released = true or "
                             "options.weights")
        if e.learned and not solvers.solver_class(e.name).learned:
            raise InputError(f"{where}: distill/released need a learned solver (one of "
                             f"{', '.join(solvers.learned_names())}), got {e.name!r}")
        if e.released:
            from baselines import RELEASED_KINDS
            if e.name not in RELEASED_KINDS:
                raise InputError(f"{where}: {e.name} has no released coefficients (released = true); released: "
                                 f"{', '.join(RELEASED_KINDS)}")
        if e.distill_from is not None:
            if e.distill is None:
                raise InputError(f"{where}: distill_from needs distill = {{...}} too")
            if e.distill_from not in bench.models.names() and e.distill_from not in grid.models:
                raise InputError(f"{where}: distill_from names unknown model {e.distill_from!r}; "
                                 f"accepted: {', '.join(bench.models.names())}")
        if e.models is not None:
            if not isinstance(e.models, list) or any(m not in grid.models and m not in bases for m in e.models):
                raise InputError(f"{where}: models = {e.models!r} must list models of this grid: "
                                 f"{', '.join(dict.fromkeys([*bases, *grid.models]))} (a model's name covers "
                                 "all its instances)")
            e.models = list(dict.fromkeys(k for m in e.models for k in bases.get(m, [m])))
        covered = set(e.models if e.models is not None else grid.models)
        if covered & labels.get(e.label, set()):
            raise InputError(f"{where}: label {e.label!r} is used twice for model(s) "
                             f"{', '.join(sorted(covered & labels[e.label]))} (a label names one row per model; "
                             "entries may share it only with disjoint `models` lists)")
        labels.setdefault(e.label, set()).update(covered)
        if e.distill is not None:
            _check_distill_options(e.name, e.distill, where)
        if not e.learned and not _untrained(e):
            try:
                solvers.get(e.name, **e.options)
            except (TypeError, ValueError) as err:
                raise InputError(f"{where}: {err}") from None
        grid.entries.append(e)

    # ---- cells --------------------------------------------------------------------------------------------
    for e in grid.entries:
        if e.distill_from is not None and e.distill_from not in grid.models:
            grid.models[e.distill_from] = bench.models.get(e.distill_from)
    for ms in model_specs:
        model = grid.models[ms["name"]]
        for e in grid.entries:
            if e.models is not None and ms["name"] not in e.models:
                continue
            skip = skip_default if e.skip_unreachable is None else bool(e.skip_unreachable)
            source = grid.models[e.distill_from] if e.distill_from else None
            for nfe in (e.nfe or ms["nfe"]):
                try:
                    p = plan.make(model, e, nfe, source)
                except ValueError as err:
                    if skip:
                        grid.skipped.append((ms["name"], e.label, nfe, str(err)))
                        continue
                    raise InputError(f"grid {gname}: {ms['name']} / {e.label} at NFE {nfe}: {err} "
                                     "(drop that NFE, or set skip_unreachable = true)") from None
                if e.distill is not None:
                    _check_distill(e, p, source or model, f"grid {gname}, {ms['name']} / {e.label} at NFE {nfe}")
                grid.cells.append(GridCell(
                    grid=gname, model=ms["name"], model_options=ms["options"], entry=e, plan=p,
                    metrics=list(ms["metrics"]), seed_start=seed_start, num_samples=ms["num_samples"],
                    batch_size=ms["batch_size"], replicas=ms["replicas"], instance_of=ms["instance_of"],
                    metric_options={m: ms["metric_options"].get(m, {}) for m in ms["metrics"]}))
        grid.cells += _floor_cells(grid, ms, seed_start)
    if not grid.cells:
        raise InputError(f"grid {gname} has no cells to run (every cell was skipped as unreachable)")


def _instances(name: str, options: dict, instances: list) -> list[tuple[str, dict]]:
    """(key, options) per problem instance: the model's options overridden by the instance's, keyed
    "<model>@k=v,..." (the name the store and the report use; `runner.solver_path` makes it a safe directory)."""
    return [(f"{name}@" + ",".join(f"{k}={v}" for k, v in inst.items()), {**options, **inst}) for inst in instances]


def _model_spec(grid, raw: dict, mt: dict, key: str, options: dict, instance_of: str, where: str, nfes,
                num_samples, batch_size) -> dict:
    """One model (or problem instance) of the grid: its metrics, sample counts, replicas and floors, checked."""
    import bench.metrics
    metrics = mt.get("metrics", raw.get("metrics"))
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise InputError(f"{where}: metrics must be a non-empty list; accepted: {', '.join(bench.metrics.names())}")
    n_samples = _positive_int(mt.get("num_samples", num_samples), f"{where}: num_samples")
    n_replicas = _positive_int(mt.get("replicas", raw.get("replicas", 1)), f"{where}: replicas")
    floors = mt.get("floors", raw.get("floors", []))
    model = grid.models[key]
    if not isinstance(floors, list) or not all(isinstance(f, str) for f in floors):
        raise InputError(f"{where}: floors must be a list of noise-floor sources; accepted for {key}: "
                         f"{', '.join(model.floor_sources) or '(none)'}")
    for f in floors:
        model.check_floor(f, n_samples * n_replicas)
    metric_options = _metric_options(raw.get("metric_options", {}), mt.get("metric_options", {}), where)
    for m in metrics:
        _check_metric(m, metric_options.get(m, {}), grid.models[key], n_samples, where)
    return {
        "name": key, "instance_of": instance_of, "options": options, "metrics": metrics,
        "metric_options": metric_options,
        "nfe": _int_list(mt["nfe"], where) if "nfe" in mt else nfes, "num_samples": n_samples,
        "batch_size": _positive_int(mt.get("batch_size", batch_size), f"{where}: batch_size"),
        "replicas": n_replicas, "floors": floors,
    }


def _floor_cells(grid: Grid, ms: dict, seed_start: int) -> list[GridCell]:
    """One cell per noise-floor source of a model: the source's samples (no solver, NFE 0) scored by the model's
    metrics that have a floor, at the same seeds and replicas as its solver cells."""
    import bench.metrics
    if not ms["floors"]:
        return []
    model = grid.models[ms["name"]]
    metrics = [m for m in ms["metrics"] if bench.metrics.get(m, **ms["metric_options"].get(m, {})).has_floor]
    if not metrics:
        accepted = ", ".join(n for n in bench.metrics.names() if bench.metrics.get(n).has_floor)
        raise InputError(f"grid {grid.name}, model {ms['name']}: floors need a metric against a reference "
                         f"distribution (one of {accepted})")
    sigmas = tuple(float(v) for v in model.grid(2))
    p = Plan(nfe=0, num_points=2, schedule=model.schedule, time="sigma", sigmas=sigmas,
             evals_per_call=model.evals_per_call, ends_at_zero=sigmas[-1] == 0.0)
    return [GridCell(grid=grid.name, model=ms["name"], model_options=ms["options"],
                     entry=SolverEntry(name="floor", label=model.floor_sources[f], floor=f), plan=p,
                     metrics=metrics, seed_start=seed_start, num_samples=ms["num_samples"],
                     batch_size=ms["batch_size"], replicas=ms["replicas"], instance_of=ms["instance_of"],
                     metric_options={m: ms["metric_options"].get(m, {}) for m in metrics})
            for f in ms["floors"]]


def _untrained(e: SolverEntry) -> bool:
    """A learned solver without distillation, release or explicit parameters: its official initialisation for
    each cell's grid (its options are structure options then)."""
    import solvers
    cls = solvers.solver_class(e.name)
    return cls.learned and not any(k in e.options for k in cls.parameter_options)


def _metric_options(top: dict, model_level: dict, where: str) -> dict:
    """metric name -> options: the grid's metric_options table, overridden per model."""
    out = {}
    for table in (top, model_level):
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise InputError(f"{where}: metric_options must map metric names to tables of options, "
                             "e.g. metric_options = {{ fid = {{ num_samples = 1000 }} }}")
        for k, v in table.items():
            out[k] = {**out.get(k, {}), **v}
    return out


def _check_metric(name: str, options: dict, model, num_samples: int, where: str) -> None:
    """The metric exists, takes these options, supports the model, and scores exactly the cell's sample count."""
    import bench.metrics
    if name not in bench.metrics.names():
        raise InputError(f"{where}: unknown metric {name!r}; accepted: {', '.join(bench.metrics.names())}")
    try:
        metric = bench.metrics.get(name, **options)
    except TypeError as err:
        raise InputError(f"{where}: metric {name!r} does not take options {options}: {err}") from None
    if not metric.supports(model):
        ok = [n for n in bench.metrics.names() if bench.metrics.get(n).supports(model)]
        raise InputError(f"{where}: metric {name!r} does not support model {model.name!r}; "
                         f"accepted for it: {', '.join(ok) or '(none)'}")
    if metric.num_samples is not None and metric.num_samples != num_samples:
        raise InputError(f"{where}: metric {name!r} ({metric.label}) scores exactly {metric.num_samples} samples, but "
                         f"the cells of {model.name!r} draw {num_samples}; name the metric of that size (e.g. "
                         f"fid_30k) or set metric_options = {{ {name} = {{ num_samples = {num_samples} }} }}")


def _check_distill(e: SolverEntry, p: Plan, source, where: str) -> None:
    """The distillation the runner will start, validated now on its own grid by bench.distill's own checks."""
    try:
        from bench.distill import validate
    except ImportError:                                   # the distillation package is optional at load time
        return
    try:
        validate(e.name, p.source_sigmas, e.afs, source.view(p.time), **_distill_options(e.distill, where))
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {err}") from None


def _distill_options(options: dict, where: str) -> dict:
    """The entry's distill table as bench.distill options (the harness sets afs, the cache and the noise shape)."""
    for k in ("afs", "cache_dir", "noise_shape"):
        if k in options:
            raise InputError(f"{where}: distill option {k!r} is set by the harness; remove it")
    return {k: v for k, v in options.items() if k not in ("seed", "cache_id", "dtype")}


def _check_distill_options(name: str, options: dict, where: str) -> None:
    """Reject options bench.distill does not accept for this learned solver (before any cell exists)."""
    import solvers
    try:
        from bench.distill import Settings
    except ImportError:                                   # the distillation package is optional at load time
        return
    try:
        Settings.from_options(_distill_options(options, where), solvers.solver_class(name).structure)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {err}") from None
