"""The paper's reported numbers (`baselines.reported_results()`) as a DataFrame in the project's names, and the
measured-vs-reported comparison shown beside every measured table that has a published counterpart.

Mapping: a project model is matched to a paper (dataset, model) through PROJECT_MODELS or, failing that, the
paper key stored with its results (its `released_key`); a measured row is matched to a paper method by the
`paper_method` its grid entry declares (stored with each result), never by its solver's name. Methods the project
does not run (AMED-Plugin, EPD-Plugin, DLMS, S4S-Alt) appear in the reported tables only.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from baselines import reported_results
from solvers.errors import InputError

from . import tables

# project model name -> (paper dataset key, paper model) of the paper's tables (names of bench.models, plus aliases)
PROJECT_MODELS = {
    "cifar10": ("cifar10", "edm"), "ffhq": ("ffhq", "edm"), "afhqv2": ("afhqv2", "edm"),
    "imagenet64": ("imagenet64", "edm"), "lsun_bedroom": ("lsun_bedroom", "ldm"),
    "sd15": ("ms_coco", "sd-v1.5"), "flux": ("ms_coco", "flux.1-dev"), "flux_drawbench": ("drawbench", "flux.1-dev"),
}
PAPER_MODEL_OF = {"cifar10": "edm", "ffhq": "edm", "afhqv2": "edm", "imagenet64": "edm", "lsun_bedroom": "ldm",
                  "ms_coco": "sd-v1.5"}
# released-coefficient keys that differ from the paper tables' dataset keys
RELEASED_TO_PAPER = {"lsun_bedroom_ldm": "lsun_bedroom"}
FAMILY = {"handcrafted": "handcrafted", "learnable": "learned"}
PAPER_METRIC = {"fid": "fid", "fid50k": "fid", "fid_50k": "fid", "clip": "clip", "clip_score": "clip",
                "hpsv2.1": "hpsv2.1", "hpsv2": "hpsv2.1", "image_reward": "image_reward"}


def reported() -> pd.DataFrame:
    """Every reported cell: table, dataset, paper_model, method, family ("handcrafted"|"learned"), variant,
    nfe (int), metric, value (float), note."""
    return _reported().copy()


@lru_cache(maxsize=1)
def _reported() -> pd.DataFrame:
    df = pd.DataFrame(reported_results())
    df = df.rename(columns={"model": "paper_model"})
    df["family"] = df.pop("method_family").map(FAMILY)
    df["nfe"] = df["nfe"].astype(int)
    df["value"] = df["value"].astype(float)
    return df


def paper_key(model: str, stored_key: str = "") -> tuple[str, str] | None:
    """(paper dataset, paper model) a project model stands for, or None (e.g. the analytic models): by its name,
    or by the paper key stored with its results (its released-coefficient key)."""
    if model in PROJECT_MODELS:
        return PROJECT_MODELS[model]
    key = stored_key
    if key:
        dataset = RELEASED_TO_PAPER.get(key, key)
        if dataset in PAPER_MODEL_OF:
            return dataset, PAPER_MODEL_OF[dataset]
    return None


def paper_dataset(model: str, stored_key: str = "") -> str | None:
    key = paper_key(model, stored_key)
    return None if key is None else key[0]


def reported_table(dataset: str, metric: str = "fid", table: str = "1", paper_model: str | None = None) -> pd.DataFrame:
    """The paper's table for one dataset in the layout of `tables.pivot` (all methods it reports)."""
    rep = reported()
    sel = rep[(rep.dataset == dataset) & (rep.metric == metric) & (rep.table == table) & (rep.variant == "")]
    if paper_model is not None:
        sel = sel[sel.paper_model == paper_model]
    if sel.empty:
        raise InputError(f"the paper reports no {metric} for {dataset!r} in table {table}")
    sel = sel.assign(method=sel["method"], group=sel["family"].map(tables.GROUPS))
    order = list(dict.fromkeys(sel["method"]))
    t = sel.pivot_table(index=["group", "method"], columns="nfe", values="value", aggfunc="first")
    rows = sorted(t.index, key=lambda gm: (tables.GROUP_ORDER.index(gm[0]), order.index(gm[1])))
    t = t.reindex(pd.MultiIndex.from_tuples(rows, names=["group", "method"]))
    t.columns = pd.Index([int(c) for c in t.columns], name="NFE")
    return t


def tables_for(dataset: str, metric: str = "fid", paper_model: str | None = None) -> list[str]:
    """The paper tables that report `metric` for `dataset` (main table first, then the appendix)."""
    rep = reported()
    rep = rep if paper_model is None else rep[rep.paper_model == paper_model]
    ids = rep[(rep.dataset == dataset) & (rep.metric == metric) & (rep.variant == "")].table.unique().tolist()
    return sorted(ids, key=lambda t: (not t[0].isdigit(), t))


