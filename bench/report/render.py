"""Render stored results into <reports_dir>: per sampling grid `<grid>.md` (+ `<grid>.tex` with every table in
LaTeX), per study `<study>.md`, figures under `figures/` (PNG + PDF), and `index.md` linking them.

Data flows one way: results (bench.results.load, <results_dir>/solvers, <results_dir>/studies) -> report.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import paper, plots, tables
from solvers.errors import InputError

FIG = "figures"


def _img(path: Path, reports_dir: Path, alt: str) -> str:
    png = Path(path).relative_to(reports_dir).as_posix()
    return f"![{alt}]({png}) ([PDF]({Path(png).with_suffix('.pdf').as_posix()}))"


def _provenance(g: pd.DataFrame) -> str:
    def one(col):
        vals = sorted({str(v) for v in g[col].dropna() if str(v)})
        return ", ".join(vals) if vals else "–"
    n_ok = int((g.status == "ok").sum())
    return "\n".join([
        f"- cells × metrics: {len(g)} ({n_ok} ok, {len(g) - n_ok} failed)",
        f"- samples per cell: {one('num_samples')}; seeds: {one('seeds')}",
        f"- code version: {one('code_version')}; torch {one('torch_version')}; device: {one('device')}",
        f"- wall time of the cells: {g.drop_duplicates('cell_key').wall_time.sum():.1f} s" if "cell_key" in g
        else f"- wall time: {g.wall_time.sum():.1f} s",
        f"- created: {g.created_at.min()} – {g.created_at.max()}",
    ])


def _paper_key(g: pd.DataFrame, model: str) -> str:
    keys = [k for k in g[g.model == model].paper_key if k]
    return keys[0] if keys else ""


def _interval_note(sel: pd.DataFrame) -> str:
    """How the table's intervals were estimated, from the stored `ci_method`s (bench.stats)."""
    kinds = sorted({m for m in sel.ci_method if m})
    if not kinds:
        return ("Intervals: not stored for these results (an older store); ranked by value, as the paper ranks "
                "its tables.")
    what = {"bootstrap": "percentile bootstrap of the mean over samples ({} resamples)",
            "jackknife": "delete-a-group jackknife over {} groups of samples (normal interval)",
            "replicas": "Student-t interval over {} disjoint seed sets"}
    parts = [what.get(k.split(":")[0], k + " {}").format(k.split(":")[1] if ":" in k else "") for k in kinds]
    return "Intervals (95 %): " + "; ".join(parts) + "."


NON_MONOTONE = ("Rows named \"worse at a larger NFE\" under a table get worse as NFE grows by more than their "
                "intervals. These rises are measured behaviour, not harness bugs (README, \"Curves that rise with "
                "NFE\"): multistep updates of order three or more extrapolate the denoiser across the step where "
                "trajectories commit to a mode of the data, and overshoot there; their second-order variants rise "
                "far less, and `tests/test_nonmonotone.py` pins this on three mixture instances. AFS on data whose "
                "mean is not zero is another cause (the uncentred digits reading; README, \"The shipped digits "
                "network\").")


def _non_monotone_note(t: tables.Measured) -> list[str]:
    """One line naming the rows that get worse as NFE grows beyond their intervals (`tables.non_monotone`)."""
    rises = tables.non_monotone(t)
    if not rises:
        return []
    what = "; ".join(f"{m} (NFE " + ", ".join(f"{a}→{b}" for a, b in steps) + ")" for m, steps in rises.items())
    return [f"Worse at a larger NFE, beyond the intervals: {what} (see \"Curves that rise with NFE\" below).", ""]


def _instances_section(g: pd.DataFrame, grid: str) -> tuple[list[str], list[str]]:
    """Per model with problem instances in the grid (its `instances`): per metric the mean across instances with
    its t interval over instances, ranked by those intervals, and the range of the instances' values (Markdown
    lines, LaTeX lines)."""
    md, tex = [], []
    for base, keys in tables.instances(g).items():
        md += [f"## Across the instances of `{base}` ({len(keys)}: {', '.join(f'`{k}`' for k in keys)})", "",
               "Mean over the problem instances, ± the 95 % Student-t interval of that mean with the instances as "
               "independent draws of the problem (ranks and ° marks read these intervals); below it the smallest "
               "and the largest instance's value. Each instance has its own table further down.", ""]
        for metric in dict.fromkeys(g[g.instance_of == base].metric):
            mean, lo, hi, n = tables.across_instances(g, base, metric)
            md += [f"### {mean.label} ({'higher' if mean.higher else 'lower'} is better) — mean over {n} "
                   "instances", "", tables.to_markdown(mean), "", "Range across instances:", "",
                   tables.spread_markdown(lo, hi), ""]
            tex += [tables.to_latex(mean, caption=f"{mean.label} on {base} (grid {grid}), mean over {n} instances "
                                                  "with its 95 % interval over instances.",
                                    label=f"tab:{grid}_{base}_{metric}_instances"), ""]
    return md, tex


