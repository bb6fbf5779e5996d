"""Results tables in the paper's layout: methods as rows (grouped handcrafted / learnable), NFE as columns, the
noise floors below them, "–" where a cell is missing.

`measured` reads one model and metric from one run's stored results (bench.store.select): values, the bounds of
their 95 % intervals, the metric's direction and label, all stored with each result. `ranks` marks only what the
intervals support (bench.stats.separable): the best in bold and the second underlined when they stand apart,
ties as ties; `on_floor` marks values not separable from a noise floor. `to_markdown` renders with tabulate
(GitHub pipes), `to_latex` with pandas' Styler (booktabs rules). A plain matrix (the paper's reported numbers,
which carry no intervals) is ranked by value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tabulate import tabulate

from bench import stats
from solvers.errors import InputError

MISSING = "–"
GROUPS = {"handcrafted": "Handcrafted", "learned": "Learnable", "learnable": "Learnable", "floor": "Noise floor"}
GROUP_ORDER = ["Handcrafted", "Learnable", "Noise floor"]
FLOOR = "Noise floor"


def method_labels(df: pd.DataFrame) -> pd.Series:
    """Display name per row: the grid's label, marked "(AFS)"/"(no AFS)" only when one label appears with both."""
    label = df["label"].astype(str)
    both = df.groupby("label")["afs"].transform("nunique") > 1
    suffix = np.where(df["afs"].astype(bool), " (AFS)", " (no AFS)")
    return label.where(~both, label + pd.Series(suffix, index=df.index))


def pivot(df: pd.DataFrame, model: str, metric: str, grid: str | None = None, column: str = "value") -> pd.DataFrame:
    """The (group, method) x NFE matrix of `column` (the value, or an interval bound ci_low / ci_high) for one
    model and metric; failed cells stay NaN.

    Row order: Handcrafted, Learnable, then the noise floors, methods in the order the grid lists them. A floor
    row (family "floor", stored at NFE 0) holds the same value in every NFE column."""
    sel = df[(df["model"] == model) & (df["metric"] == metric)]
    if grid is not None:
        sel = sel[sel["grid"] == grid]
    if sel.empty:
        raise InputError(f"no results for model {model!r} and metric {metric!r}"
                         + (f" in grid {grid!r}" if grid else ""))
    sel = sel.assign(method=method_labels(sel),
                     group=sel["family"].map(lambda f: GROUPS.get(str(f), str(f).capitalize())),
                     value=sel[column].where(sel["status"] == "ok"))
    order = list(dict.fromkeys(sel["method"]))
    twice = sel[sel.duplicated(["group", "method", "nfe"], keep=False)]
    if len(twice):
        r = twice.iloc[0]
        raise InputError(f"{len(twice)} stored cells share one table cell ({model} / {r['method']} / NFE {r['nfe']} / "
                         f"{metric}); a table shows one run's cells (bench.store.select), never a mix")
    table = sel.pivot_table(index=["group", "method"], columns="nfe", values="value", aggfunc="first",
                            dropna=False)
    # every method that was run keeps its row even if all its cells failed
    full = pd.MultiIndex.from_frame(sel[["group", "method"]].drop_duplicates())
    table = table.reindex(full)
    groups = [g for g in GROUP_ORDER if g in set(sel["group"])] + sorted(set(sel["group"]) - set(GROUP_ORDER))
    rows = sorted(table.index, key=lambda gm: (groups.index(gm[0]), order.index(gm[1])))
    table = table.reindex(pd.MultiIndex.from_tuples(rows, names=["group", "method"]))
    table = table.reindex(columns=sorted(table.columns))
    floor_rows = table.index.get_level_values("group") == FLOOR
    if floor_rows.any() and 0 in table.columns and len(table.columns) > 1:
        table.loc[floor_rows, :] = np.repeat(table.loc[floor_rows, [0]].to_numpy(), len(table.columns), axis=1)
        table = table.drop(columns=0)
    table.columns = pd.Index([int(c) for c in table.columns], name="NFE")
    return table


@dataclass
class Measured:
    """A measured table: values with the bounds of their 95 % intervals (same index and columns) and the metric's
    direction. Built by `measured` from stored results only."""

    values: pd.DataFrame
    low: pd.DataFrame
    high: pd.DataFrame
    higher: bool
    label: str

    def interval(self, row, col) -> tuple[float, float]:
        return float(self.low.loc[row, col]), float(self.high.loc[row, col])


