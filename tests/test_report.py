"""Reports: paper-layout tables (bold best, underlined second, "–" for missing), LaTeX structure, the paper's
reported numbers beside measured ones, and `python -m bench report` end to end on a small synthetic store."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from bench.report import paper, tables

NAN = math.nan
METHODS = [("euler", "Euler", "handcrafted", {}), ("ipndm", "iPNDM", "handcrafted", {}),
           ("dpm_solver_pp", "DPM-Solver++(3M)", "handcrafted", {"order": 3}), ("dyweight", "DyWeight", "learned", {})]
VALUES = {"Euler": [10, 5, 3, 2], "iPNDM": [4, 2, 1.5, 1.0], "DPM-Solver++(3M)": [5, 1.9, NAN, 0.9],
          "DyWeight": [1, 0.5, 0.4, 0.3]}


def synthetic(values=VALUES, grid="quick", model="gmm64", metric="endpoint_error", nfes=(3, 5, 7, 9)):
    """Rows with the schema of bench.results.load (a NaN value is a failed cell)."""
    rows = []
    for solver, label, family, opts in METHODS:
        for nfe, v in zip(nfes, values[label]):
            ok = math.isfinite(v)
            rows.append(dict(grid=grid, model=model, solver=solver, label=label, family=family,
                             paper_method="" if label == "Euler" else label, options=json.dumps(opts), nfe=nfe,
                             afs=True, schedule="polynomial", metric=metric,
                             value=v, status="ok" if ok else "failed", error="" if ok else "non-finite samples",
                             num_samples=100, seeds="0-99", distilled_on="", code_version="test",
                             config_hash="h", cell_key=f"{grid}-{model}-{label}-{nfe}", torch_version="2.13.0",
                             device="cpu", world_size=1, wall_time=0.5, created_at="2026-11-22T00:00:00",
                             ci_low=NAN, ci_high=NAN, ci_method="", replicas=1, higher_is_better=False,
                             metric_label=metric, paper_key=""))
    return pd.DataFrame(rows)


def _row(md: str, method: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if f"| {method} " in ln)
    return [c.strip() for c in line.strip().strip("|").split("|")][2:]


def test_pivot_layout_groups_and_nfe_columns():
    t = tables.pivot(synthetic(), "gmm64", "endpoint_error")
    assert list(t.columns) == [3, 5, 7, 9]
    assert list(t.index) == [("Handcrafted", "Euler"), ("Handcrafted", "iPNDM"),
                             ("Handcrafted", "DPM-Solver++(3M)"), ("Learnable", "DyWeight")]
    assert np.isnan(t.loc[("Handcrafted", "DPM-Solver++(3M)"), 7])


def test_markdown_bold_best_underline_second_dash_missing():
    md = tables.to_markdown(tables.pivot(synthetic(), "gmm64", "endpoint_error"))
    assert _row(md, "DyWeight") == ["**1.00**", "**0.50**", "**0.40**", "**0.30**"]
    assert _row(md, "iPNDM") == ["<ins>4.00</ins>", "2.00", "<ins>1.50</ins>", "1.00"]
    assert _row(md, "DPM-Solver++(3M)") == ["5.00", "<ins>1.90</ins>", "–", "<ins>0.90</ins>"]
    assert _row(md, "Euler") == ["10.00", "5.00", "3.00", "2.00"]
    assert md.count("Handcrafted") == 1 and md.count("Learnable") == 1    # group named once, on its first row


def test_higher_is_better_reverses_the_ranking():
    md = tables.to_markdown(tables.pivot(synthetic(), "gmm64", "endpoint_error"), higher=True)
    assert _row(md, "Euler") == ["**10.00**", "**5.00**", "**3.00**", "**2.00**"]
    assert _row(md, "DPM-Solver++(3M)")[0] == "<ins>5.00</ins>"


def test_latex_is_balanced_with_booktabs_rules():
    t = tables.pivot(synthetic(), "gmm64", "endpoint_error")
    tex = tables.to_latex(t, caption="Endpoint error on gmm64_test", label="tab:x")
    begins, ends = re.findall(r"\\begin\{(\w+)\}", tex), re.findall(r"\\end\{(\w+)\}", tex)
    assert begins == ends[::-1] and "tabular" in begins
    assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert tex.count(r"\midrule") == 2                         # below the header and between the two groups
    assert tex.count(r"\textbf{") == 4 and r"\textbf{0.30}" in tex
    assert tex.count(r"\underline{") == 4 and r"\underline{4.00}" in tex
    assert tex.count("{") == tex.count("}")
    assert r"gmm64\_test" in tex                                 # caption text escaped
    rows = [ln for ln in tex.splitlines() if ln.endswith(r"\\")]
    widths = {ln.count("&") + 1 + sum(int(n) - 1 for n in re.findall(r"\\multicolumn\{(\d+)\}", ln)) for ln in rows}
    assert widths == {6}                                        # 2 index columns + 4 NFE columns on every row
    line = next(ln for ln in rows if "DPM-Solver" in ln)
    assert "–" in line


def test_ties_share_the_rank():
    vals = dict(VALUES, iPNDM=[1, 2, 1.5, 1.0])
    md = tables.to_markdown(tables.pivot(synthetic(vals), "gmm64", "endpoint_error"))
    assert _row(md, "iPNDM")[0] == "**1.00**" and _row(md, "DyWeight")[0] == "**1.00**"
    assert _row(md, "DPM-Solver++(3M)")[0] == "<ins>5.00</ins>"


def test_pivot_rejects_unknown_model():
    with pytest.raises(ValueError, match="no results for model"):
        tables.pivot(synthetic(), "nope", "endpoint_error")


def test_reported_numbers_include_methods_the_project_does_not_run():
    rep = paper.reported()
    assert {"AMED-Solver", "EPD-Solver", "LD3", "DLMS", "S4S-Alt"} <= set(rep.method)
    t = paper.reported_table("cifar10", "fid", "1")
    assert t.loc[("Learnable", "DyWeight"), 3] == 8.16
    assert np.isnan(t.loc[("Learnable", "DLMS"), 3])            # printed "-" in the paper
    md = tables.to_markdown(t)
    assert _row(md, "DyWeight")[0] == "**8.16**" and _row(md, "EPD-Solver")[0] == "<ins>10.40</ins>"
    assert _row(md, "DLMS")[0] == "–"


def test_measured_beside_reported_with_ratio():
    vals = {"Euler": [50, 20, 10, 5], "iPNDM": [49.1, 8, 4, 3], "DPM-Solver++(3M)": [NAN, 20, 5, 4],
            "DyWeight": [8.16, 3.3, 2.5, 2.2]}
    df = synthetic(vals, model="cifar10", metric="fid")
    cmp = paper.compare(df, "cifar10", "fid")
    assert cmp.loc[("Handcrafted", "iPNDM"), (3, "reported")] == 24.55
    assert cmp.loc[("Handcrafted", "iPNDM"), (3, "ratio")] == pytest.approx(2.0)
    assert cmp.loc[("Learnable", "DyWeight"), (3, "ratio")] == pytest.approx(1.0)
    assert np.isnan(cmp.loc[("Handcrafted", "DPM-Solver++(3M)"), (3, "ratio")])   # failed measured cell
    assert ("Learnable", "AMED-Solver") in cmp.index                                # reported only
    assert "Euler" not in cmp.index.get_level_values("method")                       # no paper_method: not matched
    md = paper.compare_markdown(cmp)
    assert "49.10 / 24.55 (×2.00)" in md and "– / 18.49" in md
    assert paper.compare(synthetic(), "gmm64", "endpoint_error") is None          # no published counterpart


def test_project_models_map_to_the_papers_tables():
    assert paper.paper_key("lsun_bedroom") == ("lsun_bedroom", "ldm")
    assert paper.paper_key("gmm2d") is None
    sd = paper.reported_table("ms_coco", "fid", "1", "sd-v1.5")
    flux = paper.reported_table("ms_coco", "fid", "2", "flux.1-dev")
    assert list(sd.columns) == [8, 12, 16, 20] and ("Learnable", "DyWeight") in flux.index
    assert paper.tables_for("drawbench", "hpsv2.1", "flux.1-dev") == ["3"]


def test_transfer_reported_is_table_a1():
    m = paper.transfer_reported()
    assert m.loc["cifar10", "C.-cifar10"] == 8.16 and m.loc["lsun_bedroom", "C.-lsun_bedroom"] == 12.65
    assert list(m.columns)[-1] == "iPNDM" and m.shape == (4, 5)


def test_report_command_renders_markdown_latex_and_figures(tmp_path):
    from conftest import store_rows

    from bench import store as results
    from bench.cli import main
    from solvers import artefacts
    from solvers.dyweight import DyWeight

    res, rep = tmp_path / "results", tmp_path / "reports"
    df = synthetic()
    df.loc[df.label == "DyWeight", "solver_key"] = "dw3"
    store_rows(res, [r.to_dict() for _, r in df.iterrows()])
    s = DyWeight.from_options(num_points=5, afs=True)
    training = artefacts.TrainingRecord(parameters=15, steps=3, step=[0, 1, 2], loss=[1.0, 0.5, 0.2], eval_step=[3],
                                        eval_error=[0.3], wall_time=1.0)
    with results.Store(res) as store:                        # the distilled solver's artefacts, as a run stores them
        store.write_artefacts([results.Artefact("dw3", a.kind, "quick", "gmm64", "DyWeight", 3, a.to_json(), "now")
                               for a in s.artefacts() + [training]])
    assert main(["report", "--results-dir", str(res), "--reports-dir", str(rep)]) == 0
    md = (rep / "quick.md").read_text()
    assert "**0.30**" in md and "<ins>4.00</ins>" in md and "–" in md
    assert "AMED-Solver" in md and "(reported)" in md
    assert "non-finite samples" in md                            # failed cells are listed with their reason
    assert r"\toprule" in (rep / "quick.tex").read_text()
    for name in ("quick_gmm64_endpoint_error", "quick_gmm64_coefficients", "quick_training",
                 "released_coefficients", "paper_tableA1_transfer"):
        assert (rep / "figures" / f"{name}.png").stat().st_size > 0
        assert (rep / "figures" / f"{name}.pdf").stat().st_size > 0
    assert "quick.md" in (rep / "index.md").read_text()


def test_report_command_without_results_is_one_line_error(tmp_path, capsys):
    from bench.cli import main
    assert main(["report", "--results-dir", str(tmp_path / "none"), "--reports-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no results directory" in err and err.count("\n") == 1


def test_coefficient_matrix_fig_a1_layout():
    from bench.report.plots import coefficient_matrix
    m = coefficient_matrix([[1.0], [-0.5, 1.5], [0.2, -1.0, 1.9]], [0.9, 1.1], afs=True)
    assert list(m.columns) == ["w[n-2]", "w[n-1]", "w[n]", "Σw", "s"]
    assert list(m.index) == ["AFS", "step 1", "step 2"]
    assert m.loc["step 2", "Σw"] == pytest.approx(1.1) and m.loc["step 1", "s"] == 0.9
    assert np.isnan(m.loc["AFS", "s"]) and np.isnan(m.loc["AFS", "w[n-1]"])


def test_transfer_matrix_from_distilled_on():
    from bench.report.grid_report import _transfer, transfer_matrix
    rows = []
    for model in ("gmm2d", "gmm64"):
        rows.append(dict(model=model, solver="ipndm", label="iPNDM", family="handcrafted", distilled_on="",
                         metric="fd", nfe=3, value=1.0, status="ok"))
        for i, src in enumerate(("gmm2d", "gmm64")):
            rows.append(dict(model=model, solver="dyweight", label=f"DyWeight (C.-{src})", family="learned",
                             distilled_on=src, metric="fd", nfe=3, value=0.1 if src == model else 0.5 + i,
                             status="ok"))
    df = pd.DataFrame(rows)
    m = transfer_matrix(df, "fd", 3)
    assert list(m.columns) == ["C.-gmm2d", "C.-gmm64", "iPNDM"] and list(m.index) == ["gmm2d", "gmm64"]
    assert m.loc["gmm2d", "C.-gmm2d"] == 0.1 and m.loc["gmm2d", "C.-gmm64"] == 1.5
    assert m.loc["gmm64", "C.-gmm2d"] == 0.5 and m.loc["gmm64", "iPNDM"] == 1.0
    native = df[df.distilled_on == df.model]
    assert _transfer(native, "g", None) == []
