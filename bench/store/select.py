"""What a report, `bench check` and `bench export` show: for each grid, the cells of one run, never a mix.

A results directory may hold several cells for one (grid, model, row, NFE, metric): runs with other sample counts,
distillation settings, metric options or solver code. Each table cell the tools show is exactly one stored cell:
by default those of each grid's latest run (every cell its grid expanded to, whether that run computed it or found it
stored); `run` picks another (a run id or a unique prefix of one, or "-2" for each grid's run before its latest), and
`where` ({"num_samples": "32"}) picks each grid's latest run whose cells all have that value. What is left out is
counted and named by the fields that differ, so a reader knows what else the store holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from solvers.errors import InputError

from . import load, run_cells, runs

# fields that tell stored cells of one table slot apart, with how a note names them
DIFFERING = (("num_samples", "sample counts"), ("seeds", "seeds"), ("options", "row options or distillation "
             "settings"), ("code_hash", "solver code"), ("metric_options", "metric options"), ("schedule", "schedules"),
             ("replicas", "replicas"), ("label", "labels"), ("nfe", "NFEs"), ("model", "models"))


@dataclass
class Selection:
    rows: pd.DataFrame                                     # the shown result rows (bench.store.schema.Result)
    runs: dict = field(default_factory=dict)               # grid -> its shown run (a row of bench.store.runs)
    notes: dict = field(default_factory=dict)              # grid -> lines about what was left out or is missing

    @property
    def grids(self) -> list[str]:
        return list(self.runs)


def select(results_dir: str | Path, grids: list[str] | None = None, run: str | None = None,
           where: dict | None = None) -> Selection:
    """The rows to show for each grid of `results_dir` (module docstring)."""
    df, all_runs, cells = load(results_dir), runs(results_dir), run_cells(results_dir)
    if grids:
        unknown = [g for g in grids if g not in set(all_runs["grid"])]
        if unknown:
            raise InputError(f"no run of grid {', '.join(map(repr, unknown))} in {results_dir}; runs there: "
                             f"{', '.join(dict.fromkeys(all_runs['grid'])) or '(none)'}")
    chosen = _choose(all_runs, df, cells, grids, run, where)
    out = Selection(rows=df.iloc[0:0])
    parts = []
    for grid, r in chosen.items():
        pairs = cells[cells["run_id"] == r["run_id"]][["cell_key", "metric_key"]]
        shown = df.merge(pairs, on=["cell_key", "metric_key"], how="inner")
        shown = shown[shown["grid"] == grid]
        parts.append(shown)
        out.runs[grid] = r
        out.notes[grid] = _notes(df[df["grid"] == grid], shown, len(pairs), r)
    if parts:
        out.rows = pd.concat(parts, ignore_index=True)
    return out


def _choose(all_runs, df, cells, grids, run, where) -> dict:
    """grid -> the run shown for it."""
    order = list(dict.fromkeys(all_runs["grid"]))
    wanted = [g for g in order if not grids or g in grids]
    if run is not None and not str(run).lstrip("-").isdigit():
        hits = all_runs[all_runs["run_id"].str.startswith(str(run))]
        if hits.empty:
            raise InputError(f"no run {run!r} in the store; runs: {', '.join(all_runs['run_id'][-8:]) or '(none)'}")
        if len(hits) > 1:
            raise InputError(f"run {run!r} is ambiguous: {', '.join(hits['run_id'])}")
        return {hits.iloc[0]["grid"]: hits.iloc[0]}
    out = {}
    for g in wanted:
        cand = all_runs[all_runs["grid"] == g]
        if where:
            cand = cand[[_matches(df, cells, rid, where) for rid in cand["run_id"]]]
            if cand.empty:
                continue
        if run is not None:
            k = int(run)
            if k >= 0 or -k > len(cand):
                raise InputError(f"--run {run}: grid {g} has {len(cand)} run(s); give -1 (the latest) .. -{len(cand)} "
                                 "or a run id")
            out[g] = cand.iloc[k]
        else:
            out[g] = cand.iloc[-1]
    if where and not out:
        raise InputError(f"no run has every cell with {where}; fields: num_samples, seeds, code_hash, options, ...")
    return out


def _matches(df, cells, run_id, where: dict) -> bool:
    pairs = cells[cells["run_id"] == run_id][["cell_key", "metric_key"]]
    rows = df.merge(pairs, on=["cell_key", "metric_key"], how="inner")
    if rows.empty:
        return False
    for k, v in where.items():
        if k not in rows:
            raise InputError(f"--where {k}=...: no such field; fields: {', '.join(rows.columns)}")
        if not (rows[k].astype(str) == str(v)).all():
            return False
    return True


def _notes(all_rows: pd.DataFrame, shown: pd.DataFrame, expected: int, r) -> list[str]:
    """What the store holds for this grid beyond the shown run, and what the run lacks."""
    notes = []
    if len(shown) < expected:
        notes.append(f"{expected - len(shown)} of the run's {expected} cell-metrics are not stored (the run "
                     f"{'was interrupted or is still running' if r['status'] == 'running' else 'stopped early'})")
    keys = set(zip(shown["cell_key"], shown["metric_key"]))
    other = all_rows[[k not in keys for k in zip(all_rows["cell_key"], all_rows["metric_key"])]]
    if other.empty:
        return notes
    why = []
    for col, name in DIFFERING:
        extra = sorted(set(other[col].astype(str)) - set(shown[col].astype(str)))
        if extra:
            shown_vals = ", ".join(sorted(set(shown[col].astype(str))))[:60]
            why.append(f"other {name} ({', '.join(extra)[:80]}; shown: {shown_vals})")
    notes.append(f"{len(other)} other stored cell-metrics of this grid are left out" +
                 (": " + "; ".join(why) if why else " (earlier runs of the same cells' settings)") +
                 ". Show another run with --run or --where FIELD=VALUE.")
    return notes
