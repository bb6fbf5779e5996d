"""Regression check: fresh results against a stored baseline (a CSV of the store's result columns).

A cell is identified by (grid, model, label, solver, options, nfe, afs, schedule, metric); the fresh side is one
run's cells per grid (bench.store.select), so every comparison is between two measured cells, never an average.
By default a cell regressed when it got worse beyond the noise: the fresh value is worse than the baseline's (in the
metric's stored direction) and their 95 % intervals are disjoint (bench.stats.separable). A cell without an interval
on either side (an older baseline) falls back to the relative rule below. With an explicit tolerance (`rtol`,
`--tolerance`), the relative rule applies to every cell:

    lower-is-better metric:   fresh > baseline + rtol * |baseline| + atol
    higher-is-better metric:  fresh < baseline - rtol * |baseline| - atol

Verdicts: "ok", "improved", "regressed"; "failed" (the fresh cell failed or is not finite); "missing" (absent from
the fresh results); "unusable" (the baseline's own value is missing, failed or not finite, so nothing can be
compared); and, for fresh cells the baseline lacks, "new". `bench check` fails on regressed, failed, unusable and
(unless allowed) missing cells, and whenever it compared no cell at all.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench import stats
from solvers.errors import InputError, one_line

KEY = ["grid", "model", "label", "solver", "options", "nfe", "afs", "schedule", "metric"]
BASELINE_COLUMNS = KEY + ["family", "value", "ci_low", "ci_high", "ci_method", "higher_is_better", "status",
                          "num_samples", "seeds", "code_version", "torch_version", "device", "created_at"]
FALLBACK_RTOL = 0.02        # the relative rule's tolerance for cells without intervals


def parse_tolerances(items: list[str] | None, default: float | None = None) -> tuple[float | None, dict[str, float]]:
    """["0.05", "fd_exact=0.1"] -> (0.05, {"fd_exact": 0.1}); a bare number sets the default (None: intervals)."""
    per = {}
    for item in items or []:
        name, sep, val = item.rpartition("=")
        try:
            v = float(val)
        except ValueError:
            raise InputError(f"bad --tolerance {item!r}: give a relative tolerance like 0.05 or METRIC=0.05") from None
        if not (v >= 0 and math.isfinite(v)):
            raise InputError(f"bad --tolerance {item!r}: it must be a finite number >= 0")
        if sep:
            per[name] = v
        else:
            default = v
    return default, per


def write_baseline(df: pd.DataFrame, path: Path, grid: str | None = None) -> int:
    """Store the cells of `df` (optionally one grid) as a baseline CSV; returns the number of rows."""
    sel = df if grid is None else df[df.grid == grid]
    if sel.empty:
        raise InputError("no results to store as a baseline" + (f" for grid {grid!r}" if grid else ""))
    cols = [c for c in BASELINE_COLUMNS if c in sel.columns]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sel[cols].sort_values(KEY).to_csv(tmp, index=False, float_format="%.10g")
    os.replace(tmp, path)                                 # atomic: a kill never leaves half a baseline
    return len(sel)


def read_baseline(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no baseline file {path}; create one with `python -m bench check --baseline "
                                f"{path} --update`")
    try:
        df = pd.read_csv(path, dtype={"options": str, "schedule": str, "label": str}, keep_default_na=False,
                         na_values=[""])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a results baseline ({one_line(e)})") from None
    missing = [c for c in KEY + ["value"] if c not in df.columns]
    if missing:
        raise InputError(f"{path} is not a results baseline: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise InputError(f"{path} holds no baseline cells; write one with `python -m bench check --baseline {path} "
                         "--update`")
    return df


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in ("grid", "model", "label", "solver", "options", "schedule", "metric"):
        out[c] = out[c].fillna("").astype(str)
    out["nfe"] = out["nfe"].astype(int)
    out["afs"] = out["afs"].map(lambda v: str(v).strip().lower() in ("1", "true")).astype(bool)
    for c in ("value", "ci_low", "ci_high"):
        out[c] = pd.to_numeric(out[c], errors="coerce") if c in out else np.nan
    if "status" in out:
        out.loc[out["status"].astype(str) != "ok", ["value", "ci_low", "ci_high"]] = np.nan
    return out


def compare(baseline: pd.DataFrame, fresh: pd.DataFrame, rtol: float | None = None, atol: float = 0.0,
            per_metric: dict[str, float] | None = None, grids: list[str] | None = None) -> pd.DataFrame:
    """One row per baseline cell, plus one per fresh cell the baseline lacks ("new"), with columns KEY + baseline,
    fresh, change (relative, signed so that > 0 is worse), rule ("intervals" or the relative tolerance used),
    verdict (module docstring). `rtol` None: the interval rule; a number (or a `per_metric` entry): the relative rule
    with that tolerance. Raises InputError if the fresh side holds two cells for one key (they are never merged)."""
    per_metric = per_metric or {}
    base, new = _normalise(baseline), _normalise(fresh)
    if grids:
        base, new = base[base.grid.isin(grids)], new[new.grid.isin(grids)]
    dup = new[new.duplicated(KEY, keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise InputError(f"the fresh results hold {int((dup[KEY] == r[KEY]).all(axis=1).sum())} cells for "
                         f"{r.grid} / {r.model} / {r.label} / NFE {r.nfe} / {r.metric}; compare one run "
                         "(bench check --run ID)")
    new = new.rename(columns={"higher_is_better": "higher"})
    merged = base[KEY + ["value", "ci_low", "ci_high"]].merge(new[KEY + ["value", "ci_low", "ci_high", "higher"]],
                                                             on=KEY, how="outer", suffixes=("_base", "_fresh"),
                                                             indicator="found")
    rows = []
    for r in merged.itertuples(index=False):
        verdict, change, rule = _verdict(r, per_metric.get(r.metric, rtol), atol)
        rows.append({**{k: getattr(r, k) for k in KEY}, "baseline": r.value_base, "fresh": r.value_fresh,
                     "change": change, "rule": rule, "verdict": verdict})
    return pd.DataFrame(rows, columns=KEY + ["baseline", "fresh", "change", "rule", "verdict"])


def _verdict(r, tol, atol: float) -> tuple[str, float, str]:
    """(verdict, relative change, rule) of one merged row."""
    b, f = r.value_base, r.value_fresh
    if r.found == "right_only":
        return "new", np.nan, ""
    if not np.isfinite(b):
        return "unusable", np.nan, ""
    if r.found == "left_only":
        return "missing", np.nan, ""
    if not np.isfinite(f):
        return "failed", np.nan, ""
    iv_b, iv_f = (r.ci_low_base, r.ci_high_base), (r.ci_low_fresh, r.ci_high_fresh)
    by_intervals = tol is None and all(np.isfinite(v) for v in iv_b + iv_f)
    if tol is None and not by_intervals:
        tol = FALLBACK_RTOL
    sign = -1.0 if isinstance(r.higher, (bool, np.bool_)) and r.higher else 1.0
    worse = sign * (f - b)
    change = worse / abs(b) if b else (np.inf if worse > 0 else -np.inf if worse < 0 else 0.0)
    if by_intervals:
        apart = stats.separable(iv_b, iv_f)
        verdict = "regressed" if apart and worse > 0 else "improved" if apart and worse < 0 else "ok"
        return verdict, change, "intervals"
    allowed = tol * abs(b) + atol
    verdict = "regressed" if worse > allowed else "improved" if -worse > allowed else "ok"
    return verdict, change, f"rtol {tol:g}"