def _has_transfer(df: pd.DataFrame) -> bool:
    """Whether some learned solver was evaluated on a model other than the one it was distilled on."""
    if "distilled_on" not in df:
        return False
    src = df.distilled_on.fillna("").astype(str)
    return bool(((src != "") & (src != df.model.astype(str))).any())


def transfer_measured(df: pd.DataFrame, metric: str, nfe: int) -> pd.DataFrame | None:
    """Rows = evaluated on, columns = "C.-<model the coefficients were distilled on>" (native learned rows count
    for their own model) plus every handcrafted solver of the grid; None without transfer rows."""
    sel = df[(df.metric == metric) & (df.nfe == nfe)]
    if not _has_transfer(sel):
        return None
    sel = sel.assign(value=sel.value.where(sel.status == "ok"))
    learned = sel[sel.family == "learned"]
    src = learned.distilled_on.astype(str).where(learned.distilled_on.astype(str) != "", learned.model)
    m = learned.assign(source="C.-" + src).pivot_table(index="model", columns="source", values="value",
                                                       aggfunc="mean")
    hand = sel[sel.family == "handcrafted"].pivot_table(index="model", columns="label", values="value",
                                                        aggfunc="mean")
    out = pd.concat([m, hand], axis=1)
    models = list(dict.fromkeys(sel.model))
    cols = [f"C.-{x}" for x in models if f"C.-{x}" in out.columns]
    cols += [c for c in out.columns if c not in cols]
    return out.reindex(index=models, columns=cols)


