"""The results store: one SQLite file per results directory, one row per (cell, metric).

Each finished cell is written in one transaction, so a run killed at any moment (kill -9 included) loses at most
the cell in progress, and a rerun skips every stored (cell, metric) without duplicating it: (cell_key, metric) is
the primary key. `load(dir)` returns the tidy table the reports read.

Layout of a results directory:
    results.sqlite                       the table below
    solvers/<grid>/<model>/<label>-nfe<N>.json   distilled solvers (DyWeight.save), reused by later runs
    cache/                               teacher trajectories (bench.distill) and reference ODE solutions
    studies/                             tables written by non-sampling grid kinds
"""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pandas as pd

DB_NAME = "results.sqlite"

# column -> SQL type; the order is the DataFrame's column order
COLUMNS = {
    "grid": "TEXT", "model": "TEXT", "solver": "TEXT", "label": "TEXT", "family": "TEXT", "options": "TEXT",
    "nfe": "INTEGER", "afs": "INTEGER", "schedule": "TEXT", "metric": "TEXT", "value": "REAL", "status": "TEXT",
    "error": "TEXT", "num_samples": "INTEGER", "seeds": "TEXT", "distilled_on": "TEXT", "code_version": "TEXT",
    "config_hash": "TEXT", "cell_key": "TEXT", "torch_version": "TEXT", "device": "TEXT", "world_size": "INTEGER",
    "wall_time": "REAL", "created_at": "TEXT", "paper_method": "TEXT",
    "ci_low": "REAL", "ci_high": "REAL", "ci_method": "TEXT", "replicas": "INTEGER", "higher_is_better": "INTEGER",
    "metric_label": "TEXT", "paper_key": "TEXT", "instance_of": "TEXT",
}
# What each row carries for the report, so that `bench report` reads the store alone:
#   value, ci_low, ci_high   the estimate and its 95 % interval; ci_method says how (bench.stats)
#   replicas                 disjoint seed sets of num_samples the cell drew
#   higher_is_better, metric_label   the metric's direction and display name
#   family, label            "handcrafted" | "learned" | "floor" (a noise-floor row), and the row's display name
#   paper_key                the paper's dataset key of the model (its released coefficients), or ""
#   instance_of              the registered model whose problem instance `model` is (a grid's `instances`), or ""


class Store:
    """Transactional access to `<results_dir>/results.sqlite` (only one process, rank 0, writes)."""

    def __init__(self, results_dir: str | Path):
        self.dir = Path(results_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / DB_NAME
        self.conn = sqlite3.connect(self.path, timeout=60)
        cols = ", ".join(f"{c} {t}" for c, t in COLUMNS.items())
        with self.conn:
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS results ({cols}, PRIMARY KEY (cell_key, metric))")
            have = _columns(self.conn)
            added = [c for c in COLUMNS if c not in have]
            for c in added:                                                    # a store from an older version
                self.conn.execute(f"ALTER TABLE results ADD COLUMN {c} {COLUMNS[c]}")
            if added:
                _describe_old_rows(self.conn)

    def stored(self, cell_key: str) -> dict[str, str]:
        """metric -> status of what is already stored for a cell."""
        cur = self.conn.execute("SELECT metric, status FROM results WHERE cell_key = ?", (cell_key,))
        return dict(cur.fetchall())

    def write_cell(self, rows: list[dict], replace: bool = False) -> None:
        """Store the rows of one finished cell atomically (all or nothing)."""
        if not rows:
            return
        cols = list(COLUMNS)
        values = [tuple(_sql_value(r.get(c)) for c in cols) for r in rows]
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with self.conn:                                  # one transaction: commit on success, rollback on error
            self.conn.executemany(f"{verb} INTO results ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                  values)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _describe_old_rows(conn) -> None:
    """Fill what rows of an older store lack and the registries still know: each metric's direction and label,
    each model's paper key; intervals stay unknown (NULL, read as NaN), as they were never measured."""
    from bench import metrics, models
    for (name,) in conn.execute("SELECT DISTINCT metric FROM results WHERE higher_is_better IS NULL").fetchall():
        if name in metrics.names():
            m = metrics.get(name)
            conn.execute("UPDATE results SET higher_is_better = ?, metric_label = ? WHERE metric = ? AND "
                         "higher_is_better IS NULL", (int(m.higher_is_better), m.label or name, name))
    for (name,) in conn.execute("SELECT DISTINCT model FROM results WHERE paper_key IS NULL").fetchall():
        try:
            key = models.get(name).released_key if name in models.names() else None
        except (ValueError, FileNotFoundError, ImportError):
            key = None
        conn.execute("UPDATE results SET paper_key = ? WHERE model = ? AND paper_key IS NULL", (key or "", name))
    conn.execute("UPDATE results SET replicas = 1 WHERE replicas IS NULL")


def _sql_value(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None                                      # NaN/inf are stored as NULL, read back as NaN
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v


def load(results_dir: str | Path = "results") -> pd.DataFrame:
    """All stored results as a tidy DataFrame, one row per (cell, metric); empty (with the columns) if none."""
    path = Path(results_dir) / DB_NAME
    if not path.exists():
        return _typed(pd.DataFrame(columns=list(COLUMNS)))
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        have = _columns(conn)
        df = pd.read_sql_query(f"SELECT {', '.join(c for c in COLUMNS if c in have)} FROM results ORDER BY rowid",
                               conn)
    finally:
        conn.close()
    for c in COLUMNS:                                   # a column an older store lacks: empty
        if c not in df:
            df[c] = None
    return _typed(df[list(COLUMNS)])


def _columns(conn) -> set[str]:
    return {row[1] for row in conn.execute("PRAGMA table_info(results)")}


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for c in ("value", "wall_time", "ci_low", "ci_high"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["replicas"] = pd.to_numeric(df["replicas"], errors="coerce").fillna(1)
    for c in ("nfe", "num_samples", "world_size", "replicas"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("int64") if len(df) else df[c].astype("int64")
    df["afs"] = df["afs"].astype(bool)
    df["higher_is_better"] = df["higher_is_better"].fillna(0).astype(bool)
    for c in ("error", "distilled_on", "paper_method", "ci_method", "paper_key", "instance_of"):
        df[c] = df[c].fillna("")
    df["metric_label"] = df["metric_label"].where(df["metric_label"].notna() & (df["metric_label"] != ""),
                                                  df["metric"])
    return df
