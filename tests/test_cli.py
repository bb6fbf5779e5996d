"""The command line: `python -m bench run|list`, bad input as one line before any work, the quick grid end to end."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bench.models
import solvers
from bench import store as results
from bench.cli import main
from bench.models.gmm import GaussianMixture, gmm2d

SMALL = """
name = "small"
nfe = [3]
num_samples = 16
batch_size = 8
[[models]]
name = "gmm2d"
metrics = ["fd_exact"]
[[solvers]]
name = "euler"
label = "Euler"
"""


@pytest.fixture
def stored(tmp_path):
    """A results directory holding one finished small grid."""
    (tmp_path / "small.toml").write_text(SMALL)
    assert main(["run", "--grid", str(tmp_path / "small.toml"), "--results-dir", str(tmp_path / "res"),
                 "--no-progress"]) == 0
    return tmp_path


class NeedsWeights(GaussianMixture):
    def requirements(self):
        return [bench.models.Requirement("tiny.pt", Path("/nonexistent/tiny.pt"), env="TINY_WEIGHTS")]


def needs_weights():
    g = gmm2d()
    return NeedsWeights("needs_weights", g.pi, g.mu, g.U @ torch.diag_embed(g.lam) @ g.U.transpose(1, 2))


@pytest.mark.parametrize("grid_text, args, needle", [
    (None, ["--grid", "no_such_grid"], "unknown grid 'no_such_grid'; accepted: "),
    ("name = [broken", [], "is not valid TOML"),
    (SMALL.replace('name = "gmm2d"', 'name = "gmm3d"'), [], "unknown model 'gmm3d'; accepted: gmm2d, gmm64"),
    (SMALL.replace('name = "euler"', 'name = "rk4"'), [], "unknown solver 'rk4'; accepted: euler, heun"),
    (SMALL.replace('"fd_exact"', '"fid50k"'), [], "unknown metric 'fid50k'; accepted: "),
    (SMALL.replace('name = "euler"', 'name = "heun"'), [], "heun cannot spend exactly NFE=3"),
    (SMALL.replace('name = "gmm2d"', 'name = "needs_weights"'), [], "missing tiny.pt at /nonexistent/tiny.pt"),
    (SMALL, ["--num-samples", "0"], "--num-samples must be a positive integer"),
    (SMALL, ["--set", "solvers[Heun].afs=true"], "no solvers entry 'Heun'; accepted: Euler"),
])
def test_bad_input_is_one_line_with_a_nonzero_exit_and_keeps_stored_results(stored, capsys, monkeypatch, grid_text,
                                                                           args, needle):
    monkeypatch.setitem(bench.models.REGISTRY.targets, "needs_weights", "test_cli:needs_weights")
    res = stored / "res"
    before = results.load(res)
    capsys.readouterr()
    if grid_text is not None:
        (stored / "bad.toml").write_text(grid_text)
        args = ["--grid", str(stored / "bad.toml")] + args
    for extra in ([], ["--dry-run"]):
        code = main(["run", *args, "--results-dir", str(res), "--no-progress", *extra])
        out, err = capsys.readouterr()
        if extra and needle.startswith("missing"):       # a dry run prints its whole plan, then what is missing
            assert code == 1 and needle in out and "MISSING" in out
            continue
        assert code == 2
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
    after = results.load(res)
    assert len(before) == 1 and after.equals(before)


def test_dry_run_lists_cells_needs_and_cost_and_runs_nothing(tmp_path, capsys):
    from bench import grid as grids
    g = grids.load("quick")
    assert main(["run", "--grid", "quick", "--dry-run", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gmm64" in out and "DPM-Solver++(3M) +AFS" in out and "distils on gmm64" in out
    evaluations = sum(c.nfe * c.num_samples for c in g.cells)
    distils = len({(c.model, c.nfe) for c in g.cells if c.row.kind == "distilled"})
    assert f"cost: {len(g.cells)} of {len(g.cells)} cells to run, {evaluations:,} network evaluations" in out
    assert distils == 10 and f"plus {distils} distillations" in out      # 2 mixtures x 4 NFEs + digits x 2
    assert not (tmp_path / results.DB_NAME).exists()


def test_dry_run_of_a_stored_grid_has_nothing_left(stored, capsys):
    capsys.readouterr()
    assert main(["run", "--grid", str(stored / "small.toml"), "--dry-run", "--results-dir", str(stored / "res")]) == 0
    out = capsys.readouterr().out
    assert "stored" in out and "cost: 0 of 1 cells to run, 0 network evaluations" in out


def test_list_shows_grids_models_solvers_metrics_and_what_runs_here(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for section in ("grids:", "models:", "solvers:", "metrics:"):
        assert section in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line[2] != " "}
    assert "runnable" in lines["quick"] and "runnable" in lines["gmm64"] and "runnable" in lines["unipc"]
    assert "gmm2d" in lines["fd_exact"]
    assert main(["list", "--width", "90"]) == 0
    out = capsys.readouterr().out
    assert "missing missing" not in out and max(len(line) for line in out.splitlines()) <= 90
    entry = out[out.index("  paper_table1 "):].split("\n  paper_teacher")[0]
    needs = " ".join(entry.split("cells")[0].split()).split("files: ")[1].rstrip(";").split(", ")
    assert "edm-cifar10" in needs and len(needs) == len(set(needs))       # each file named once


def test_quick_grid_runs_end_to_end_on_a_reduced_sample_count(tmp_path, capsys):
    """The README's main command with 48 samples per cell and a short distillation (mechanics, not quality)."""
    args = ["run", "--grid", "quick", "--results-dir", str(tmp_path), "--num-samples", "48", "--no-progress",
            "--set", "solvers[DyWeight].distill.steps=8", "--set", "solvers[DyWeight].distill.num_samples=64",
            "--set", "solvers[DyWeight].distill.eval_samples=0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    df = results.load(tmp_path)
    # cells: 2 mixtures x (7 rows x 4 NFE + 2 floors) + centred digits (7 x 2 + 2 floors) + uncentred (2 x 2)
    # rows: the mixtures score 2 metrics, their floors FD only; centred digits 3, their floors the 2 FDs; uncentred 2
    assert len(df) == 2 * (56 + 2) + (42 + 4) + 8 and (df.status == "ok").all() and df.value.notna().all()
    every = {"Euler", "iPNDM", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-2", "UniPC-3", "DyWeight"}
    assert set(df[df.family != "floor"].label) == every
    assert "gmm64 · Endpoint error (rel. L2)" in out and "DyWeight" in out and "0 failed" in out
    assert len(list((tmp_path / "solvers" / "quick").glob("*/DyWeight-nfe*.json"))) == 10
    assert set(df[(df.model == "digits_centred") & (df.family != "floor")].label) == every
    ok = df[df.family != "floor"]                                   # every solved value carries its interval
    assert (ok.ci_low <= ok.value).all() and (ok.value <= ok.ci_high).all()
    assert main(args) == 0                                            # resumes: nothing left to do
    assert "80 of 80 cells already stored" in capsys.readouterr().err
    assert len(results.load(tmp_path)) == 170


@pytest.mark.parametrize("error", [KeyError("fid"), ValueError("too many values to unpack"), TypeError("bad")])
def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch, error):
    """Only input the user can fix (InputError, a missing file) becomes a one-line exit 2; a bug propagates."""
    import bench.run

    def broken(*args, **kwargs):
        raise error
    monkeypatch.setattr(bench.run, "run", broken)
    with pytest.raises(type(error)):
        main(["run", "--grid", "quick", "--results-dir", str(tmp_path), "--no-progress"])


def test_input_errors_of_every_layer_are_one_line(capsys):
    from solvers.errors import InputError
    for call in (lambda: solvers.get("nope"), lambda: bench.models.get("nope")):
        with pytest.raises(InputError):
            call()
    assert main(["run", "--grid", "no_such_grid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown grid 'no_such_grid'; accepted:")
