"""The report's figures, each saved as PNG and PDF (matplotlib's Agg backend, seaborn styling):

- metric vs NFE per model, one line per solver;
- DyWeight coefficients as heatmaps (paper Fig. A.1): rows = steps (the AFS step first), columns = the history
  weights w_{n,i} (oldest first), their sum and the time scale s_n; for distilled and released coefficients;
- the cross-model transfer matrix (paper Table A.1) as a heatmap;
- distillation training curves (paper Fig. 5): loss and held-out error against the optimisation step;
- learned time grids (the saved state's `timesteps`, and `model_times` where a solver decouples them), one row per
  solver on a log-sigma axis;
- per-sample time grids (a distilled solver's recorded `sample_grids`): one line per sample over the grid
  index, coloured by the instance class it ends in, beside the global grid it deviates from;
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

from . import tables  # noqa: E402

sns.set_theme(style="whitegrid", context="paper")


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


# ---- metric vs NFE ------------------------------------------------------------------------------
def metric_vs_nfe(df: pd.DataFrame, model: str, metric: str, base: Path, grid: str | None = None) -> list[Path]:
    """One line per solver (dashed for learned ones) with its 95 % intervals as error bars, each noise floor as a
    grey band (its interval) around a dotted line; log scale when the values span more than a decade."""
    t = tables.measured(df, model, metric, grid)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    methods = [r for r in t.values.index if r[0] != tables.FLOOR]
    palette = sns.color_palette("tab10", len(methods))
    for color, row in zip(palette, methods):
        v = t.values.loc[row].astype(float)
        ok = np.isfinite(v)
        lo, hi = t.low.loc[row].astype(float)[ok], t.high.loc[row].astype(float)[ok]
        err = np.vstack([(v[ok] - lo).clip(lower=0).fillna(0), (hi - v[ok]).clip(lower=0).fillna(0)])
        ax.errorbar(v[ok].index, v[ok].values, yerr=err, marker="o", markersize=3, capsize=2, color=color,
                    label=row[1], linestyle="--" if row[0] == "Learnable" else "-")
    for shade, row in zip((0.55, 0.35, 0.75), [r for r in t.values.index if r[0] == tables.FLOOR]):
        v, (lo, hi) = float(t.values.loc[row].iloc[0]), t.interval(row, t.values.columns[0])
        if np.isfinite(v):
            ax.axhline(v, color=str(shade), linestyle=":", linewidth=1, label=f"floor: {row[1]}")
            if np.isfinite(lo) and np.isfinite(hi):
                ax.axhspan(lo, hi, color=str(shade), alpha=0.2, linewidth=0)
    vals = t.values.to_numpy(dtype=float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if len(vals) and vals.max() / vals.min() > 10:
        ax.set_yscale("log")
    ax.set_xticks(list(t.values.columns))
    ax.set_xlabel("NFE")
    ax.set_ylabel(t.label + (" (higher is better)" if t.higher else " (lower is better)"))
    ax.set_title(f"{model}: {t.label} vs NFE (95 % intervals)")
    ax.legend(fontsize=6, frameon=True, loc="upper left", bbox_to_anchor=(1.02, 1))      # beside the curves
    return save(fig, base)


# ---- DyWeight coefficients (Fig. A.1) -----------------------------------------------------------
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


def distilled_solvers(results_dir: Path) -> list[dict]:
    """Every saved learned solver under <results_dir>/solvers/<grid>/<model>/<label>-nfe<N>.json, with its path
    parts (`has_weight_rows`: it holds DyWeight's weight rows, what the coefficient heatmaps draw)."""
    import json
    out = []
    root = Path(results_dir) / "solvers"
    for p in sorted(root.glob("*/*/*.json")):
        try:
            st = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(st, dict) or not isinstance(st.get("solver"), str):
            continue
        grid, model = p.parent.parent.name, p.parent.name
        out.append({"path": p, "grid": grid, "model": model, "name": p.stem, "state": st,
                    "has_weight_rows": "weights_oldest_to_newest" in st})
    return out


def distilled_panels(solvers: list[dict]) -> list[tuple[str, pd.DataFrame]]:
    return [(f"{s['model']} {s['name']}", coefficient_matrix(s["state"]["weights_oldest_to_newest"],
                                                             s["state"]["time_scale"], bool(s["state"]["afs"])))
            for s in solvers]


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
def training_curves(solvers: list[dict], base: Path, title: str) -> list[Path]:
    """Loss (left) and held-out error (right) against the optimisation step, one line per distilled solver.
    A run whose metadata lacks a curve (e.g. "loss" holding the loss's name, not its values) skips that panel."""
    runs = [(f"{s['model']} {s['name']}", s["state"].get("metadata", {}).get("training") or {}) for s in solvers]
    has_loss = lambda t: isinstance(t.get("loss"), list) and isinstance(t.get("step"), list)  # noqa: E731
    has_eval = lambda t: isinstance(t.get("eval_error"), list) and len(t.get("eval_error")) > 0  # noqa: E731
    runs = [(n, t) for n, t in runs if has_loss(t) or has_eval(t)]
    if not runs:
        raise InputError("no training curves recorded in the distilled solvers")
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    palette = sns.color_palette("tab10", len(runs))
    for color, (name, t) in zip(palette, runs):
        if has_loss(t):
            a.plot(t["step"][:len(t["loss"])], t["loss"], color=color, label=name, linewidth=1)
        if has_eval(t):
            b.plot(t["eval_step"], t["eval_error"], color=color, marker="o", markersize=3, label=name)
    for ax, y in ((a, "training loss"), (b, "held-out error vs teacher")):
        ax.set_xlabel("optimisation step")
        ax.set_ylabel(y)
        if ax.lines:
            ax.set_yscale("log")
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, base)


