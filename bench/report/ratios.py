"""Paired ratios: a method's metric ÷ the best of other rows at the same NFE, on the same seeds.

For a metric that is a mean of per-sample scores (the endpoint error, CLIP score, ...), the store keeps every
sample's score. At each NFE the reference is the best of the `against` rows by value (default: the handcrafted
rows), and each of the `rows` (default: the learned rows) gets mean(row) / mean(reference) with the 95 % percentile
bootstrap of that ratio over the pairs (bench.stats.paired_ratio): one resample of the shared seeds moves both
means, so the interval is far narrower than two independent ones. A grid's `[[ratios]]` tables name their rows:

    [[ratios]]
    title = "per-sample grids over the global schedules"     # optional
    rows = ["Instance-aware"]
    against = ["LD3", "GITS"]
    metrics = ["endpoint_error"]                             # optional; default every metric with scores

Marks: **bold** where the ratio is better than 1 beyond its interval (below 1 for a lower-is-better metric), *italic*
where it is worse beyond it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from bench import stats

from . import doc, tables


@dataclass
class RatioTable:
    title: str
    model: str
    metric: str
    metric_label: str
    higher: bool
    estimates: dict                  # (label, nfe) -> Estimate
    against: dict                    # nfe -> the reference row's label
    nfes: list
    rows: list


def specs(config: dict, rows: pd.DataFrame) -> list[dict]:
    """The grid's [[ratios]] tables, else the default: learned rows ÷ the best handcrafted row."""
    given = config.get("ratios") if isinstance(config, dict) else None
    if given:
        return [dict(r) for r in given]
    learned = list(dict.fromkeys(rows[rows["family"] == "learned"]["label"]))
    hand = list(dict.fromkeys(rows[rows["family"] == "handcrafted"]["label"]))
    if not learned or not hand:
        return []
    return [{"title": "learned ÷ the best handcrafted row", "rows": learned, "against": hand}]


def compute(rows: pd.DataFrame, scores: dict, spec: dict) -> list[RatioTable]:
    """One RatioTable per model and metric the spec covers that has per-sample scores on both sides."""
    out = []
    ok = rows[rows["status"] == "ok"]
    for (model, metric), part in ok.groupby(["model", "metric"], sort=False):
        if spec.get("metrics") and metric not in spec["metrics"]:
            continue
        higher = bool(part["higher_is_better"].iloc[0])
        est, against, nfes = {}, {}, []
        for nfe, at in part.groupby("nfe"):
            cand = at[at["label"].isin(spec["against"])]
            if cand.empty:
                continue
            best = cand.loc[cand["value"].idxmax() if higher else cand["value"].idxmin()]
            ref = scores.get((best["cell_key"], best["metric_key"]))
            if ref is None:
                continue
            for _, r in at[at["label"].isin(spec["rows"])].iterrows():
                mine = scores.get((r["cell_key"], r["metric_key"]))
                if mine is None or mine[0] != ref[0]:
                    continue                                # not paired: other seeds
                est[(r["label"], int(nfe))] = stats.paired_ratio(torch.as_tensor(mine[1]), torch.as_tensor(ref[1]))
                against[int(nfe)] = best["label"]
            if int(nfe) in against:
                nfes.append(int(nfe))
        if est:
            labels = [lbl for lbl in spec["rows"] if any(k[0] == lbl for k in est)]
            out.append(RatioTable(spec.get("title") or f"{', '.join(spec['rows'])} ÷ the best of "
                                  f"{', '.join(spec['against'])}", model, metric, str(part["metric_label"].iloc[0]),
                                  higher, est, against, sorted(nfes), labels))
    return out


def pairs(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """The (cell_key, metric_key) of every ok row of a metric with per-sample scores (a bootstrap interval)."""
    sel = rows[(rows["status"] == "ok") & rows["ci_method"].astype(str).str.startswith("bootstrap")]
    return list(zip(sel["cell_key"], sel["metric_key"]))


def _cell(e, higher: bool) -> tuple[str, str]:
    """(Markdown, HTML) of one ratio with its interval and mark."""
    if e is None or not math.isfinite(e.value):
        return tables.MISSING, tables.MISSING
    text = f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]" if np.isfinite([e.low, e.high]).all() else f"{e.value:.3f}"
    better = (e.low > 1) if higher else (e.high < 1)
    worse = (e.high < 1) if higher else (e.low > 1)
    if better:
        return f"**{text}**", f"<b>{text}</b>"
    if worse:
        return f"*{text}*", f"<i>{text}</i>"
    return text, text


def to_doc(t: RatioTable) -> doc.Table:
    md, html = [], []
    for label in t.rows:
        cells = [_cell(t.estimates.get((label, n)), t.higher) for n in t.nfes]
        md.append([label] + [c[0] for c in cells])
        html.append([doc.inline(label)] + [c[1] for c in cells])
    md.append(["(against)"] + [t.against.get(n, tables.MISSING) for n in t.nfes])
    html.append(["<i>against</i>"] + [doc.inline(t.against.get(n, tables.MISSING)) for n in t.nfes])
    return doc.Table(["Row"] + [f"NFE {n}" for n in t.nfes], md, html, ["left"] + ["right"] * len(t.nfes))
