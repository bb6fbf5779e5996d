"""Results tables in the paper's layout: methods as rows (grouped handcrafted / learnable), NFE as columns, the
best value of each column in bold and the second best underlined, "–" where a cell is missing.

`pivot` turns the tidy results (`bench.results.load`) into that matrix; `to_markdown` renders it with tabulate
(GitHub pipes; bold as **x**, underline as <ins>x</ins>), `to_latex` with pandas' Styler (booktabs rules,
\\textbf / \\underline).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from tabulate import tabulate
from solvers.base import InputError

MISSING = "–"
GROUPS = {"handcrafted": "Handcrafted", "learned": "Learnable", "learnable": "Learnable"}
GROUP_ORDER = ["Handcrafted", "Learnable"]
# Direction of the paper's metrics when the metric registry does not know them (lower is better otherwise).
HIGHER_IS_BETTER = {"clip": True, "hpsv2.1": True, "image_reward": True, "fid": False}


def higher_is_better(metric: str) -> bool:
    """The metric's direction: from the metric registry, else the paper's metrics, else lower is better."""
    try:
        from bench import metrics
        return bool(metrics.get(metric).higher_is_better)
    except Exception:
        return HIGHER_IS_BETTER.get(metric, False)


def metric_label(metric: str) -> str:
    try:
        from bench import metrics
        return metrics.get(metric).label or metric
    except Exception:
        return metric


def method_labels(df: pd.DataFrame) -> pd.Series:
    """Display name per row: the grid's label, marked "(AFS)"/"(no AFS)" only when one label appears with both."""
    label = df["label"].astype(str)
    both = df.groupby("label")["afs"].transform("nunique") > 1
    suffix = np.where(df["afs"].astype(bool), " (AFS)", " (no AFS)")
    return label.where(~both, label + pd.Series(suffix, index=df.index))


def pivot(df: pd.DataFrame, model: str, metric: str, grid: str | None = None) -> pd.DataFrame:
    """The (group, method) x NFE matrix of mean `value` for one model and metric; failed cells stay NaN.

    Row order: Handcrafted before Learnable, methods in the order the grid lists them."""
    sel = df[(df["model"] == model) & (df["metric"] == metric)]
    if grid is not None:
        sel = sel[sel["grid"] == grid]
    if sel.empty:
        raise InputError(f"no results for model {model!r} and metric {metric!r}"
                         + (f" in grid {grid!r}" if grid else ""))
    sel = sel.assign(method=method_labels(sel),
                     group=sel["family"].map(lambda f: GROUPS.get(str(f), str(f).capitalize())),
                     value=sel["value"].where(sel["status"] == "ok"))
    order = list(dict.fromkeys(sel["method"]))
    table = sel.pivot_table(index=["group", "method"], columns="nfe", values="value", aggfunc="mean",
                            dropna=False)
    # every method that was run keeps its row even if all its cells failed
    full = pd.MultiIndex.from_frame(sel[["group", "method"]].drop_duplicates())
    table = table.reindex(full)
    groups = [g for g in GROUP_ORDER if g in set(sel["group"])] + sorted(set(sel["group"]) - set(GROUP_ORDER))
    rows = sorted(table.index, key=lambda gm: (groups.index(gm[0]), order.index(gm[1])))
    table = table.reindex(pd.MultiIndex.from_tuples(rows, names=["group", "method"]))
    table = table.reindex(columns=sorted(table.columns))
    table.columns = pd.Index([int(c) for c in table.columns], name="NFE")
    return table


def ranks(table: pd.DataFrame, higher: bool = False) -> pd.DataFrame:
    """1 for the best finite value of each column, 2 for the second best (ties share a rank), 0 otherwise."""
    out = pd.DataFrame(0, index=table.index, columns=table.columns)
    for c in table.columns:
        col = table[c].astype(float)
        vals = sorted(set(col[np.isfinite(col)]), reverse=higher)
        for rank, v in enumerate(vals[:2], start=1):
            out.loc[col == v, c] = rank
    return out


def fmt(v) -> str:
    """Paper style: two decimals for values in [0.1, 1000), three significant digits otherwise; "–" if missing."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return MISSING
    v = float(v)
    if v == 0 or 0.1 <= abs(v) < 1000:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _cells(table: pd.DataFrame, higher: bool, bold, underline) -> list[list[str]]:
    rk = ranks(table, higher)
    rows, last = [], None
    for (group, method), vals in table.iterrows():
        cells = []
        for c, v in vals.items():
            s = fmt(v)
            r = rk.loc[(group, method), c]
            cells.append(bold(s) if r == 1 else underline(s) if r == 2 else s)
        rows.append([group if group != last else "", method] + cells)
        last = group
    return rows


def to_markdown(table: pd.DataFrame, higher: bool = False) -> str:
    """GitHub Markdown through tabulate: best **bold**, second <ins>underlined</ins>, missing "–"."""
    rows = _cells(table, higher, lambda s: f"**{s}**", lambda s: f"<ins>{s}</ins>")
    headers = ["", "Method"] + [f"NFE {c}" for c in table.columns]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True,
                    colalign=["left", "left"] + ["right"] * len(table.columns))


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return s


def to_latex(table: pd.DataFrame, higher: bool = False, caption: str | None = None,
             label: str | None = None) -> str:
    """A booktabs table via pandas' Styler: \\textbf for the best, \\underline for the second, "–" if missing.

    Needs \\usepackage{booktabs} in the preamble; a \\midrule separates the handcrafted and learnable groups."""
    rk = ranks(table, higher)
    shown = table.copy()
    shown.index = pd.MultiIndex.from_tuples([(_latex_escape(g), _latex_escape(m)) for g, m in table.index],
                                            names=[None, None])
    shown.columns = pd.MultiIndex.from_tuples([("NFE", str(c)) for c in table.columns])
    rk.index, rk.columns = shown.index, shown.columns
    styles = rk.apply(lambda col: col.map({1: "textbf: --rwrap;", 2: "underline: --rwrap;"}).fillna(""))
    styler = (shown.style.format(fmt, na_rep=MISSING)
              .apply(lambda _: styles, axis=None))
    tex = styler.to_latex(hrules=True, caption=None if caption is None else _latex_escape(caption), label=label, position_float="centering",
                          column_format="ll" + "r" * len(shown.columns), sparse_index=True,
                          multirow_align="naive", multicol_align="c", environment="table" if caption or label else None)
    # a rule between the groups (the first row of every group but the first starts with the group's name)
    lines = tex.splitlines()
    body = lines.index(r"\midrule") + 1 if r"\midrule" in lines else 0
    groups = [_latex_escape(g) for g in dict.fromkeys(table.index.get_level_values(0))][1:]
    out = []
    for i, line in enumerate(lines):
        if i > body and any(line.startswith(g + " &") for g in groups):
            out.append(r"\midrule")
        out.append(line)
    return "\n".join(out) + "\n"
