"""One sampling grid's report, as blocks (bench.report.doc): provenance and what was left out, per model and metric
the measured table with its intervals, figure and the paper's numbers beside it, paired ratios, transfer, what the
distilled solvers learned and cost, and what the paper reports. It reads one run's stored rows (bench.store.select),
their per-sample scores and the artefacts of their solvers; never a model, a solver file or a method's name."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from solvers import artefacts as kinds

from . import doc, paper, plots, ratios, tables
from .doc import Bullets, Figure, Heading, Text

READING = "docs/reading-reports.md"


@dataclass
class GridData:
    """What the report of one grid reads: one run's rows, the run, notes on what was left out, the artefacts of the
    run's solvers and the run's grid settings."""

    name: str
    rows: pd.DataFrame
    run: pd.Series
    notes: list
    results_dir: Path
    artefacts: list = field(default_factory=list)      # (model, label, nfe, Artefact)

    @property
    def config(self) -> dict:
        try:
            return json.loads(self.run["config"]) if self.run["config"] else {}
        except ValueError:
            return {}

    def of(self, cls) -> list:
        return [(m, lbl, n, a) for m, lbl, n, a in self.artefacts if isinstance(a, cls)]


def load(results_dir: Path, grid: str, sel) -> GridData:
    """The report data of one grid of a selection."""
    from bench.store import artefacts
    rows = sel.rows[sel.rows["grid"] == grid]
    keys = {k for k in rows["solver_key"] if k}
    items = []
    art = artefacts(results_dir)
    for r in art[art["solver_key"].isin(keys)].itertuples():
        if r.kind in kinds.KINDS:
            try:
                items.append((r.model, r.label, int(r.nfe), kinds.from_json(r.kind, r.data)))
            except (ValueError, TypeError, KeyError):
                continue                                   # an unreadable artefact is left out, not fatal
    return GridData(grid, rows, sel.runs[grid], sel.notes.get(grid, []), Path(results_dir), items)


def reading_link(root: Path) -> str:
    """The path from the report folder `root` to docs/reading-reports.md in this checkout (the bare name when the
    package is installed without its docs)."""
    target = Path(__file__).resolve().parents[2] / READING
    return os.path.relpath(target, Path(root).resolve()) if target.exists() else READING


def blocks(g: GridData, figs: Path, root: Path) -> list:
    out = [Heading(1, f"Report: grid `{g.name}`"),
           Text(f"Regenerate with `python -m bench run --grid {g.name}` and then `python -m bench report` (each with "
                f"`--results-dir` for results kept elsewhere; the run's own command is under provenance). Methods "
                "as rows (handcrafted, then learnable, then the noise floors: what a reference scores at the same "
                "seeds and sample count), NFE as columns. How to read the marks and intervals: "
                f"[{READING}]({reading_link(root)})."),
           Text(tables.LEGEND), Heading(2, "Run and provenance"), Bullets(_provenance(g))]
    if g.notes:
        out += [Text("**Not shown:** " + " ".join(g.notes))]
    out += _paper_line(g.rows)
    out += _instances(g)
    out += _models(g, figs)
    out += _ratios(g)
    out += _transfer(g.rows, g.name, figs)
    out += _learned(g, figs)
    out += _paper_section(figs)
    return out


def _provenance(g: GridData) -> list[str]:
    rows, r = g.rows, g.run

    def one(col):
        vals = sorted({str(v) for v in rows[col].dropna() if str(v)})
        return ", ".join(vals) if vals else "–"
    n_ok = int((rows.status == "ok").sum())
    return [f"run `{r['run_id']}` ({r['status']}), started {r['started_at']}" +
            (f", ended {r['finished_at']}" if r['finished_at'] else "")
            + (f": `{r['command']}`" if r['command'] else ""),
            f"cells × metrics shown: {len(rows)} ({n_ok} ok, {len(rows) - n_ok} failed)",
            f"samples per cell: {one('num_samples')}; seeds: {one('seeds')}",
            f"code version: {one('code_version')}; solver code: {one('code_hash')}; torch {one('torch_version')}; "
            f"device: {one('device')}",
            f"wall time of the cells: {rows.drop_duplicates('cell_key').wall_time.sum():.1f} s"]


def _paper_line(rows) -> list:
    mapped = {m: paper.paper_dataset(m, next((k for k in rows[rows.model == m].paper_key if k), ""))
              for m in dict.fromkeys(rows.model)}
    with_paper = [f"`{m}` ↔ {d}" for m, d in mapped.items() if d]
    without = [f"`{m}`" for m, d in mapped.items() if not d]
    return [Text("Paper counterparts: " + (", ".join(with_paper) if with_paper else "none") + "."
                 + (f" No published numbers exist for {', '.join(without)}; the paper's own tables are reproduced "
                    "under \"For reference\" below, labelled reported." if without else ""))]


def _instances(g: GridData) -> list:
    out = []
    for base, keys in tables.instances(g.rows).items():
        out += [Heading(2, f"Across the instances of `{base}` ({len(keys)}: {', '.join(f'`{k}`' for k in keys)})"),
                Text("Mean over the problem instances, ± the 95 % Student-t interval of that mean with the instances "
                     "as independent draws of the problem (ranks and ° marks read these intervals); below it the "
                     "smallest and the largest instance's value. Each instance has its own table further down.")]
        for metric in dict.fromkeys(g.rows[g.rows.instance_of == base].metric):
            mean, lo, hi, n = tables.across_instances(g.rows, base, metric)
            out += [Heading(3, f"{mean.label} ({'higher' if mean.higher else 'lower'} is better) — mean over {n} "
                               "instances"), tables.to_doc(mean), Text("Range across instances:"),
                    doc.table(["", "Method"] + [f"NFE {c}" for c in lo.columns],
                              [r for r in _spread_rows(lo, hi)], align=["left", "left"] + ["right"] * len(lo.columns))]
    return out


def _spread_rows(lo, hi):
    last = None
    for (group, method) in lo.index:
        yield [group if group != last else "", method] + [
            f"{tables.fmt(lo.loc[(group, method), c])} – {tables.fmt(hi.loc[(group, method), c])}"
            if pd.notna(lo.loc[(group, method), c]) else tables.MISSING for c in lo.columns]
        last = group


def _models(g: GridData, figs: Path) -> list:
    out, rises = [], False
    for model in dict.fromkeys(g.rows.model):
        out.append(Heading(2, f"Model `{model}`"))
        for metric in dict.fromkeys(g.rows[g.rows.model == model].metric):
            part = g.rows[(g.rows.model == model) & (g.rows.metric == metric)]
            t = tables.measured(g.rows, model, metric)
            out += [Heading(3, f"{t.label} ({'higher' if t.higher else 'lower'} is better) — measured"),
                    tables.to_doc(t), Text(_interval_note(part))]
            steps = tables.non_monotone(t)
            if steps:
                rises = True
                out.append(Text("Worse at a larger NFE, beyond the intervals: " + "; ".join(
                    f"{m} (NFE " + ", ".join(f"{a}→{b}" for a, b in s) + ")" for m, s in steps.items())
                    + " (see \"Curves that rise with NFE\" below)."))
            if len(t.values.columns) > 1:
                name = f"{g.name}_{model}_{metric}".replace("/", "_").replace("@", "_")
                out.append(Figure(plots.metric_vs_nfe(t, model, figs / name)[0], f"{metric} vs NFE on {model}"))
            cmp = paper.compare(g.rows, model, metric)
            if cmp is not None:
                out += [Heading(3, f"{t.label} — measured / reported (paper), ratio measured/reported"),
                        paper.compare_doc(cmp)]
            failed = part[part.status != "ok"]
            if len(failed):
                out += [Text("Failed cells:"), Bullets([f"{r.label} NFE {r.nfe}: {r.error}" for r in
                                                        failed.itertuples()])]
    if rises:
        out += [Heading(2, "Curves that rise with NFE"), Text(NON_MONOTONE)]
    return out


NON_MONOTONE = ("Rows named \"worse at a larger NFE\" under a table get worse as NFE grows by more than their "
                "intervals. These rises are measured behaviour, not harness bugs (" + READING + ", \"Curves that "
                "rise with NFE\"): multistep updates of order three or more extrapolate the denoiser across the step "
                "where trajectories commit to a mode of the data, and overshoot there; their second-order variants "
                "rise far less, and `tests/test_nonmonotone.py` pins this on three mixture instances. AFS on data "
                "whose mean is not zero is another cause (the uncentred digits reading).")


def _interval_note(sel: pd.DataFrame) -> str:
    """How the table's intervals were estimated, from the stored `ci_method`s (bench.stats)."""
    found = sorted({m for m in sel.ci_method if m})
    if not found:
        return ("Intervals: none stored for these values (single measurements, such as a wall time, or an older "
                "store); ranked by value, as the paper ranks its tables.")
    what = {"bootstrap": "percentile bootstrap of the mean over samples ({} resamples)",
            "jackknife": "delete-a-group jackknife over {} groups of samples (normal interval)",
            "replicas": "Student-t interval over {} disjoint seed sets",
            "bootstrap-median": "percentile bootstrap of the median over repeats ({} resamples)"}
    parts = [what.get(k.split(":")[0], k + " {}").format(k.split(":")[1] if ":" in k else "") for k in found]
    return "Intervals (95 %): " + "; ".join(parts) + "."


