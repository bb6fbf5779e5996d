"""The report's figures, each saved as PNG and PDF (matplotlib's Agg backend, seaborn styling), drawn from stored
results and artefacts only:

- metric vs NFE per model: one line per method in its fixed colour and marker (bench.report.style; learned methods
  dashed), points of one NFE offset a little so coinciding ones stay visible, 95 % intervals as error bars clipped
  at 0 for a metric that cannot be negative, each noise floor once as a grey band around a dotted line;
- coefficient tables as heatmaps (paper Fig. A.1): rows = steps (the AFS step first), columns = the history
  weights (oldest first), their sum and the time scale of the step's call; distilled and released;
- the cross-model transfer matrix (paper Table A.1) as a heatmap;
- distillation curves (paper Fig. 5): one panel per model, the loss smoothed (solid) over its raw values (faint),
  and the held-out error at its checkpoints;
- learned time grids, one row per solver on a log-sigma axis (hollow: the times its network sees);
- per-sample time grids: one line per sample over the grid index, coloured by the instance class it ends in;
- the numerical study (paper Figs. 3 and A.2): error vs complexity K and vs steps S.
Every function returns the paths it wrote.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

from solvers.errors import InputError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from . import style, tables  # noqa: E402

sns.set_theme(style="whitegrid", context="paper")
PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


def save(fig, base: Path) -> list[Path]:
    """Write `base`.png and `base`.pdf and close the figure."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        p = base.with_suffix(f".{ext}")
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        out.append(p)
    plt.close(fig)
    return out


def plain_log_axis(ax, axis: str = "y") -> None:
    """A log axis labelled with plain numbers (0.5, 2, 10), not powers of ten: 1-2-5 ticks over up to three
    decades of the plotted data, one tick a decade over more (the labels would overlap)."""
    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
    a.set_major_formatter(PLAIN)
    a.set_minor_formatter(NullFormatter())


# ---- metric vs NFE ------------------------------------------------------------------------------
def metric_vs_nfe(t: tables.Measured, model: str, base: Path) -> list[Path]:
    """One line per method with its 95 % intervals, each noise floor once as a band; log scale when the values span
    more than a decade."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    methods = [r for r in t.values.index if r[0] != tables.FLOOR]
    vals = t.values.to_numpy(dtype=float)
    nonneg = bool(np.nanmin(vals) >= 0) if np.isfinite(vals).any() else True
    spacing = np.diff(sorted(t.values.columns)).min() if len(t.values.columns) > 1 else 1
    for i, row in enumerate(methods):
        v = t.values.loc[row].astype(float)
        ok = np.isfinite(v)
        if not ok.any():
            continue
        x = np.asarray(v[ok].index, dtype=float) + (i - (len(methods) - 1) / 2) * 0.025 * spacing
        lo, hi = t.low.loc[row].astype(float)[ok], t.high.loc[row].astype(float)[ok]
        lo = lo.clip(lower=0) if nonneg else lo
        err = np.vstack([(v[ok] - lo).clip(lower=0).fillna(0), (hi - v[ok]).clip(lower=0).fillna(0)])
        ax.errorbar(x, v[ok].values, yerr=err, marker=style.marker(row[1]), markersize=4, capsize=2,
                    color=style.color(row[1]), label=row[1], linestyle=style.linestyle(row[0]), linewidth=1.2)
    for shade, row in zip((0.55, 0.35, 0.75), [r for r in t.values.index if r[0] == tables.FLOOR]):
        v, (lo, hi) = float(t.values.loc[row].iloc[0]), t.interval(row, t.values.columns[0])
        if np.isfinite(v):
            ax.axhline(v, color=str(shade), linestyle=":", linewidth=1, label=f"floor: {row[1]}")
            if np.isfinite(lo) and np.isfinite(hi):
                ax.axhspan(max(lo, 0) if nonneg else lo, hi, color=str(shade), alpha=0.2, linewidth=0)
    pos = vals[np.isfinite(vals) & (vals > 0)]
    if len(pos) and pos.max() / pos.min() > 10:
        ax.set_yscale("log")
        plain_log_axis(ax)
    ax.set_xticks(list(t.values.columns))
    ax.set_xlabel("NFE")
    ax.set_ylabel(t.label)
    ax.set_title(f"{model} ({'higher' if t.higher else 'lower'} is better)", fontsize=9)
    ax.legend(fontsize=6, frameon=True, loc="upper left", bbox_to_anchor=(1.02, 1))      # beside the curves
    return save(fig, base)


# ---- coefficient tables (Fig. A.1) --------------------------------------------------------------
def coefficient_matrix(rows: list[list[float]], time_scale: list[float], afs: bool) -> pd.DataFrame:
    """Steps x [w_{n-K+1}..w_n, sum w, s_n]: weights right-aligned (oldest first, empty before the history
    fills), the sum of each row (the implicit time shift) and the time scale of the step's network call (none
    for the analytic first step)."""
    K = max(len(r) for r in rows)
    cols = [f"w[n-{K - 1 - j}]" if j < K - 1 else "w[n]" for j in range(K)] + ["Σw", "s"]
    data = np.full((len(rows), K + 2), np.nan)
    scale = list(time_scale)
    offset = 1 if afs and len(scale) == len(rows) - 1 else 0
    for i, r in enumerate(rows):
        data[i, K - len(r):K] = r
        data[i, K] = sum(r)
        j = i - offset
        if 0 <= j < len(scale):
            data[i, K + 1] = scale[j]
    index = [("AFS" if afs and i == 0 else f"step {i}") for i in range(len(rows))]
    return pd.DataFrame(data, index=index, columns=cols)


def annotated_heatmap(ax, m: pd.DataFrame, cmap: str, vmin: float, vmax: float, fmt="{:.2f}",
                      fontsize: float = 7):
    """imshow + one text per finite cell (NaN cells left blank); cheaper than seaborn's heatmap for many panels."""
    data = m.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    norm = im.norm
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            dark = abs(norm(v) - 0.5) > 0.3 if cmap.startswith("RdBu") else norm(v) > 0.5   # viridis_r: dark high
            ax.text(j, i, fmt(v) if callable(fmt) else fmt.format(v), ha="center", va="center", fontsize=fontsize,
                    color="white" if dark else "black")
    ax.set_xticks(range(m.shape[1]), [str(c) for c in m.columns])
    ax.set_yticks(range(m.shape[0]), [str(r) for r in m.index])
    ax.grid(False)
    return im


