"""What the side commands measured is grids now: their ratios come from the store (paired ratios from stored
per-sample scores, bench.stats.paired_ratio), the solver-overhead study stores its rows like any run, and the
shipped study grids load and plan."""
from __future__ import annotations

import pytest
import torch

from bench import cli, stats, store
from bench import grid as grids


def test_paired_ratio():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(500, generator=g, dtype=torch.float64) + 0.5
    same = stats.paired_ratio(a, a)
    assert same.value == 1.0 and same.low == same.high == 1.0          # paired: no noise in a ratio to itself
    half = stats.paired_ratio(a / 2, a)
    assert half.low == half.high == 0.5 and half.value == pytest.approx(0.5)
    b = a + 0.3 * torch.randn(500, generator=g, dtype=torch.float64).abs()
    r = stats.paired_ratio(a, b)
    assert r.low < r.value < r.high < 1 and r == stats.paired_ratio(a, b)      # reproducible
    assert r.value == pytest.approx(float(a.mean() / b.mean()))
    with pytest.raises(ValueError, match="one shape"):
        stats.paired_ratio(a, b[:10])


TINY = """
name = "tiny_ia"
nfe = [3]
num_samples = 64
batch_size = 64
metrics = ["endpoint_error"]
[[models]]
name = "gmm_scales"
[[ratios]]
title = "per-sample / the best global schedule"
rows = ["Instance-aware"]
against = ["LD3", "GITS + UniPC"]
[[solvers]]
name = "unipc"
label = "UniPC"
afs = true
options = { order = 3, variant = "bh1" }
[[solvers]]
name = "ld3"
label = "LD3"
afs = true
distill = { teacher_steps = 8, num_samples = 32, eval_samples = 8, steps = 4 }
[[solvers]]
name = "gits"
label = "GITS + UniPC"
afs = true
distill = { base = "unipc", base_options = { order = 3, variant = "bh1" }, teacher_steps = 8, num_samples = 16 }
[[solvers]]
name = "instance_aware"
label = "Instance-aware"
afs = true
distill = { teacher_steps = 8, num_samples = 32, eval_samples = 8, steps = 8, init_from = { solver = "gits", \
base = "unipc", base_options = { order = 3, variant = "bh1" }, teacher_steps = 8, num_samples = 16 } }
"""


def test_the_grids_ratio_tables_come_from_stored_per_sample_scores(tmp_path):
    (tmp_path / "ia.toml").write_text(TINY)
    res = tmp_path / "res"
    assert cli.main(["run", "--grid", str(tmp_path / "ia.toml"), "--results-dir", str(res), "--no-progress"]) == 0
    assert cli.main(["report", "--results-dir", str(res)]) == 0
    md = (res / "reports" / "tiny_ia.md").read_text()
    section = md.split("per-sample / the best global schedule")[1]
    row = next(line for line in section.splitlines() if line.startswith("| Instance-aware"))
    value, low, high = (float(v) for v in row.split("|")[2].strip().strip("*").replace("[", "").replace("]", "")
                        .replace(",", "").split())
    df = store.load(res)
    ia = df[(df.label == "Instance-aware")].iloc[0]
    best = df[df.label.isin(["LD3", "GITS + UniPC"])].sort_values("value").iloc[0]
    stored = store.scores(res, [(ia.cell_key, ia.metric_key), (best.cell_key, best.metric_key)])
    expect = stats.paired_ratio(torch.as_tensor(stored[(ia.cell_key, ia.metric_key)][1]),
                                torch.as_tensor(stored[(best.cell_key, best.metric_key)][1]))
    assert value == pytest.approx(expect.value, abs=5e-4) and low == pytest.approx(expect.low, abs=5e-4)
    assert high == pytest.approx(expect.high, abs=5e-4) and best.label in section.split("(against)")[1]
    assert "## Per-sample time grids" in md and "## Learned time grids" in md