def render_grid(df: pd.DataFrame, grid: str, results_dir: Path, reports_dir: Path) -> Path:
    g = df[df.grid == grid]
    figs = reports_dir / FIG
    md = [f"# Report: grid `{grid}`", "",
          "Regenerate with `python -m bench report` (reads `results/`, writes `reports/`). Tables: methods as rows "
          "(handcrafted, then learnable, then the noise floors: what a reference scores at the same seeds and "
          "sample count), NFE as columns.", "", tables.LEGEND, "", "## Provenance", "", _provenance(g), ""]
    mapped = {m: paper.paper_dataset(m, _paper_key(g, m)) for m in dict.fromkeys(g.model)}
    with_paper = [f"`{m}` ↔ {d}" for m, d in mapped.items() if d]
    without = [f"`{m}`" for m, d in mapped.items() if not d]
    md += ["Paper counterparts: " + (", ".join(with_paper) if with_paper else "none") + "."
           + (f" No published numbers exist for {', '.join(without)}; the paper's own tables are reproduced under "
              "\"For reference\" below, labelled reported." if without else ""), ""]
    tex = [f"% Tables of grid {grid}, generated by `python -m bench report`. Needs \\usepackage{{booktabs}}.", ""]
    inst_md, inst_tex = _instances_section(g, grid)
    md, tex = md + inst_md, tex + inst_tex
    rises = False
    for model in dict.fromkeys(g.model):
        md += [f"## Model `{model}`", ""]
        for metric in dict.fromkeys(g[g.model == model].metric):
            t = tables.measured(g, model, metric)
            name = f"{grid}_{model}_{metric}".replace("/", "_")
            md += [f"### {t.label} ({'higher' if t.higher else 'lower'} is better) — measured", "",
                   tables.to_markdown(t), "", _interval_note(g[(g.model == model) & (g.metric == metric)]), ""]
            note = _non_monotone_note(t)
            md += note
            rises = rises or bool(note)
            if len(t.values.columns) > 1:                # a line plot needs more than one NFE
                md += [_img(plots.metric_vs_nfe(g, model, metric, figs / name)[0], reports_dir,
                            f"{metric} vs NFE on {model}"), ""]
            tex += [tables.to_latex(t, caption=f"{t.label} on {model} (grid {grid}), measured, with 95 % "
                                               "intervals.", label=f"tab:{name}"), ""]
            cmp = paper.compare(g, model, metric)
            if cmp is not None:
                md += [f"### {t.label} — measured / reported (paper), ratio measured/reported",
                       "", paper.compare_markdown(cmp), ""]
            failed = g[(g.model == model) & (g.metric == metric) & (g.status != "ok")]
            if len(failed):
                md += ["Failed cells:", ""] + [f"- {r.label} NFE {r.nfe}: {r.error}" for r in failed.itertuples()]
                md += [""]
    if rises:
        md += ["## Curves that rise with NFE", "", NON_MONOTONE, ""]
    # transfer matrix (Table A.1 analogue)
    if _has_transfer(g):
        md += ["## Cross-model transfer (paper Table A.1 analogue)", ""]
        for metric in dict.fromkeys(g.metric):
            nfe = int(g[g.family != "floor"].nfe.min())
            m = transfer_measured(g, metric, nfe)
            if m is None:
                continue
            name = f"{grid}_transfer_{metric}_nfe{nfe}"
            label = str(g[g.metric == metric].metric_label.iloc[0])
            md += [f"{label} at NFE {nfe}; rows = evaluated on, columns = coefficients from "
                   "(diagonal = native).", "",
                   m.map(tables.fmt).to_markdown(), "",
                   _img(plots.transfer_heatmap(m, figs / name, f"{grid}: {metric}, NFE {nfe} (measured)",
                                               metric)[0], reports_dir, "transfer"), ""]
    # distilled coefficients and training curves
    solvers = [s for s in plots.distilled_solvers(results_dir) if s["grid"] == grid]
    rows = [s for s in solvers if s["has_weight_rows"]]
    if rows:
        md += ["## Distilled DyWeight coefficients (paper Fig. A.1 layout)", "",
               "Rows = steps (AFS first), columns = history weights w (oldest first), their sum Σw (the implicit "
               "time shift) and the time scale s of the step's network call.", ""]
        for model in dict.fromkeys(s["model"] for s in rows):
            ss = [s for s in rows if s["model"] == model]
            md += [_img(plots.coefficient_heatmaps(plots.distilled_panels(ss), figs / f"{grid}_{model}_coefficients",
                                                   f"DyWeight distilled on {model} (grid {grid})")[0],
                        reports_dir, f"coefficients {model}"), ""]
    grids = [s for s in solvers if isinstance(s["state"].get("timesteps"), list)]
    if grids:
        md += ["## Learned time grids", "",
               _img(plots.learned_grids(grids, figs / f"{grid}_learned_grids", f"learned time grids ({grid})")[0],
                    reports_dir, "learned time grids"), ""]
    spread = [s for s in solvers if isinstance(s["state"].get("metadata", {}).get("sample_grids"), dict)]
    if spread:
        md += ["## Per-sample time grids", "",
               "Each line is one evaluation sample's predicted grid (the cell's first seeds), coloured by the mixture "
               "component its sample ends in where the model has components; the dashed black line is the global "
               "grid the predictor deviates from.", "",
               _img(plots.per_sample_grids(spread, figs / f"{grid}_per_sample_grids",
                                           f"per-sample time grids ({grid})")[0], reports_dir,
                    "per-sample time grids"), ""]
    if solvers:
        try:
            md += ["## Distillation training curves and cost (paper Fig. 5 analogue)", "",
                   _img(plots.training_curves(solvers, figs / f"{grid}_training", f"distillation ({grid})")[0],
                        reports_dir, "training curves"), ""]
        except ValueError:
            pass
        md += ["Cost in denoiser calls: the teacher's endpoint runs and the student's forward passes (each also "
               "backpropagated).", "",
               "| solver | kind | parameters | steps | teacher calls | student calls | final loss | final held-out "
               "error | wall time (s) |", "|---|---|---|---|---|---|---|---|---|"]
        for s in solvers:
            t = s["state"].get("metadata", {}).get("training", {})
            loss = tables.fmt(t["loss"][-1]) if isinstance(t.get("loss"), list) and t["loss"] else "–"
            ev = tables.fmt(t["eval_error"][-1]) if isinstance(t.get("eval_error"), list) and t["eval_error"] else "–"
            steps = t["step"][-1] + 1 if isinstance(t.get("step"), list) and t["step"] else t.get("steps", "–")
            cost = [f"{t[k]:,}" if isinstance(t.get(k), int) else "–"
                    for k in ("parameters", "teacher_calls", "student_calls")]
            md.append(f"| {s['model']} {s['name']} | {s['state']['solver']} | {cost[0]} | {steps} | {cost[1]} | "
                      f"{cost[2]} | {loss} | {ev} | {float(t.get('wall_time', float('nan'))):.1f} |")
        md.append("")
    md += _paper_section(reports_dir, figs)
    out = reports_dir / f"{grid}.md"
    out.write_text("\n".join(md) + "\n")
    (reports_dir / f"{grid}.tex").write_text("\n".join(tex))
    return out