def _heatmap(ax, m: pd.DataFrame, title: str):
    K = m.shape[1] - 2
    lim = max(1.0, float(np.nanmax(np.abs(m.to_numpy()))))
    annotated_heatmap(ax, m, "RdBu_r", -lim, lim)
    ax.axvline(K - 0.5, color="black", linewidth=1.5)
    ax.axvline(K + 0.5, color="black", linewidth=1.0)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)


def coefficient_heatmaps(panels: list[tuple[str, pd.DataFrame]], base: Path, title: str,
                         ncols: int = 4) -> list[Path]:
    """A grid of coefficient heatmaps, one panel per (title, coefficient_matrix)."""
    if not panels:
        raise InputError("no coefficients to plot")
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax, (name, m) in zip(axes.flat, panels):
        _heatmap(ax, m, name)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, base)


def released_panels(nfes=(3, 4)) -> list[tuple[str, pd.DataFrame]]:
    """The paper's released coefficients at the given NFEs (first checkpoint per (dataset, NFE)), as Fig. A.1."""
    from baselines import released_checkpoints
    seen, panels = set(), []
    for ck in released_checkpoints():
        key = (ck["dataset"], ck["nfe"])
        if ck["nfe"] in nfes and key not in seen:
            seen.add(key)
            panels.append((f"{ck['dataset']} NFE {ck['nfe']}",
                           coefficient_matrix(ck["weights_oldest_to_newest"], ck["time_scale"], ck["afs"])))
    return panels


# ---- transfer matrix (Table A.1) ----------------------------------------------------------------
def transfer_heatmap(matrix: pd.DataFrame, base: Path, title: str, value_label: str = "FID") -> list[Path]:
    """Rows = evaluated on, columns = coefficients from (diagonal = native); annotated values."""
    fig, ax = plt.subplots(figsize=(1.3 * matrix.shape[1] + 1.5, 0.7 * matrix.shape[0] + 1.2))
    vals = matrix.to_numpy(dtype=float)
    im = annotated_heatmap(ax, matrix, "viridis_r", np.nanmin(vals), np.nanmax(vals), tables.fmt, 8)
    fig.colorbar(im, ax=ax, label=value_label)
    ax.set_xlabel("coefficients from")
    ax.set_ylabel("evaluated on")
    ax.set_title(title, fontsize=9)
    return save(fig, base)


