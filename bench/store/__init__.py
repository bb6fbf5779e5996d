"""The results store: one SQLite file per results directory (bench.store.layout), its tables typed in
bench.store.schema.

Each finished cell is written in one transaction (its rows, its per-sample scores), so a run killed at any moment
(kill -9 included) loses at most the cell in progress, and a rerun skips every stored (cell, metric) without
duplicating it. Every `bench run` of a grid is recorded with the cells its grid expanded to, computed or resumed
(`runs`, `run_cells`): what the report and `bench check` show by default is exactly the latest run's cells, never a
mix or an average of unlike ones (bench.store.select).

Readers (`load`, `runs`, ...) open the file read-only. A killed writer can leave a hot journal that read-only
connections cannot roll back; a reader then recovers it through a short read-write connection (SQLite rolls the
journal back on open), or, in a read-only folder, says so in one line.

An older store (format 1, before runs and metric identities) is migrated on first write: its rows keep their
values and become one run per grid, holding each (row, NFE, metric)'s latest cell.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import sqlite3
import uuid
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd

from solvers.errors import InputError

from .layout import DB_NAME, Layout, safe_filename
from .schema import SCHEMA_VERSION, TABLES, Artefact, Result, Run, RunCell, Score, columns, create_sql


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Store:
    """Transactional writes to `<results_dir>/results.sqlite` (only one process, rank 0, writes)."""

    def __init__(self, results_dir: str | Path):
        self.layout = Layout.of(results_dir)
        try:
            self.layout.root.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.layout.db, timeout=60)
            with self.conn:
                _upgrade(self.conn)
        except sqlite3.DatabaseError as e:
            raise InputError(_db_error(self.layout.db, e)) from None
        except OSError as e:
            raise InputError(f"cannot write the results directory {self.layout.root}: {e.strerror}; choose another "
                             "with --results-dir") from None

    # ---- reading what is stored ------------------------------------------------------------------------------
    def stored(self, cell_key: str) -> dict[str, str]:
        """metric_key -> status of what is already stored for a cell."""
        cur = self.conn.execute("SELECT metric_key, status FROM results WHERE cell_key = ?", (cell_key,))
        return dict(cur.fetchall())

    # ---- runs --------------------------------------------------------------------------------------------------
    def begin_run(self, grid: str, config: dict, command: str, code_version: str, world: int, threads: int,
                  cells: list[tuple[str, str]]) -> str:
        """Record a run of `grid` and the (cell_key, metric_key) pairs its grid expanded to; its id."""
        run_id = f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        run = Run(run_id=run_id, grid=grid, started_at=now(), finished_at="", status="running", command=command,
                  config=json.dumps(config, sort_keys=True, default=str), code_version=code_version, world_size=world,
                  threads=threads, cells=len({c for c, _ in cells}), computed=0, failed=0, wall_time=0.0)
        with self.conn:
            self._insert("runs", [run])
            self._insert("run_cells", [RunCell(run_id, c, m) for c, m in dict.fromkeys(cells)], "INSERT OR IGNORE")
        return run_id

    def finish_run(self, run_id: str, status: str, computed: int, failed: int, wall: float) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET finished_at = ?, status = ?, computed = ?, failed = ?, wall_time = ? "
                              "WHERE run_id = ?", (now(), status, computed, failed, wall, run_id))

    # ---- cells -------------------------------------------------------------------------------------------------
    def write_cell(self, rows: list[Result], scores: list[Score] = (), replace: bool = False) -> None:
        """Store the rows of one finished cell and their per-sample scores atomically (all or nothing)."""
        if not rows:
            return
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self.conn:                                  # one transaction: commit on success, rollback on error
            self._insert("results", rows, verb)
            self._insert("scores", list(scores), verb)

    def write_artefacts(self, items: list[Artefact]) -> None:
        with self.conn:
            self._insert("artefacts", items, "INSERT OR REPLACE")

    def _insert(self, table: str, items: list, verb: str = "INSERT") -> None:
        if not items:
            return
        cols = list(columns(TABLES[table][0]))
        values = [tuple(_sql_value(getattr(it, c)) for c in cols) for it in items]
        self.conn.executemany(f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _sql_value(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None                                      # NaN/inf are stored as NULL, read back as NaN
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v


def _db_error(path: Path, e: Exception) -> str:
    return (f"{path} is not a readable results store ({e}); move it aside (results are never overwritten) or choose "
            "another --results-dir")


# ---- schema upgrades ---------------------------------------------------------------------------------------------
def _table_columns(conn, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _upgrade(conn) -> None:
    """Create the tables, or migrate a format-1 store (module docstring); idempotent."""
    have = _table_columns(conn, "results")
    if have and "metric_key" not in have:
        _migrate_v1(conn, have)
    for table in TABLES:
        conn.execute(create_sql(table))
        missing = [c for c in columns(TABLES[table][0]) if c not in _table_columns(conn, table)]
        for c in missing:                                # a column added to a row type later
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {c} {columns(TABLES[table][0])[c]}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_v1(conn, have: set[str]) -> None:
    """Format 1 -> 2: rows keyed (cell_key, metric) gain a metric identity, a kind and a run (one per grid)."""
    from bench.grid.files import canonical_hash
    conn.execute("ALTER TABLE results RENAME TO results_v1")
    conn.execute(create_sql("results"))
    old = pd.read_sql_query("SELECT rowid AS _row, * FROM results_v1", conn)
    for c in columns(Result):
        if c not in old:
            old[c] = None
    old["metric_key"] = [canonical_hash({"metric": m, "store_format": 1}) for m in old["metric"]]
    opts = old["options"].fillna("")
    old["kind"] = np.where(old["family"] == "floor", "floor",
                           np.where(opts.str.contains('"released"'), "released",
                                    np.where(opts.str.contains('"distill"'), "distilled", "handcrafted")))
    old["run_id"] = "format1-" + old["grid"].astype(str)
    for c in ("metric_options", "solver_key", "code_hash", "paper_method", "paper_key", "instance_of", "error",
              "distilled_on", "ci_method", "metric_label"):
        old[c] = old[c].fillna("")
    old["metric_label"] = old["metric_label"].where(old["metric_label"] != "", old["metric"])
    old["replicas"] = old["replicas"].fillna(1)
    cols = list(columns(Result))
    conn.executemany(f"INSERT OR IGNORE INTO results ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     [tuple(_sql_value(_plain(v)) for v in r) for r in old[cols].itertuples(index=False)])
    conn.execute(create_sql("runs"))
    conn.execute(create_sql("run_cells"))
    for grid, part in old.groupby("grid", sort=False):
        latest = part.sort_values("_row").groupby(["model", "label", "afs", "nfe", "metric"]).tail(1)
        run = Run(run_id=f"format1-{grid}", grid=str(grid), started_at=str(part["created_at"].min()),
                  finished_at=str(part["created_at"].max()), status="finished", command="(format-1 store)",
                  config="{}", code_version=str(part["code_version"].iloc[-1]), world_size=1, threads=0,
                  cells=int(latest["cell_key"].nunique()), computed=int(latest["cell_key"].nunique()),
                  failed=int(latest[latest["status"] != "ok"]["cell_key"].nunique()), wall_time=0.0)
        vals = [tuple(_sql_value(v) for v in asdict(run).values())]
        conn.executemany(f"INSERT OR IGNORE INTO runs ({', '.join(columns(Run))}) VALUES "
                         f"({', '.join('?' * len(columns(Run)))})", vals)
        conn.executemany("INSERT OR IGNORE INTO run_cells (run_id, cell_key, metric_key) VALUES (?, ?, ?)",
                         [(run.run_id, k, m) for k, m in zip(latest["cell_key"], latest["metric_key"])])
    conn.execute("DROP TABLE results_v1")


def _plain(v):
    """numpy scalars as Python values (sqlite3 takes no numpy types)."""
    if isinstance(v, np.generic):
        return v.item()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


# ---- reading -----------------------------------------------------------------------------------------------------
def connect_readonly(results_dir) -> sqlite3.Connection | None:
    """A read-only connection to the store of `results_dir`, or None when there is none. A hot journal left by a
    killed writer is rolled back first (module docstring)."""
    layout = Layout.of(results_dir)
    if not layout.db.exists():
        return None
    journal = layout.db.with_name(DB_NAME + "-journal")
    if journal.exists() and journal.stat().st_size > 0:
        if not os.access(layout.root, os.W_OK) or not os.access(layout.db, os.W_OK):
            raise InputError(f"{layout.db} has an unfinished transaction of a killed run ({journal.name}) and this "
                             "folder is read-only; open it once with write access (any `bench run` or `bench "
                             "report` there recovers it)")
        try:
            sqlite3.connect(layout.db, timeout=60).execute("SELECT count(*) FROM sqlite_master").close()
        except sqlite3.DatabaseError as e:
            raise InputError(_db_error(layout.db, e)) from None
    try:
        conn = sqlite3.connect(f"file:{layout.db}?mode=ro", uri=True, timeout=60)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise InputError(_db_error(layout.db, e)) from None
    if _table_columns(conn, "results") and "metric_key" not in _table_columns(conn, "results"):
        conn.close()
        Store(results_dir).close()                       # a format-1 store: migrate it once, then read it
        return connect_readonly(results_dir)
    return conn


def _read(results_dir, table: str) -> pd.DataFrame:
    cls = TABLES[table][0]
    conn = connect_readonly(results_dir)
    if conn is None:
        return _typed(pd.DataFrame(columns=list(columns(cls))), cls)
    try:
        have = _table_columns(conn, table)
        if not have:
            return _typed(pd.DataFrame(columns=list(columns(cls))), cls)
        cols = [c for c in columns(cls) if c in have and c != "data"] if table == "scores" else \
            [c for c in columns(cls) if c in have]
        df = pd.read_sql_query(f"SELECT {', '.join(cols)} FROM {table} ORDER BY rowid", conn)
    except sqlite3.DatabaseError as e:
        raise InputError(_db_error(Layout.of(results_dir).db, e)) from None
    finally:
        conn.close()
    for c in columns(cls):
        if c not in df and not (table == "scores" and c == "data"):
            df[c] = None
    return _typed(df, cls)


def _typed(df: pd.DataFrame, cls) -> pd.DataFrame:
    for f in fields(cls):
        if f.name not in df:
            continue
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "float":
            df[f.name] = pd.to_numeric(df[f.name], errors="coerce").astype("float64")
        elif kind == "int":
            df[f.name] = pd.to_numeric(df[f.name], errors="coerce").fillna(0).astype("int64")
        elif kind == "bool":
            df[f.name] = df[f.name].fillna(0).astype(bool)
        elif kind == "str":
            df[f.name] = df[f.name].fillna("").astype(str) if len(df) else df[f.name].astype(object)
    return df


def load(results_dir: str | Path = "results") -> pd.DataFrame:
    """Every stored result row as a tidy DataFrame (one row per cell and metric identity; the Result columns);
    empty, with the columns, if none. Use bench.store.select for what a report shows."""
    df = _read(results_dir, "results")
    if "metric_label" in df and len(df):
        df["metric_label"] = df["metric_label"].where(df["metric_label"] != "", df["metric"])
    return df


def runs(results_dir) -> pd.DataFrame:
    """Every recorded run (the Run columns), oldest first."""
    return _read(results_dir, "runs")


def run_cells(results_dir) -> pd.DataFrame:
    return _read(results_dir, "run_cells")


def artefacts(results_dir) -> pd.DataFrame:
    """Every stored artefact (the Artefact columns; `data` is JSON)."""
    return _read(results_dir, "artefacts")


def scores(results_dir, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[list[int], np.ndarray]]:
    """(cell_key, metric_key) -> (seeds, per-sample scores) for the pairs that have them."""
    conn = connect_readonly(results_dir)
    out = {}
    if conn is None or not _table_columns(conn, "scores"):
        return out
    try:
        for cell_key, metric_key in pairs:
            row = conn.execute("SELECT seeds, data FROM scores WHERE cell_key = ? AND metric_key = ?",
                               (cell_key, metric_key)).fetchone()
            if row is not None:
                out[(cell_key, metric_key)] = (parse_seeds(row[0]), np.frombuffer(row[1], dtype="<f8").copy())
    finally:
        conn.close()
    return out


def write_study(results_dir, grid: str, config: dict, rows: list[Result], command: str = "") -> str:
    """Store the rows a non-sampling study measured as one run of its grid (so `bench report`, `bench check` and
    `bench export` read them like any run); returns the run id."""
    from bench.provenance import code_version
    seen: dict = {}
    for r in rows:                                  # one identity, one row: a second would silently replace the first
        other = seen.setdefault((r.cell_key, r.metric_key), r)
        if other is not r:
            raise ValueError(f"study {grid!r}: rows {other.label!r} and {r.label!r} ({r.model}, {r.metric}) have "
                             "the same cell identity; what tells them apart belongs in their key")
    with Store(results_dir) as s:
        run_id = s.begin_run(grid, config, command, code_version(), 1, 1, [(r.cell_key, r.metric_key) for r in rows])
        for r in rows:
            r.run_id = run_id
        s.write_cell(rows, replace=True)
        s.finish_run(run_id, "finished", len({r.cell_key for r in rows}), 0, 0.0)
    return run_id


def seeds_text(seeds) -> str:
    seeds = [int(s) for s in seeds]
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return json.dumps(seeds)


def parse_seeds(text: str) -> list[int]:
    if text.startswith("["):
        return [int(s) for s in json.loads(text)]
    a, b = text.split("-")
    return list(range(int(a), int(b) + 1))


def score_row(cell_key: str, metric_key: str, seeds, values) -> Score:
    return Score(cell_key, metric_key, seeds_text(seeds), np.asarray(values, dtype="<f8").tobytes())


__all__ = ["Store", "Layout", "load", "runs", "run_cells", "scores", "artefacts", "safe_filename", "DB_NAME",
           "Result", "Run", "RunCell", "Score", "Artefact", "score_row", "now", "write_study"]