def measured(df: pd.DataFrame, model: str, metric: str, grid: str | None = None) -> Measured:
    """The stored table of one model and metric with its intervals, direction and label."""
    sel = df[(df["model"] == model) & (df["metric"] == metric)]
    values = pivot(df, model, metric, grid)
    return Measured(values, pivot(df, model, metric, grid, "ci_low").reindex_like(values),
                    pivot(df, model, metric, grid, "ci_high").reindex_like(values),
                    bool(sel["higher_is_better"].iloc[0]), str(sel["metric_label"].iloc[0]))


def instances(df: pd.DataFrame) -> dict[str, list[str]]:
    """Registered model -> the keys of its problem instances in the stored results (a grid's `instances`)."""
    sel = df[df["instance_of"].astype(str) != ""]
    return {base: list(dict.fromkeys(sel[sel["instance_of"] == base]["model"])) for base in
            dict.fromkeys(sel["instance_of"])}


def across_instances(df: pd.DataFrame, base: str, metric: str) -> tuple[Measured, pd.DataFrame, pd.DataFrame, int]:
    """One metric over every stored instance of `base`: the mean across instances with its 95 % Student-t
    interval (bench.stats.t_interval: the instances as independent draws of the problem), the smallest and the
    largest instance's value, and the number of instances. A cell missing or failed on some instance is missing
    ("–") here: a mean over fewer instances would not be comparable."""
    keys = instances(df)[base]
    tables = [pivot(df, k, metric) for k in keys]
    index = tables[0].index
    for t in tables[1:]:
        index = index.append(t.index[~t.index.isin(index)])
    columns = sorted(set().union(*(t.columns for t in tables)))
    cube = np.stack([t.reindex(index=index, columns=columns).to_numpy(dtype=float) for t in tables])
    est = [[stats.t_interval(cube[:, i, j], f"instances:{len(keys)}") if np.isfinite(cube[:, i, j]).all() else None
            for j in range(len(columns))] for i in range(len(index))]

    def frame(f):
        return pd.DataFrame([[f(e) if e is not None else math.nan for e in row] for row in est], index=index,
                            columns=pd.Index(columns, name="NFE"))
    sel = df[(df["instance_of"] == base) & (df["metric"] == metric)]
    mean = Measured(frame(lambda e: e.value), frame(lambda e: e.low), frame(lambda e: e.high),
                    bool(sel["higher_is_better"].iloc[0]), str(sel["metric_label"].iloc[0]))
    full = np.isfinite(cube).all(0)
    lo = pd.DataFrame(np.where(full, cube.min(0), math.nan), index=index, columns=mean.values.columns)
    hi = pd.DataFrame(np.where(full, cube.max(0), math.nan), index=index, columns=mean.values.columns)
    return mean, lo, hi, len(keys)


def spread_markdown(lo: pd.DataFrame, hi: pd.DataFrame) -> str:
    """The smallest – largest value per cell across instances, as a Markdown table."""
    rows, last = [], None
    for (group, method) in lo.index:
        rows.append([group if group != last else "", method] +
                    [f"{fmt(lo.loc[(group, method), c])} – {fmt(hi.loc[(group, method), c])}"
                     if np.isfinite(lo.loc[(group, method), c]) else MISSING for c in lo.columns])
        last = group
    return _github(rows, lo.columns)