def _ratios(g: GridData) -> list:
    from bench.store import scores
    specs = ratios.specs(g.config, g.rows)
    if not specs:
        return []
    stored = scores(g.results_dir, ratios.pairs(g.rows))
    tabs = [t for spec in specs for t in ratios.compute(g.rows, stored, spec)]
    if not tabs:
        return []
    out = [Heading(2, "Paired ratios"),
           Text("Each cell is a row's mean ÷ the mean of the best reference row at that NFE (named in the last line), "
                "on the same seeds, with the 95 % paired-bootstrap interval of the ratio (bench.stats.paired_ratio). "
                "**Bold**: better than the reference beyond the interval; *italic*: worse beyond it.")]
    for t in tabs:
        out += [Heading(3, f"{t.model} · {t.metric_label}: {t.title}"), ratios.to_doc(t)]
    return out


def _transfer(rows: pd.DataFrame, grid: str, figs: Path) -> list:
    src = rows.distilled_on.astype(str)
    if not ((src != "") & ~src.str.startswith("released:") & (src != rows.model.astype(str))).any():
        return []
    out = [Heading(2, "Cross-model transfer (paper Table A.1 analogue)")]
    for metric in dict.fromkeys(rows.metric):
        nfe = int(rows[rows.family != "floor"].nfe.min())
        m = transfer_matrix(rows, metric, nfe)
        if m is None:
            continue
        label = str(rows[rows.metric == metric].metric_label.iloc[0])
        out += [Text(f"{label} at NFE {nfe}; rows = evaluated on, columns = coefficients from (diagonal = native)."),
                doc.table([""] + list(m.columns), [[i] + [tables.fmt(v) for v in r] for i, r in zip(m.index,
                                                                                                   m.to_numpy())],
                          align=["left"] + ["right"] * len(m.columns)),
                Figure(plots.transfer_heatmap(m, figs / f"{grid}_transfer_{metric}_nfe{nfe}",
                                              f"{grid}: {metric}, NFE {nfe} (measured)", metric)[0], "transfer")]
    return out