def _paper_section(reports_dir: Path, figs: Path) -> list[str]:
    """What the paper reports (Table 1 FID per dataset incl. learned methods the project does not run), its
    released coefficients and its transfer matrix, for reference."""
    md = ["## For reference: what the paper reports", "",
          "Reported numbers (arXiv 2603.11607, Table 1, FID, lower is better) — not measured here; AMED, EPD, LD3, "
          "DLMS and S4S are not run by this project.", ""]
    for dataset in ("cifar10", "ffhq", "afhqv2", "imagenet64", "lsun_bedroom"):
        md += [f"**{dataset}** (reported)", "", tables.to_markdown(paper.reported_table(dataset, "fid", "1")), ""]
    md += ["Paper Table A.1 (reported): 3-NFE coefficients trained on one dataset (columns) evaluated on another "
           "(rows), FID.", "",
           _img(plots.transfer_heatmap(paper.transfer_reported(), figs / "paper_tableA1_transfer",
                                       "Paper Table A.1 (reported), FID at NFE 3", "FID")[0], reports_dir,
                "Table A.1"), "",
           "The paper's released DyWeight coefficients at NFE 3 and 4 (Fig. A.1 layout):", "",
           _img(plots.coefficient_heatmaps(plots.released_panels(), figs / "released_coefficients",
                                           "Released DyWeight coefficients (NFE 3 and 4)")[0], reports_dir,
                "released coefficients"), ""]
    return md


def render_study(csv: Path, reports_dir: Path) -> Path:
    from bench.studies import numerical_study as ns
    df = pd.read_csv(csv)
    name = csv.stem
    figs = reports_dir / FIG
    paths = plots.numerical_study_figures(df, figs, name)
    m = ns.summary(df)
    piv = (m[m.variant != "teacher"].pivot_table(index=["complexity", "steps"], columns=["order", "variant"],
                                                 values="rel_error"))
    piv.columns = [f"AB-{o} {v}" for o, v in piv.columns]
    piv = piv.reset_index().rename(columns={"complexity": "K", "steps": "S"})
    ints = lambda col, sel=df[df.variant != "teacher"]: [int(v) for v in sorted(sel[col].unique())]  # noqa: E731
    n_prob = df[df.variant == "standard"].groupby(["complexity", "steps", "order"]).problem.nunique().max()
    iters = int(df[df.variant == "optimized"].iterations.max()) if (df.variant == "optimized").any() else 0
    md = [f"# Numerical study `{name}` (paper Section 3.2, Appendix D.1)", "",
          f"Random polynomial ODEs (degree K in {ints('complexity')}), "
          f"Adams-Bashforth orders {ints('order')} with S in {ints('steps')} steps, {n_prob} random problems "
          f"per configuration, "
          f"optimised solvers trained with Adam for {iters} iterations. Error = relative L2 error at t = 1, "
          "mean over problems. Regenerate: `python -m bench run --grid " + name + "` then `python -m bench report`.",
          "", "## The paper's four observations, checked on these data", "",
          "| # | observation | verdict | evidence |", "|---|---|---|---|"]
    for o in ns.observations(df):
        md.append(f"| {o['number']} | {o['claim']} | **{o['verdict']}** | {o['evidence']} |")
    md += ["", "Verdicts: *holds* = in every configuration tested; *mostly* ≥ 75 %; *partly* ≥ 50 %.", "",
           "## Figures", "", _img(paths[0], reports_dir, "Fig. 3"), "", _img(paths[2], reports_dir, "Fig. A.2"), "",
           "## Mean relative error per configuration", "", piv.to_markdown(index=False, floatfmt=".3g"), "",
           "## Our reading of the paper's setup", "", (ns.__doc__ or "").split("Our reading")[-1].split("`run(")[0]
           .strip().replace("of the paper where it is not explicit (also written into the report):", "").strip(), ""]
    out = reports_dir / f"{name}.md"
    out.write_text("\n".join(md) + "\n")
    return out


def render(results_dir: Path, reports_dir: Path) -> list[Path]:
    """Every grid and study found in `results_dir`, rendered into `reports_dir`; returns the Markdown files."""
    from bench import results
    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    if not results_dir.exists():
        raise FileNotFoundError(f"no results directory {results_dir}; run `python -m bench run --grid quick` first")
    df = results.load(results_dir)
    studies = sorted((results_dir / "studies").glob("*.csv"))
    if df.empty and not studies:
        raise InputError(f"no results in {results_dir} (no results.sqlite rows and no studies/*.csv); "
                         "run `python -m bench run --grid quick` first")
    reports_dir.mkdir(parents=True, exist_ok=True)
    written = [render_grid(df, grid, results_dir, reports_dir) for grid in dict.fromkeys(df.grid)]
    written += [render_study(csv, reports_dir) for csv in studies]
    index = ["# Reports", "", "Generated by `python -m bench report` from the stored results.", ""]
    index += [f"- [{p.stem}]({p.name})" for p in written]
    (reports_dir / "index.md").write_text("\n".join(index) + "\n")
    return written