def compare(measured: pd.DataFrame, model: str, metric: str, table: str | None = None) -> pd.DataFrame | None:
    """Measured beside reported for one model: rows (group, method), columns (NFE, "measured"|"reported"|"ratio");
    ratio = measured / reported where both exist. Each measured row keeps its own label: two rows of one paper
    method (distilled and released DyWeight, say) are two rows, each against the paper's number, never averaged.
    None when the paper has no counterpart."""
    sel = measured[(measured.model == model) & (measured.metric == metric)]
    stored = next((k for k in sel["paper_key"] if k), "")
    key, pmetric = paper_key(model, stored), PAPER_METRIC.get(metric)
    if key is None or pmetric is None:
        return None
    dataset, pmodel = key
    candidates = tables_for(dataset, pmetric, pmodel)
    if not candidates:
        return None
    if table is None:  # the table whose NFEs cover most of the measured ones (the main table on ties)
        want = set(sel.nfe.astype(int))
        table = max(candidates, key=lambda t: (len(want & set(reported_table(dataset, pmetric, t, pmodel).columns)),
                                               -candidates.index(t)))
    rep = reported_table(dataset, pmetric, table, pmodel)
    sel = sel[(sel.paper_method != "") & (sel.status == "ok")]
    nfes = sorted(set(rep.columns) | set(sel.nfe.astype(int)))
    cols = pd.MultiIndex.from_product([nfes, ["measured", "reported", "ratio"]], names=["NFE", ""])
    reported_of = {m: (g, m) for g, m in rep.index}
    index, label_of = [], {}                             # (group, shown name) -> the measured label, if any
    for (group, method) in rep.index:                    # the paper's rows in its order, each measured label below
        labels = list(dict.fromkeys(sel[sel.paper_method == method].label))
        for lbl in labels:
            shown = (group, method if lbl == method else f"{lbl} ({method})")
            index.append(shown)
            label_of[shown] = lbl
        if not labels:
            index.append((group, method))
    for lbl in dict.fromkeys(sel.label):                 # measured methods the paper does not report here
        if lbl not in label_of.values():
            shown = (tables.GROUPS[str(sel[sel.label == lbl].family.iloc[0])], lbl)
            index.append(shown)
            label_of[shown] = lbl
    out = pd.DataFrame(np.nan, index=pd.MultiIndex.from_tuples(index, names=["group", "method"]), columns=cols)
    for (group, shown) in out.index:
        mine = sel[sel.label == label_of[(group, shown)]] if (group, shown) in label_of else sel.iloc[0:0]
        method = mine.paper_method.iloc[0] if len(mine) else shown
        for n in nfes:
            r = rep.loc[reported_of[method], n] if method in reported_of and n in rep.columns else np.nan
            at = mine[mine.nfe == n]
            m = float(at.value.iloc[0]) if len(at) == 1 else np.nan
            out.loc[(group, shown), (n, "reported")] = r
            out.loc[(group, shown), (n, "measured")] = m
            out.loc[(group, shown), (n, "ratio")] = m / r if np.isfinite(m) and np.isfinite(r) and r else np.nan
    return out


def compare_rows(cmp: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the comparison: "measured / reported (×ratio)" per NFE, "–" where missing."""
    nfes = list(dict.fromkeys(cmp.columns.get_level_values(0)))
    rows, last = [], None
    for (group, method), r in cmp.iterrows():
        cells = []
        for n in nfes:
            m, rep, q = r[(n, "measured")], r[(n, "reported")], r[(n, "ratio")]
            cell = f"{tables.fmt(m)} / {tables.fmt(rep)}"
            if np.isfinite(q):
                cell += f" (×{q:.2f})"
            cells.append(cell)
        rows.append([group if group != last else "", method] + cells)
        last = group
    return ["", "Method"] + [f"NFE {n}: measured / reported" for n in nfes], rows


def compare_markdown(cmp: pd.DataFrame) -> str:
    """The comparison as GitHub Markdown."""
    from tabulate import tabulate
    headers, rows = compare_rows(cmp)
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def compare_doc(cmp: pd.DataFrame):
    """The comparison as a report block."""
    from .doc import table
    headers, rows = compare_rows(cmp)
    return table(headers, rows, align=["left", "left"] + ["right"] * (len(headers) - 2))


def transfer_reported() -> pd.DataFrame:
    """Paper Table A.1: FID at NFE 3 of coefficients trained on one dataset (columns) evaluated on another (rows),
    plus the iPNDM column."""
    rep = reported()
    a1 = rep[rep.table == "A.1"]
    src = a1.variant.str.replace("coefficients_from=", "", regex=False)
    a1 = a1.assign(source=np.where(a1.variant == "", "iPNDM", "C.-" + src))
    order_rows = list(dict.fromkeys(a1.dataset))
    order_cols = [c for c in dict.fromkeys(a1.source) if c != "iPNDM"] + ["iPNDM"]
    m = a1.pivot_table(index="dataset", columns="source", values="value", aggfunc="first")
    return m.reindex(index=order_rows, columns=order_cols)