def transfer_matrix(rows: pd.DataFrame, metric: str, nfe: int) -> pd.DataFrame | None:
    """Rows = evaluated on, columns = "C.-<model the coefficients were distilled on>" (native learned rows count
    for their own model) plus every handcrafted row; one stored cell per entry."""
    sel = rows[(rows.metric == metric) & (rows.nfe == nfe)]
    sel = sel.assign(value=sel.value.where(sel.status == "ok"))
    learned = sel[sel.family == "learned"]
    src = learned.distilled_on.astype(str).where(learned.distilled_on.astype(str) != "", learned.model)
    learned = learned.assign(source="C.-" + src)
    hand = sel[sel.family == "handcrafted"].assign(source=lambda d: d.label)
    both = pd.concat([learned, hand])
    if both.duplicated(["model", "source"]).any():
        return None                                         # two rows per entry: no single matrix to show
    m = both.pivot(index="model", columns="source", values="value")
    models = list(dict.fromkeys(sel.model))
    cols = [f"C.-{x}" for x in models if f"C.-{x}" in m.columns]
    cols += [c for c in m.columns if c not in cols]
    return m.reindex(index=models, columns=cols)


def _learned(g: GridData, figs: Path) -> list:
    out = []
    coeffs = g.of(kinds.CoefficientTable)
    for model in dict.fromkeys(m for m, _, _, _ in coeffs):
        panels = [(f"{lbl} NFE {n}", plots.coefficient_matrix(a.weights, a.time_scale, a.afs))
                  for m, lbl, n, a in coeffs if m == model]
        out += [Heading(2, f"Distilled coefficients on `{model}` (paper Fig. A.1 layout)"),
                Text("Rows = steps (AFS first), columns = history weights w (oldest first), their sum Σw (the implicit "
                     "time shift) and the time scale s of the step's network call."),
                Figure(plots.coefficient_heatmaps(panels, figs / f"{g.name}_{model}_coefficients".replace("@", "_"),
                                                  f"distilled on {model} (grid {g.name})")[0], f"coefficients {model}")]
    grids = [(f"{m} {lbl} NFE {n}", a) for m, lbl, n, a in g.of(kinds.TimeGrid)]
    if grids:
        out += [Heading(2, "Learned time grids"),
                Figure(plots.learned_grids(grids, figs / f"{g.name}_learned_grids",
                                           f"learned time grids ({g.name})")[0], "learned time grids")]
    spread = [(f"{m} {lbl} NFE {n}", a) for m, lbl, n, a in g.of(kinds.SampleGrids)]
    if spread:
        out += [Heading(2, "Per-sample time grids"),
                Text("Each line is one evaluation sample's predicted grid (the cell's first seeds), coloured by the "
                     "mixture component its sample ends in where the model has components; the dashed black line is "
                     "the global grid the predictor deviates from."),
                Figure(plots.per_sample_grids(spread, figs / f"{g.name}_per_sample_grids",
                                              f"per-sample time grids ({g.name})")[0], "per-sample time grids")]
    out += _training(g, figs)
    return out


