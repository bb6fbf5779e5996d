"""`bench report`: stored results -> per grid `<grid>.md`, `<grid>.html` (one self-contained page) and `<grid>.tex`,
per study `<study>.md` and `.html`, figures under `figures/` (PNG + PDF), and `index.md` / `index.html` listing every
report present in the folder.

Data flows one way: the store (bench.store.select: one run per grid) and its artefacts -> the report. Everything is
written into a temporary folder first and moved into place file by file (`os.replace`), so a report killed half-way
never leaves a truncated file behind; temporary folders left by a killed report are removed on the next one.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pandas as pd

from solvers.errors import InputError

from . import doc, grid_report, plots

FIG = "figures"


def render(results_dir: Path, reports_dir: Path | None = None, run: str | None = None, where: dict | None = None,
           grids: list[str] | None = None) -> list[Path]:
    """Every grid (or `grids`) and study of `results_dir` rendered into `reports_dir` (default
    <results_dir>/reports); returns the Markdown files written."""
    from bench.store.layout import Layout
    from bench.store.select import select
    layout = Layout.of(results_dir)
    if not layout.root.is_dir():
        raise FileNotFoundError(f"no results directory {results_dir}; run `python -m bench run --grid quick` first")
    reports_dir = Path(reports_dir) if reports_dir is not None else layout.reports
    sel = select(results_dir, grids, run, where)
    studies = sorted(layout.studies.glob("*.csv")) if not grids and run is None and not where else []
    if not sel.grids and not studies:
        raise InputError(f"no results in {results_dir} (no run stored, no studies/*.csv); run `python -m bench run "
                         "--grid quick` first")
    reports_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(reports_dir)
    tmp = reports_dir / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / FIG).mkdir(parents=True)
    try:
        written = [render_grid(grid_report.load(results_dir, g, sel), tmp, reports_dir) for g in sel.grids]
        written += [render_study(csv, tmp) for csv in studies]
        _commit(tmp, reports_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_index(reports_dir)
    return [reports_dir / p.name for p in written]


def render_grid(g: grid_report.GridData, out: Path, final: Path | None = None) -> Path:
    """Write the grid's Markdown, HTML and LaTeX into `out`; links that leave the report folder (the reading guide)
    are made from `final`, the folder the files are moved to (default `out`)."""
    blocks = grid_report.blocks(g, out / FIG, final or out)
    md = out / f"{g.name}.md"
    md.write_text(doc.to_markdown(blocks, out))
    (out / f"{g.name}.html").write_text(doc.to_html(blocks, out, f"Report: {g.name}"))
    (out / f"{g.name}.tex").write_text(grid_report.tex(g))
    return md


def render_study(csv: Path, out: Path) -> Path:
    """The numerical study (paper Sec. 3.2): its four observations checked, Figs. 3 and A.2, the error table and
    the study's reading of the paper's setup (bench.studies.numerical_study.READING)."""
    from bench.studies import numerical_study as ns
    df = pd.read_csv(csv)
    name = csv.stem
    paths = plots.numerical_study_figures(df, out / FIG, name)
    m = ns.summary(df)
    piv = (m[m.variant != "teacher"].pivot_table(index=["complexity", "steps"], columns=["order", "variant"],
                                                 values="rel_error"))
    piv.columns = [f"AB-{o} {v}" for o, v in piv.columns]
    piv = piv.reset_index().rename(columns={"complexity": "K", "steps": "S"})
    sel = df[df.variant != "teacher"]
    ints = lambda col: [int(v) for v in sorted(sel[col].unique())]  # noqa: E731
    n_prob = df[df.variant == "standard"].groupby(["complexity", "steps", "order"]).problem.nunique().max()
    iters = int(df[df.variant == "optimized"].iterations.max()) if (df.variant == "optimized").any() else 0
    obs = ns.observations(df)
    blocks = [doc.Heading(1, f"Numerical study `{name}` (paper Section 3.2, Appendix D.1)"),
              doc.Text(f"Random polynomial ODEs (degree K in {ints('complexity')}), Adams-Bashforth orders "
                       f"{ints('order')} with S in {ints('steps')} steps, {n_prob} random problems per configuration, "
                       f"optimised solvers trained with Adam for {iters} iterations. Error = relative L2 error at "
                       f"t = 1, mean over problems. Regenerate: `python -m bench run --grid {name}` then "
                       "`python -m bench report`."),
              doc.Heading(2, "The paper's four observations, checked on these data"),
              doc.table(["#", "observation", "verdict", "evidence"],
                        [[str(o["number"]), o["claim"], f"**{o['verdict']}**", o["evidence"]] for o in obs]),
              doc.Text("Verdicts: *holds* = in every configuration tested; *mostly* ≥ 75 %; *partly* ≥ 50 %."),
              doc.Heading(2, "Figures"), doc.Figure(paths[0], "Fig. 3"), doc.Figure(paths[2], "Fig. A.2"),
              doc.Heading(2, "Mean relative error per configuration"),
              doc.table(list(piv.columns), [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in r]
                                            for r in piv.itertuples(index=False)],
                        align=["right"] * len(piv.columns)),
              doc.Heading(2, "Our reading of the paper's setup"), doc.Bullets(list(ns.READING))]
    md = out / f"{name}.md"
    md.write_text(doc.to_markdown(blocks, out))
    (out / f"{name}.html").write_text(doc.to_html(blocks, out, f"Numerical study: {name}"))
    return md


def _commit(tmp: Path, reports_dir: Path) -> None:
    """Move every file of `tmp` into `reports_dir`, each replace atomic."""
    for src in sorted(tmp.rglob("*")):
        if src.is_file():
            dst = reports_dir / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)


def _remove_stale(reports_dir: Path, age: float = 3600.0) -> None:
    """Temporary folders of killed reports (older than `age` seconds)."""
    for d in reports_dir.glob(".tmp-*"):
        try:
            if d.is_dir() and time.time() - d.stat().st_mtime > age:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def write_index(reports_dir: Path) -> None:
    """index.md and index.html listing every report in the folder (not only the ones just written)."""
    mds = sorted(p for p in reports_dir.glob("*.md") if p.name not in ("index.md", "README.md"))
    items = []
    for p in mds:
        first = next((ln[2:].strip() for ln in p.read_text(errors="replace").splitlines() if ln.startswith("# ")),
                     p.stem)
        html = p.with_suffix(".html")
        items.append((p, html if html.exists() else None, first))
    md = ["# Reports", "", f"Every report in this folder ({len(items)}), generated by `python -m bench report`.", ""]
    md += [f"- [{title}]({p.name})" for p, _, title in items]
    _atomic(reports_dir / "index.md", "\n".join(md) + "\n")
    blocks = [doc.Heading(1, "Reports"),
              doc.Text(f"Every report in this folder ({len(items)}), generated by `python -m bench report`."),
              doc.Bullets([f"[{title}]({(h or p).name})" for p, h, title in items])]
    _atomic(reports_dir / "index.html", doc.to_html(blocks, reports_dir, "Reports"))


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