def test_the_perf_study_stores_its_measurements_as_a_run(tmp_path):
    pytest.importorskip("diffusers")
    (tmp_path / "perf.toml").write_text('name = "perf_t"\nkind = "perf"\n[study]\nnfe = [5]\nrepeats = 3\n'
                                         'batch = 1\nwidth = 4\n')
    res = tmp_path / "res"
    assert cli.main(["run", "--grid", str(tmp_path / "perf.toml"), "--results-dir", str(res)]) == 0
    df = store.load(res)
    assert {"overhead", "implied", "per_sample_path", "diffusers", "diffusers_difference"} <= set(df.metric)
    over = df[df.metric == "overhead"]
    import solvers
    from bench.studies.perf import plan
    assert set(over.solver) == {n for n in solvers.names() if plan(n, 5) is not None} and (over.value > 0).all()
    assert (over.ci_low <= over.value).all() and (over.value <= over.ci_high).all()
    assert (df[df.metric == "diffusers_difference"].value < 1e-5).all()          # the same updates
    assert cli.main(["report", "--results-dir", str(res)]) == 0
    md = (res / "reports" / "perf_t.md").read_text()
    assert "sample / (NFE × network call)" in md and "| unipc" in md.replace("Handcrafted | unipc", "| unipc")


def test_bad_study_settings_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "p.toml").write_text('name = "p"\nkind = "perf"\n[study]\nrepeats = 0\n')
    assert cli.main(["run", "--grid", str(tmp_path / "p.toml"), "--results-dir", str(tmp_path / "r")]) == 2
    assert "repeats must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["distill_study", "instance_study", "digits_check", "perf", "perf_threads"])
def test_the_study_grids_load(name):
    g = grids.load(name)
    assert g.kind in ("sampling", "perf")
    if g.kind == "sampling":
        assert g.cells


def test_the_thread_counts_of_perf_threads_are_two_stored_cells(tmp_path, monkeypatch):
    """The quick grid's wall time under 1 thread and under the core count: two cells, not one kept and one dropped
    (the thread count is part of the cell's identity)."""
    from bench.studies import perf
    monkeypatch.setattr(perf, "measure", lambda cfg: [])
    real = perf.subprocess.run
    monkeypatch.setattr(perf.subprocess, "run",                              # the grid itself is not run here
                        lambda cmd, **k: None if cmd[1:3] == ["-m", "bench"] else real(cmd, **k))
    monkeypatch.setattr(perf.os, "cpu_count", lambda: 2)
    perf.run({"name": "perf_t", "kind": "perf", "study": {"quick_threads": True, "diffusers": False}}, tmp_path)
    wall = store.load(tmp_path)
    wall = wall[wall.metric == "wall_time"]
    assert sorted(wall.label) == ["quick, 1 torch thread(s)", "quick, 2 torch thread(s)"]
    assert wall.cell_key.nunique() == 2 and set(wall.num_samples) == {1}


def test_a_study_with_two_rows_of_one_identity_is_refused(tmp_path):
    from bench.store import Result
    row = dict(cell_key="k", metric_key="m", grid="g", model="x", solver="s", label="a", family="handcrafted",
               kind="measurement", paper_method="", options="{}", nfe=0, afs=False, schedule="polynomial",
               metric="wall_time", metric_label="t", metric_options="{}", higher_is_better=False, value=1.0,
               status="ok", error="", ci_low=float("nan"), ci_high=float("nan"), ci_method="", replicas=1,
               num_samples=1, seeds="", paper_key="", instance_of="", distilled_on="", solver_key="", code_hash="",
               code_version="", config_hash="", torch_version="", device="cpu", world_size=1, wall_time=0.0,
               created_at="", run_id="")
    with pytest.raises(ValueError, match="'a' and 'b'.*same cell identity"):
        store.write_study(tmp_path, "g", {}, [Result(**row), Result(**{**row, "label": "b"})])
    assert not (tmp_path / "results.sqlite").exists() or store.load(tmp_path).empty