def _training(g: GridData, figs: Path) -> list:
    recs = g.of(kinds.TrainingRecord)
    if not recs:
        return []
    out = [Heading(2, "Distillation curves and cost (paper Fig. 5 analogue)")]
    runs = [(m, f"{lbl} NFE {n}", a) for m, lbl, n, a in recs]
    if any(a.loss or a.eval_error for _, _, a in runs):
        out.append(Figure(plots.training_curves(runs, figs / f"{g.name}_training", f"distillation ({g.name})")[0],
                          "training curves"))
    out.append(Text("Cost in denoiser calls: the teacher's endpoint runs and the student's forward passes (each also "
                    "backpropagated)."))
    rows = []
    for m, lbl, n, a in recs:
        rows.append([f"{m} {lbl} NFE {n}", f"{a.parameters:,}", str(a.steps), f"{a.teacher_calls:,}",
                     f"{a.student_calls:,}", tables.fmt(a.loss[-1]) if a.loss else tables.MISSING,
                     tables.fmt(a.eval_error[-1]) if a.eval_error else tables.MISSING,
                     str(a.kept_step) if a.kept_step is not None else tables.MISSING, f"{a.wall_time:.1f}"])
    out.append(doc.table(["solver", "parameters", "steps", "teacher calls", "student calls", "final loss",
                          "final held-out error", "kept step", "wall time (s)"], rows,
                         align=["left"] + ["right"] * 8))
    return out


def _paper_section(figs: Path) -> list:
    """What the paper reports (Table 1 FID per dataset, its transfer matrix and released coefficients)."""
    out = [Heading(2, "For reference: what the paper reports"),
           Text("Reported numbers (arXiv 2603.11607, Table 1, FID, lower is better), not measured here. DLMS and S4S "
                "are not implemented in this project; AMED-Solver, EPD-Solver and LD3 are, and run in the "
                "`paper_table1` grid on the real checkpoints.")]
    for dataset in ("cifar10", "ffhq", "afhqv2", "imagenet64", "lsun_bedroom"):
        out += [Text(f"**{dataset}** (reported)"), tables.to_doc(paper.reported_table(dataset, "fid", "1"))]
    out += [Text("Paper Table A.1 (reported): 3-NFE coefficients trained on one dataset (columns) evaluated on another "
                 "(rows), FID."),
            Figure(plots.transfer_heatmap(paper.transfer_reported(), figs / "paper_tableA1_transfer",
                                          "Paper Table A.1 (reported), FID at NFE 3", "FID")[0], "Table A.1"),
            Text("The paper's released DyWeight coefficients at NFE 3 and 4 (Fig. A.1 layout):"),
            Figure(plots.coefficient_heatmaps(plots.released_panels(), figs / "released_coefficients",
                                              "Released DyWeight coefficients (NFE 3 and 4)")[0],
                   "released coefficients")]
    return out


def tex(g: GridData) -> str:
    """Every measured table of the grid in LaTeX (booktabs)."""
    out = [f"% Tables of grid {g.name}, generated by `python -m bench report`. Needs \\usepackage{{booktabs}}.", ""]
    for base, _ in tables.instances(g.rows).items():
        for metric in dict.fromkeys(g.rows[g.rows.instance_of == base].metric):
            mean, _, _, n = tables.across_instances(g.rows, base, metric)
            out += [tables.to_latex(mean, caption=f"{mean.label} on {base} (grid {g.name}), mean over {n} instances "
                                                  "with its 95 % interval over instances.",
                                    label=f"tab:{g.name}_{base}_{metric}_instances"), ""]
    for model in dict.fromkeys(g.rows.model):
        for metric in dict.fromkeys(g.rows[g.rows.model == model].metric):
            t = tables.measured(g.rows, model, metric)
            out += [tables.to_latex(t, caption=f"{t.label} on {model} (grid {g.name}), measured, with 95 % intervals.",
                                    label=f"tab:{g.name}_{model}_{metric}"), ""]
    return "\n".join(out)