def learned_grids(solvers: list[dict], base: Path, title: str) -> list[Path]:
    """One row per saved solver whose state records a learned grid (`timesteps`): its points on a log-sigma axis
    (filled), and the times its network sees where they differ (`model_times`, hollow)."""
    rows = [(f"{s['model']} {s['name']}", s["state"]) for s in solvers if isinstance(s["state"].get("timesteps"), list)]
    if not rows:
        raise InputError("no learned time grids recorded in the saved solvers")
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.32 * len(rows)))
    palette = sns.color_palette("tab10", len(rows))
    for y, (color, (name, st)) in enumerate(zip(palette, rows)):
        ax.plot(st["timesteps"], [y] * len(st["timesteps"]), "o", color=color, markersize=4)
        model_times = st.get("model_times")
        if isinstance(model_times, list) and model_times != st["timesteps"]:
            ax.plot(model_times, [y + 0.25] * len(model_times), "o", mfc="none", color=color, markersize=4)
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=6)
    ax.invert_xaxis()
    ax.set_xlabel("sigma (filled: the solver's grid; hollow: the model's input times)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, base)


def per_sample_grids(solvers: list[dict], base: Path, title: str) -> list[Path]:
    """One panel per saved solver that recorded per-sample grids (metadata "sample_grids"): sigma_k (log axis)
    against the grid index k, one thin line per sample, coloured by the component its sample ends in where the
    model names one ("classes"), and the solver's global grid (`timesteps`) as a thick black dashed line."""
    rows = [(f"{s['model']} {s['name']}", s["state"]) for s in solvers
            if isinstance(s["state"].get("metadata", {}).get("sample_grids"), dict)]
    if not rows:
        raise InputError("no per-sample grids recorded in the saved solvers")
    cols = min(3, len(rows))
    fig, axes = plt.subplots(math.ceil(len(rows) / cols), cols, figsize=(3.6 * cols, 3.0 * math.ceil(len(rows) / cols)),
                             squeeze=False)
    for ax, (name, st) in zip(axes.flat, rows):
        rec = st["metadata"]["sample_grids"]
        grids = np.asarray(rec["grids"], dtype=float)
        classes = rec.get("classes") or [0] * len(grids)
        palette = sns.color_palette("tab10", max(classes) + 1)
        k = np.arange(grids.shape[1])
        for row, c in zip(grids, classes):
            ax.plot(k, row, color=palette[c], alpha=0.25, linewidth=0.7)
        if isinstance(st.get("timesteps"), list):
            ax.plot(k, st["timesteps"], "k--o", linewidth=1.6, markersize=3, label="global grid")
        if rec.get("classes"):
            for c in sorted(set(classes)):
                ax.plot([], [], color=palette[c], label=f"ends in component {c}")
        ax.set_yscale("log")
        ax.set_xticks(k)
        ax.set_xlabel("grid index k")
        ax.set_ylabel("sigma_k")
        ax.set_title(f"{name} ({len(grids)} samples)", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, base)


# ---- the numerical study (Figs. 3 and A.2) ------------------------------------------------------
def _study_panel(ax, m: pd.DataFrame, x: str, fixed: str, value: int, teacher: pd.Series | None):
    palette = sns.color_palette("viridis", 4)
    sel = m[m[fixed] == value]
    for o in sorted(sel.order.unique()):
        for variant, style in (("standard", "--"), ("optimized", "-")):
            s = sel[(sel.order == o) & (sel.variant == variant)].sort_values(x)
            ax.plot(s[x], s.rel_error, linestyle=style, marker="o", markersize=3, color=palette[int(o) - 1],
                    label=f"AB-{o} {'optimised' if variant == 'optimized' else 'standard'}")
    if teacher is not None and x == "complexity":
        ax.plot(teacher.index, teacher.values, ":", color="red", label="Teacher (AB-4, many steps)")
    ax.set_yscale("log")
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
    n = len(Ss) + len(Ks)
    ncols = 4
    nrows = math.ceil(len(Ss) / ncols) + math.ceil(len(Ks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    flat = list(axes.flat)
    k = 0
    for S in Ss:
        _study_panel(flat[k], few, "complexity", "steps", S, teacher); k += 1
    k = math.ceil(len(Ss) / ncols) * ncols
    first_k = k
    for K in Ks:
        _study_panel(flat[k], few, "steps", "complexity", K, None); k += 1
    for i, ax in enumerate(flat):
        if not ax.lines:
            ax.axis("off")
    flat[0].legend(fontsize=5, ncol=2)
    flat[first_k].legend(fontsize=5, ncol=2)
    fig.suptitle(f"Numerical study ({name}): {n} panels, mean over problems", fontsize=10)
    fig.tight_layout()
    out += save(fig, Path(out_dir) / f"{name}_figA2")
    return out
