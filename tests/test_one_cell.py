"""Every number shown is exactly one measured cell, reached by one path: keys cover what determines a value, nothing
is merged, runs are recorded, failures are visible (issue: "Every number the benchmark shows is exactly one measured
cell")."""
from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from bench import grid as grids
from bench import store
from bench.cli import main
from bench.store.select import select

GRID = """
name = "one"
nfe = [3]
num_samples = 24
batch_size = 24
[[models]]
name = "gmm2d"
metrics = ["endpoint_error"]
[[solvers]]
name = "euler"
label = "Euler"
[[solvers]]
name = "dyweight"
label = "DyWeight"
afs = true
distill = { steps = 4, num_samples = 32, eval_samples = 0 }
"""


def write(tmp_path: Path, text: str = GRID, name: str = "one.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def run(*args) -> int:
    return main(["run", "--no-progress", *map(str, args)])


def test_two_runs_with_other_sample_counts_and_steps_are_never_averaged(tmp_path, capsys):
    grid, res = write(tmp_path), tmp_path / "res"
    assert run("--grid", grid, "--results-dir", res, "--num-samples", 16) == 0
    assert run("--grid", grid, "--results-dir", res, "--num-samples", 32) == 0
    assert run("--grid", grid, "--results-dir", res, "--set", "solvers[DyWeight].distill.steps=9") == 0
    everything = store.load(res)
    dy = everything[(everything.label == "DyWeight")]
    assert len(dy) == 3 and dy.value.nunique() == 3                  # three different measured cells
    from bench.stats import format_interval
    last = dy[dy.run_id == dy.run_id.iloc[-1]].iloc[0]
    shown = select(res).rows
    assert shown[shown.label == "DyWeight"].value.item() == last.value   # the latest run's cell, exactly
    assert main(["report", "--results-dir", str(res)]) == 0
    md = (res / "reports" / "one.md").read_text()
    row = next(line for line in md.splitlines() if "| DyWeight" in line)
    assert format_interval(last.value, last.ci_low, last.ci_high) in row
    guide = re.search(r"\[docs/reading-reports.md\]\(([^)]+)\)", md).group(1)   # written in a temporary folder,
    assert (res / "reports" / guide).resolve().name == "reading-reports.md"       # linked from where it ends up
    assert (res / "reports" / guide).exists()
    assert "other stored cell-metrics of this grid are left out" in md and "other sample counts (16" in md
    first = select(res, run="-3").rows
    assert set(first.num_samples) == {16}
    assert main(["report", "--results-dir", str(res), "--where", "num_samples=32", "--reports-dir",
                 str(tmp_path / "r32")]) == 0
    picked = (tmp_path / "r32" / "one.md").read_text()
    assert "samples per cell: 32" in picked


def test_editing_a_user_solver_file_makes_new_cells(tmp_path, capsys):
    solver = tmp_path / "mine.py"
    helper = tmp_path / "mine_helper.py"
    helper.write_text("SCALE = 1.0\n")
    solver.write_text(textwrap.dedent('''
        from solvers.euler import Euler
        from mine_helper import SCALE

        class Mine(Euler):
            name = "mine"
    '''))
    grid, res = write(tmp_path, GRID.split("[[solvers]]\nname = \"dyweight\"")[0]), tmp_path / "res"
    args = ["--grid", grid, "--results-dir", res, "--solver", f"{solver}:Mine"]
    key = grids.load(grid, extra_solvers=[(f"{solver}:Mine", False)]).cells[-1].key
    assert run(*args) == 0
    capsys.readouterr()
    assert main(["run", *map(str, args), "--dry-run"]) == 0
    assert "stored" in capsys.readouterr().out.split("Mine")[1].splitlines()[0]
    helper.write_text("SCALE = 2.0\n")                                 # an edit in a file it imports
    again = grids.load(grid, extra_solvers=[(f"{solver}:Mine", False)]).cells[-1].key
    assert again != key
    assert main(["run", *map(str, args), "--dry-run"]) == 0
    assert "to run" in capsys.readouterr().out.split("Mine")[1].splitlines()[0]


def test_rows_that_differ_only_in_label_are_refused(tmp_path):
    twice = GRID + '[[solvers]]\nname = "euler"\nlabel = "Euler again"\n'
    with pytest.raises(ValueError, match="rows 'Euler' and 'Euler again' are the same cell"):
        grids.load(write(tmp_path, twice))


def test_a_run_with_a_failed_cell_exits_1_after_storing_the_rest(tmp_path, capsys, monkeypatch):
    from bench.metrics.analytic import EndpointError
    real = EndpointError.sample_scores

    def boom(self, batch):
        if batch.model.name == "gmm64":
            raise RuntimeError("the reference file is corrupt")
        return real(self, batch)
    monkeypatch.setattr(EndpointError, "sample_scores", boom)
    text = GRID.replace('metrics = ["endpoint_error"]', 'metrics = ["endpoint_error"]\n[[models]]\nname = "gmm64"\n'
                        'metrics = ["endpoint_error"]')
    code = run("--grid", write(tmp_path, text), "--results-dir", tmp_path / "res")
    out = capsys.readouterr().out
    assert code == 1
    assert "2 failed" in out and "FAILED gmm64 / Euler / NFE 3: endpoint_error failed: the reference file is " \
                                 "corrupt" in out and "--retry-failed" in out
    df = store.load(tmp_path / "res")
    assert len(df) == 4 and (df[df.model == "gmm2d"].status == "ok").all()
    assert (df[df.model == "gmm64"].status == "failed").all()


def test_a_metric_failing_on_its_first_batch_stops_sampling_the_cell(tmp_path, monkeypatch):
    from bench.metrics.analytic import EndpointError
    calls = []

    def boom(self, batch):
        calls.append(len(batch.seeds))
        raise RuntimeError("no reference")
    monkeypatch.setattr(EndpointError, "sample_scores", boom)
    grid = write(tmp_path, GRID.replace("batch_size = 24", "batch_size = 4").split('[[solvers]]\nname = "dyweight"')[0])
    assert run("--grid", grid, "--results-dir", tmp_path / "res") == 1
    assert calls == [4]                                              # one batch, not six


def test_budgets_are_counted_by_the_student_for_every_learned_solver():
    """A distillation records the network evaluations its student spends (EPD with K = 2 spends 3 per step)."""
    from bench.distill import student_nfe
    from solvers.epd import EPD
    epd = EPD.from_options(num_points=4, K=2)
    assert student_nfe(epd, [80.0, 1.0, 0.1, 0.002], afs=True) == 8
    g = grids.load("learned_quick")
    for c in g.cells:
        if c.row.kind == "distilled":
            assert c.distill_settings is not None
    assert any(c.row.kind == "distilled" and c.row.name == "epd" and c.nfe == 5 for c in g.cells)


def test_the_export_gives_the_shown_cells_and_per_sample_scores(tmp_path):
    grid, res = write(tmp_path), tmp_path / "res"
    assert run("--grid", grid, "--results-dir", res, "--seeds", "10-33") == 0
    assert main(["export", "--results-dir", str(res), "--out", str(tmp_path / "cells.csv")]) == 0
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert len(cells) == 2 and set(cells.seeds) == {"10-33"} and set(cells.num_samples) == {24}
    assert main(["export", "--results-dir", str(res), "--out", str(tmp_path / "s.csv"), "--scores"]) == 0
    scores = pd.read_csv(tmp_path / "s.csv")
    assert len(scores) == 2 * 24 and sorted(set(scores.seed)) == list(range(10, 34))
    for label, part in scores.groupby("label"):
        stored = cells[cells.label == label].value.item()
        assert math.isclose(part.score.mean(), stored, rel_tol=1e-12)
    with pytest.raises(SystemExit):
        main(["export", "--results-dir", str(res), "--out", str(tmp_path / "x.txt"), "--format", "xls"])
    assert main(["export", "--results-dir", str(res), "--out", str(tmp_path / "x.txt")]) == 2


def test_saved_samples_are_one_file_per_cell_for_low_dimensional_data(tmp_path):
    import numpy as np
    grid, res = write(tmp_path), tmp_path / "res"
    assert run("--grid", grid, "--results-dir", res, "--save-samples", tmp_path / "samples") == 0
    files = sorted((tmp_path / "samples" / "one" / "gmm2d").glob("*.npz"))
    assert [f.name for f in files] == ["DyWeight-nfe3.npz", "Euler-nfe3.npz"]
    data = np.load(files[1])
    assert data["samples"].shape == (24, 2) and data["seeds"].tolist() == list(range(24))


from solvers.euler import Euler  # noqa: E402


class HalfEuler(Euler):
    """A user's solver defined in a module (as in a notebook's __main__)."""
    label = "Half Euler"


def test_evaluate_runs_one_solver_through_the_run_path():
    import bench
    df = bench.evaluate("euler", "gmm2d", nfe=[3, 4], metrics=["endpoint_error", "fd_exact"], num_samples=40)
    assert list(df.nfe) == [3, 3, 4, 4] and set(df.metric) == {"endpoint_error", "fd_exact"}
    assert (df.ci_low <= df.value).all() and (df.status == "ok").all()
    mine = bench.evaluate(HalfEuler, "gmm2d", nfe=3, num_samples=40)
    assert mine.label.item() == "Half Euler"
    assert mine.value.item() == df[(df.nfe == 3) & (df.metric == "endpoint_error")].value.item()