def ranks(table: pd.DataFrame, higher: bool = False, low: pd.DataFrame | None = None,
          high: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per column, over the methods (noise floors excluded): 1 for the best value, 2 for the second, 3 for a
    value tied for best, 0 otherwise.

    Without intervals (none given, or none stored in that column: an older store), the best and second best
    finite values (equal values share a rank), as the paper marks its tables. With intervals, a
    rank is earned: 1 only when the best value's interval is disjoint from every other method's, 2 only when the
    second's is disjoint from every method below it; methods whose intervals overlap the best's are all 3
    (tied for best) and nothing is bold."""
    out = pd.DataFrame(0, index=table.index, columns=table.columns)
    methods = [r for r in table.index if r[0] != FLOOR]
    for c in table.columns:
        col = table.loc[methods, c].astype(float)
        col = col[np.isfinite(col)]
        if low is None or high is None or not np.isfinite(low.loc[col.index, c].astype(float)).any():
            vals = sorted(set(col), reverse=higher)
            for rank, v in enumerate(vals[:2], start=1):
                out.loc[col.index[col == v], c] = rank
            continue
        order = list(col.sort_values(ascending=not higher).index)
        if len(order) < 2:
            continue
        iv = {r: (float(low.loc[r, c]), float(high.loc[r, c])) for r in order}
        tied = [r for r in order[1:] if not stats.separable(iv[order[0]], iv[r])]
        if tied:
            out.loc[[order[0]] + tied, c] = 3
            continue
        out.loc[order[0], c] = 1
        if len(order) > 2 and all(stats.separable(iv[order[1]], iv[r]) for r in order[2:]):
            out.loc[order[1], c] = 2
    return out


def on_floor(t: Measured) -> pd.DataFrame:
    """True where a method's interval overlaps a noise floor's (same column): not separable from the floor."""
    out = pd.DataFrame(False, index=t.values.index, columns=t.values.columns)
    floors = [r for r in t.values.index if r[0] == FLOOR]
    for r in t.values.index:
        if r[0] == FLOOR:
            continue
        for c in t.values.columns:
            if np.isfinite(t.values.loc[r, c]):
                out.loc[r, c] = any(np.isfinite(t.values.loc[f, c]) and
                                    not stats.separable(t.interval(r, c), t.interval(f, c)) for f in floors)
    return out


def non_monotone(t: Measured) -> dict[str, list[tuple[int, int]]]:
    """Method -> the NFE steps (a, b), a < b adjacent columns, where it is worse at the larger NFE and the two
    intervals are disjoint: a curve that rises with NFE beyond the noise (noise floors excluded)."""
    out: dict[str, list[tuple[int, int]]] = {}
    cols = list(t.values.columns)
    for r in t.values.index:
        if r[0] == FLOOR:
            continue
        for a, b in zip(cols, cols[1:]):
            va, vb = float(t.values.loc[r, a]), float(t.values.loc[r, b])
            worse = vb < va if t.higher else vb > va
            if np.isfinite(va) and np.isfinite(vb) and worse and stats.separable(t.interval(r, a), t.interval(r, b)):
                out.setdefault(r[1], []).append((int(a), int(b)))
    return out


def fmt(v) -> str:
    """Paper style: two decimals for values in [0.1, 1000), three significant digits otherwise; "–" if missing."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return MISSING
    v = float(v)
    if v == 0 or 0.1 <= abs(v) < 1000:
        return f"{v:.2f}"
    return f"{v:.3g}"


def fmt_interval(v, low, high, pm: str = "±") -> str:
    """"value ± half-width" (bench.stats.format_interval); `fmt(v)` without an interval; "–" if missing."""
    if v is None or not math.isfinite(float(v)):
        return MISSING
    return stats.format_interval(float(v), low, high, pm) or fmt(v)


def _cells(table, higher: bool, bold, underline, tied, floor_mark, pm: str = "±") -> list[list[str]]:
    m = table if isinstance(table, Measured) else None
    values = m.values if m else table
    rk = ranks(values, higher, m.low if m else None, m.high if m else None)
    floor = on_floor(m) if m else None
    rows, last = [], None
    for (group, method), vals in values.iterrows():
        cells = []
        for c, v in vals.items():
            s = fmt_interval(v, m.low.loc[(group, method), c], m.high.loc[(group, method), c], pm) if m else fmt(v)
            r = rk.loc[(group, method), c]
            s = bold(s) if r == 1 else underline(s) if r == 2 else tied(s) if r == 3 else s
            if floor is not None and floor.loc[(group, method), c]:
                s = floor_mark(s)
            cells.append(s)
        rows.append([group if group != last else "", method] + cells)
        last = group
    return rows


LEGEND = ("Values are means with their 95 % intervals (± half-width; bench.stats: bootstrap for the endpoint error "
          "and other per-sample means, jackknife or seed-set replicas for Fréchet distances; a distance's interval "
          "clipped at 0 is written as its bounds, [0, high]). **Bold**: best, its "
          "interval disjoint from every other method's; <ins>underlined</ins>: second, disjoint from every method "
          "below it; *italic*: tied for best (intervals overlap, so no winner is marked); ° : not separable from a "
          "noise floor (its interval overlaps a floor row's); –: a missing or failed cell.")


def to_markdown(table, higher: bool | None = None) -> str:
    """GitHub Markdown through tabulate. A `Measured` table shows intervals and earned ranks (`ranks`, LEGEND); a
    plain matrix (reported numbers) bolds the best and underlines the second. Missing: "–"."""
    if higher is None:
        higher = table.higher if isinstance(table, Measured) else False
    rows = _cells(table, higher, lambda s: f"**{s}**", lambda s: f"<ins>{s}</ins>", lambda s: f"*{s}*",
                  lambda s: f"{s} °")
    return _github(rows, (table.values if isinstance(table, Measured) else table).columns)


def to_doc(table, higher: bool | None = None):
    """The table as a report block (bench.report.doc.Table): the Markdown cells of `to_markdown` and HTML cells with
    the same marks (<b> best, <u> second, <i> tied, ° on the noise floor)."""
    import html as _html

    from .doc import Table
    if higher is None:
        higher = table.higher if isinstance(table, Measured) else False
    nfes = (table.values if isinstance(table, Measured) else table).columns
    md = _cells(table, higher, lambda s: f"**{s}**", lambda s: f"<ins>{s}</ins>", lambda s: f"*{s}*",
                lambda s: f"{s} °")
    marked = _cells(table, higher, lambda s: f"<b>{s}</b>", lambda s: f"<u>{s}</u>", lambda s: f"<i>{s}</i>",
                    lambda s: f"{s}&nbsp;°")
    html_rows = [[_html.escape(r[0]), _html.escape(r[1])] + r[2:] for r in marked]
    return Table(["", "Method"] + [f"NFE {c}" for c in nfes], md, html_rows,
                 ["left", "left"] + ["right"] * len(nfes))


def _github(rows: list[list[str]], nfes) -> str:
    """Rows of [group, method, cell per NFE] as a GitHub pipe table (tabulate), the cells right-aligned."""
    return tabulate(rows, headers=["", "Method"] + [f"NFE {c}" for c in nfes], tablefmt="github",
                    disable_numparse=True, colalign=["left", "left"] + ["right"] * len(nfes))


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return s


def to_latex(table, higher: bool | None = None, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs table via pandas' Styler with the marks of `to_markdown`: \\textbf best, \\underline second,
    \\textit tied for best, $^\\circ$ on the noise floor, "value $\\pm$ half-width" for a `Measured` table, "–" if
    missing.

    Needs \\usepackage{booktabs} in the preamble; a \\midrule separates the groups."""
    if higher is None:
        higher = table.higher if isinstance(table, Measured) else False
    values = table.values if isinstance(table, Measured) else table
    cells = _cells(table, higher, lambda s: rf"\textbf{{{s}}}", lambda s: rf"\underline{{{s}}}",
                   lambda s: rf"\textit{{{s}}}", lambda s: s + r"$^\circ$", pm=r"$\pm$")
    shown = pd.DataFrame([r[2:] for r in cells], index=pd.MultiIndex.from_tuples(
        [(_latex_escape(g), _latex_escape(m)) for g, m in values.index], names=[None, None]),
        columns=pd.MultiIndex.from_tuples([("NFE", str(c)) for c in values.columns]))
    tex = shown.style.to_latex(hrules=True, caption=None if caption is None else _latex_escape(caption), label=label,
                               position_float="centering", column_format="ll" + "r" * len(shown.columns),
                               sparse_index=True, multirow_align="naive", multicol_align="c",
                               environment="table" if caption or label else None)
    # a rule between the groups (the first row of every group but the first starts with the group's name)
    lines = tex.splitlines()
    body = lines.index(r"\midrule") + 1 if r"\midrule" in lines else 0
    groups = [_latex_escape(g) for g in dict.fromkeys(values.index.get_level_values(0))][1:]
    out = []
    for i, line in enumerate(lines):
        if i > body and any(line.startswith(g + " &") for g in groups):
            out.append(r"\midrule")
        out.append(line)
    return "\n".join(out) + "\n"