# ---- training curves (Fig. 5) -------------------------------------------------------------------
def smooth(values, weight: float = 0.9) -> np.ndarray:
    """An exponential moving average with bias correction (the first values are not pulled towards 0)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return np.asarray(out)


MAX_CURVES = 12          # per model in the training figure; beyond it only the smallest NFE is drawn
RAW_CURVES = 6           # the raw (unsmoothed) losses are drawn faint only up to this many curves per panel


def _curve_colours(names: list[str]) -> dict:
    """Each row its method's fixed colour (style.color); rows that would share one (variants of a method, as in
    an ablation study) each take the next colour no other row of the figure uses."""
    out, used = {}, set()
    for name in names:
        c = style.color(name)
        if c in used:
            c = next((t for t in style.PALETTE if t not in used), c)
        out[name] = c
        used.add(c)
    return out


def training_curves(runs: list[tuple[str, str, object]], base: Path, title: str) -> list[Path]:
    """`runs`: (model, "row NFE n", TrainingRecord). Per model a panel of the loss (smoothed; the raw curves faint
    when there are few) and, on the right, the held-out error at its checkpoints; one colour per row. A model with
    more than MAX_CURVES runs is drawn at its smallest NFE only (said in its panel title)."""
    runs = [r for r in runs if r[2].loss or r[2].eval_error]
    if not runs:
        raise InputError("no training curves recorded")
    models = list(dict.fromkeys(m for m, _, _ in runs))
    fig, axes = plt.subplots(len(models), 2, figsize=(9.5, 2.8 * len(models)), squeeze=False)
    for (a, b), model in zip(axes, models):
        mine = [(name.rsplit(" NFE ", 1)[0], name, rec) for m, name, rec in runs if m == model]
        heading = model
        if len(mine) > MAX_CURVES:
            low, total = min(int(name.rsplit(" NFE ", 1)[1]) for _, name, _ in mine), len(mine)
            mine = [r for r in mine if r[1].endswith(f" NFE {low}")]
            heading = f"{model}: NFE {low} shown, {len(mine)} of {total} runs (the cost table below lists all)"
        colours = _curve_colours(list(dict.fromkeys(row for row, _, _ in mine)))
        for row, name, rec in mine:
            c = colours[row]
            if rec.loss:
                steps = rec.step[:len(rec.loss)] or list(range(len(rec.loss)))
                if len(mine) <= RAW_CURVES:
                    a.plot(steps, rec.loss, color=c, alpha=0.2, linewidth=0.6)
                a.plot(steps, smooth(rec.loss), color=c, linewidth=1.2, label=name)
            if rec.eval_error:
                b.plot(rec.eval_step, rec.eval_error, color=c, marker=style.marker(row), markersize=3, label=name)
        for ax, y in ((a, "training loss"), (b, "held-out error vs teacher")):
            ax.set_xlabel("optimisation step")
            ax.set_ylabel(y, fontsize=8)
            if ax.lines:
                ax.set_yscale("log")
                plain_log_axis(ax)
            else:
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        a.set_title(heading, fontsize=9, loc="left")
        (b if b.lines else a).legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=True)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(hspace=0.45, wspace=0.3)
    return save(fig, base)


def learned_grids(rows: list[tuple[str, object]], base: Path, title: str) -> list[Path]:
    """`rows`: (name, TimeGrid). One row per solver: its grid points on a log-sigma axis (filled) and the times its
    network sees where they differ (hollow)."""
    if not rows:
        raise InputError("no learned time grids recorded")
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.32 * len(rows)))
    for y, (name, g) in enumerate(rows):
        c = style.color(name.rsplit(" NFE", 1)[0])
        ax.plot(g.timesteps, [y] * len(g.timesteps), "o", color=c, markersize=4)
        if isinstance(g.model_times, list) and g.model_times != g.timesteps:
            ax.plot(g.model_times, [y + 0.25] * len(g.model_times), "o", mfc="none", color=c, markersize=4)
    ax.set_xscale("log")
    plain_log_axis(ax, "x")
    ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=6)
    ax.invert_xaxis()
    ax.set_xlabel("sigma (filled: the solver's grid; hollow: the network's input times)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, base)


def per_sample_grids(rows: list[tuple[str, object]], base: Path, title: str) -> list[Path]:
    """`rows`: (name, SampleGrids). One panel per solver: sigma_k (log axis) against the grid index k, one thin line
    per sample, coloured by the component its sample ends in where recorded, and the global grid dashed black; one
    legend for the figure."""
    if not rows:
        raise InputError("no per-sample grids recorded")
    cols = min(3, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.8 * cols, 3.1 * nrows), squeeze=False)
    palette = sns.color_palette("tab10", 10)
    classes_seen = set()
    for ax, (name, rec) in zip(axes.flat, rows):
        grids = np.asarray(rec.grids, dtype=float)
        classes = rec.classes or [0] * len(grids)
        classes_seen.update(classes if rec.classes else [])
        k = np.arange(grids.shape[1])
        for row, c in zip(grids, classes):
            ax.plot(k, row, color=palette[c % 10], alpha=0.25, linewidth=0.7)
        if rec.global_grid:
            ax.plot(k, rec.global_grid, "k--o", linewidth=1.4, markersize=3)
        ax.set_yscale("log")
        plain_log_axis(ax)
        ax.set_xticks(k)
        ax.set_xlabel("grid index k", fontsize=7)
        ax.set_ylabel("sigma_k", fontsize=7)
        ax.set_title(name, fontsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color="k", linestyle="--", marker="o", markersize=3, label="global grid")]
    handles += [plt.Line2D([], [], color=palette[c % 10], label=f"ends in component {c}")
                for c in sorted(classes_seen)]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=min(4, len(handles)), frameon=True,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{title} ({len(rows[0][1].grids)} samples each)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save(fig, base)


# ---- the numerical study (Figs. 3 and A.2) ------------------------------------------------------
def _study_panel(ax, m: pd.DataFrame, x: str, fixed: str, value: int, teacher: pd.Series | None):
    palette = sns.color_palette("viridis", 4)
    sel = m[m[fixed] == value]
    for o in sorted(sel.order.unique()):
        for variant, ls in (("standard", "--"), ("optimized", "-")):
            s = sel[(sel.order == o) & (sel.variant == variant)].sort_values(x)
            ax.plot(s[x], s.rel_error, linestyle=ls, marker="o", markersize=3, color=palette[int(o) - 1],
                    label=f"AB-{o} {'optimised' if variant == 'optimized' else 'standard'}")
    if teacher is not None and x == "complexity":
        ax.plot(teacher.index, teacher.values, ":", color="red", label="Teacher (AB-4, many steps)")
    ax.set_yscale("log")
    plain_log_axis(ax)
    ax.set_xlabel("complexity K (polynomial degree)" if x == "complexity" else "steps S")
    ax.set_ylabel("relative L2 error")
    ax.set_title(f"{'S' if fixed == 'steps' else 'K'} = {value}", fontsize=8)
    if x == "steps":
        ax.invert_xaxis()   # fewer steps to the right, as the paper reads it ("decrease the number of steps")


def numerical_study_figures(df: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """Fig. 3 (one S and one K, the middle of the grid) and Fig. A.2 (every S and every K)."""
    from bench.studies.numerical_study import summary
    m = summary(df)
    few = m[m.variant != "teacher"]
    teacher = m[m.variant == "teacher"].set_index("complexity").rel_error
    Ss, Ks = sorted(few.steps.unique()), sorted(few.complexity.unique())
    S0, K0 = Ss[(len(Ss) - 1) // 2], Ks[len(Ks) // 2]
    out = []
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    _study_panel(a, few, "complexity", "steps", S0, teacher)
    _study_panel(b, few, "steps", "complexity", K0, None)
    a.set_title(f"(a) error vs complexity, S = {S0}", fontsize=9)
    b.set_title(f"(b) error vs steps, K = {K0}", fontsize=9)
    a.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out += save(fig, Path(out_dir) / f"{name}_fig3")
    ncols = 4
    nrows = math.ceil(len(Ss) / ncols) + math.ceil(len(Ks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    flat = list(axes.flat)
    for k, S in enumerate(Ss):
        _study_panel(flat[k], few, "complexity", "steps", S, teacher)
    first_k = math.ceil(len(Ss) / ncols) * ncols
    for k, K in enumerate(Ks):
        _study_panel(flat[first_k + k], few, "steps", "complexity", K, None)
    for ax in flat:
        if not ax.lines:
            ax.axis("off")
    flat[0].legend(fontsize=5, ncol=2)
    flat[first_k].legend(fontsize=5, ncol=2)
    fig.suptitle(f"Numerical study ({name}): {len(Ss) + len(Ks)} panels, mean over problems", fontsize=10)
    fig.tight_layout()
    out += save(fig, Path(out_dir) / f"{name}_figA2")
    return out
