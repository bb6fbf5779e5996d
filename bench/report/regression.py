"""Regression check: fresh results against a stored baseline (a CSV of `bench.results.load`'s columns).

A cell is identified by (grid, model, label, solver, options, nfe, afs, schedule, metric). By default it
regressed when it got worse beyond the noise: the fresh value is worse than the baseline's (in the metric's
stored direction) and their 95 % intervals are disjoint (bench.stats.separable). A cell without an interval on
either side (an older baseline) falls back to the relative rule below. With an explicit tolerance (`rtol`,
`--tolerance`), the relative rule applies to every cell:

    lower-is-better metric:   fresh > baseline + rtol * |baseline| + atol
    higher-is-better metric:  fresh < baseline - rtol * |baseline| - atol

A cell also regressed when the baseline value was finite and the fresh cell failed (NaN/inf, status "failed").
A baseline cell that is absent from the fresh results is "missing" (a failure unless allowed); improvements by
the same rule are listed so the author can refresh the baseline.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench import stats
from solvers.errors import InputError

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
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sel[cols].sort_values(KEY).to_csv(path, index=False, float_format="%.10g")
    return len(sel)


def read_baseline(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no baseline file {path}; create one with `python -m bench check --baseline "
                                f"{path} --update`")
    df = pd.read_csv(path, dtype={"options": str, "schedule": str, "label": str}, keep_default_na=False,
                     na_values=[""])
    missing = [c for c in KEY + ["value"] if c not in df.columns]
    if missing:
        raise InputError(f"{path} is not a results baseline: missing column(s) {', '.join(missing)}")
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
    """One row per baseline cell with columns KEY + baseline, fresh, change (relative, signed so that > 0 is
    worse), rule ("intervals" or the relative tolerance used), verdict ("ok" | "regressed" | "improved" |
    "failed" | "missing"). `rtol` None: the interval rule (module doc); a number (or a `per_metric` entry): the
    relative rule with that tolerance."""
    per_metric = per_metric or {}
    base, new = _normalise(baseline), _normalise(fresh)
    if grids:
        base = base[base.grid.isin(grids)]
    new = new.groupby(KEY, as_index=False, dropna=False).agg(
        value=("value", "mean"), ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"),
        higher=("higher_is_better", "first"))
    merged = base[KEY + ["value", "ci_low", "ci_high"]].merge(new, on=KEY, how="left", suffixes=("_base", "_fresh"),
                                                             indicator="found")
    rows = []
    for r in merged.itertuples(index=False):
        b, f = r.value_base, r.value_fresh
        tol = per_metric.get(r.metric, rtol)
        iv_b, iv_f = (r.ci_low_base, r.ci_high_base), (r.ci_low_fresh, r.ci_high_fresh)
        by_intervals = tol is None and all(np.isfinite(v) for v in iv_b + iv_f)
        if tol is None and not by_intervals:
            tol = FALLBACK_RTOL
        sign = -1.0 if isinstance(r.higher, (bool, np.bool_)) and r.higher else 1.0
        allowed = tol * abs(b) + atol if tol is not None and np.isfinite(b) else np.nan
        if r.found == "left_only":
            verdict, change = "missing", np.nan
        elif not np.isfinite(f):
            verdict, change = ("failed" if np.isfinite(b) else "ok"), np.nan
        elif not np.isfinite(b):
            verdict, change = "ok", np.nan          # fixed a cell that failed in the baseline
        else:
            worse = sign * (f - b)
            change = worse / abs(b) if b else (np.inf if worse > 0 else -np.inf if worse < 0 else 0.0)
            if by_intervals:
                apart = stats.separable(iv_b, iv_f)
                verdict = "regressed" if apart and worse > 0 else "improved" if apart and worse < 0 else "ok"
            else:
                verdict = "regressed" if worse > allowed else "improved" if -worse > allowed else "ok"
        rows.append({**{k: getattr(r, k) for k in KEY}, "baseline": b, "fresh": f, "change": change,
                     "rule": "intervals" if by_intervals else f"rtol {tol:g}", "verdict": verdict})
    return pd.DataFrame(rows, columns=KEY + ["baseline", "fresh", "change", "rule", "verdict"])
