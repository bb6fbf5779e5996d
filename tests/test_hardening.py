"""Hardening: no code runs from a data file, caches heal, every bad input is one line (issue "Hardening")."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench import grid as grids
from bench import store
from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent

GRID = """
name = "h"
nfe = [3]
num_samples = 16
batch_size = 16
[[models]]
name = "gmm2d"
metrics = ["endpoint_error"]
[[solvers]]
name = "dyweight"
label = "DyWeight"
afs = true
distill = { steps = 3, num_samples = 16, eval_samples = 0 }
"""


def write(tmp_path, text=GRID, name="h.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def run(grid, res) -> int:
    return main(["run", "--grid", str(grid), "--results-dir", str(res), "--no-progress"])


# ---- results files are data ------------------------------------------------------------------------------------------
def test_a_crafted_solver_json_never_imports_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                      "from solvers.dyweight import DyWeight as Evil\n")
    grid, res = write(tmp_path), tmp_path / "res"
    assert run(grid, res) == 0
    saved = res / "solvers" / "h" / "gmm2d" / "DyWeight-nfe3.json"
    state = json.loads(saved.read_text())
    state["spec"] = f"{tmp_path / 'evil.py'}:Evil"                  # the settings hash still matches
    saved.write_text(json.dumps(state))
    calls = []
    import bench.distill
    real = bench.distill.distill
    monkeypatch.setattr(bench.distill, "distill", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["run", "--grid", str(grid), "--results-dir", str(res), "--no-progress", "--num-samples", "8"]) == 0
    assert not marker.exists() and calls == [1]                     # not imported; distilled again instead
    import solvers
    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="names code to import"):
        solvers.load(crafted)
    assert not marker.exists()


def test_a_solver_whose_weights_were_altered_is_distilled_again(tmp_path, monkeypatch):
    grid, res = write(tmp_path), tmp_path / "res"
    assert run(grid, res) == 0
    saved = res / "solvers" / "h" / "gmm2d" / "DyWeight-nfe3.json"
    state = json.loads(saved.read_text())
    state["weights_oldest_to_newest"][1][0] += 0.5                  # the settings hash still matches
    saved.write_text(json.dumps(state))
    calls = []
    import bench.distill
    real = bench.distill.distill
    monkeypatch.setattr(bench.distill, "distill", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["run", "--grid", str(grid), "--results-dir", str(res), "--no-progress", "--num-samples", "8"]) == 0
    assert calls == [1]


# ---- caches heal -----------------------------------------------------------------------------------------------------
def test_a_truncated_reference_cache_is_recomputed(tmp_path):
    text = GRID.split("[[solvers]]")[0] + '[[solvers]]\nname = "euler"\nlabel = "Euler"\n'
    grid = write(tmp_path, text)
    assert run(grid, tmp_path / "first") == 0
    good = store.load(tmp_path / "first").value.item()
    cached = list((tmp_path / "first" / "cache" / "reference").glob("gmm2d-*.pt"))
    assert len(cached) == 1
    res = tmp_path / "res"
    (res / "cache" / "reference").mkdir(parents=True)
    half = res / "cache" / "reference" / cached[0].name
    half.write_bytes(cached[0].read_bytes()[:100])                      # a killed writer's half file
    assert run(grid, res) == 0
    df = store.load(res)
    assert (df.status == "ok").all() and df.value.item() == pytest.approx(good, rel=1e-12)
    assert torch.equal(torch.load(half, weights_only=True), torch.load(cached[0], weights_only=True))   # healed


WRITER = textwrap.dedent("""
    import sys, torch
    from bench.models.gmm import gmm2d
    m = gmm2d()
    out = m.cached_reference("k", sys.argv[1], lambda: torch.arange(200000, dtype=torch.float64))
    assert out.numel() == 200000
""")


def test_concurrent_reference_writers_all_succeed(tmp_path):
    (tmp_path / "w.py").write_text(WRITER)
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "w.py"), str(tmp_path / "cache")], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    assert not list((tmp_path / "cache" / "reference").glob("*.tmp"))


# ---- every bad input is one line, before any work -------------------------------------------------------------------
BASE = GRID.split("[[solvers]]")[0]


@pytest.mark.parametrize("text, needle", [
    (BASE + '[[solvers]]\nname = "ipndm"\nschedule = "polynomial"\nschedule_options = { rh = 7 }\n',
     "the polynomial schedule has no option 'rh'; accepted: rho"),
    (BASE + '[[solvers]]\nname = "ipndm"\nschedule = "polynomial"\nschedule_options = { rho = "x" }\n',
     "not of the right type"),
    (BASE.replace('metrics = ["endpoint_error"]', 'metrics = ["endpoint_error"]\nmetric_options = { fid = {} }')
     + '[[solvers]]\nname = "ipndm"\n', "metric_options names 'fid', which this model does not score"),
    (BASE + '[[solvers]]\nname = "dyweight"\noptions = { histroy = 2 }\n',
     "dyweight has no structure option 'histroy'"),
    (BASE.replace('metrics = ["endpoint_error"]', 'metrics = ["fd_exact"]').replace("num_samples = 16",
                                                                                   "num_samples = 1")
     + '[[solvers]]\nname = "ipndm"\n', "needs at least 2 samples per cell"),
    (BASE.replace("nfe = [3]", "nfe = [1000000000000]") + '[[solvers]]\nname = "euler"\n', "is above 10,000"),
    (BASE.replace('name = "h"', 'name = "../../x"') + '[[solvers]]\nname = "euler"\n', "grid name '../../x' must be"),
    (BASE + '[[solvers]]\nname = "euler"\nafs = "yes"\n', "afs must be true or false"),
])
def test_bad_grid_values_are_one_line_errors(tmp_path, capsys, text, needle):
    assert main(["run", "--grid", str(write(tmp_path, text)), "--results-dir", str(tmp_path / "r"),
                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_other_bad_inputs_are_one_line_errors(tmp_path, capsys):
    grid = write(tmp_path, BASE + '[[solvers]]\nname = "euler"\n')
    cases = [(["run", "--grid", str(grid), "--set", "num_samples.x=3", "--dry-run"],
              "'num_samples' is 16, not a table"),
             (["run", "--grid", str(grid), "--seeds", "9-3", "--dry-run"], "--seeds must be A-B"),
             (["run", "--grid", str(grid), "--seeds", "0-9", "--num-samples", "3"],
              "give --seeds A-B or --num-samples")]
    (tmp_path / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    cases.append((["run", "--grid", str(tmp_path / "latin1.toml"), "--dry-run"], "is not UTF-8 text"))
    (tmp_path / "afile").write_text("x")
    cases.append((["run", "--grid", str(grid), "--results-dir", str(tmp_path / "afile" / "sub")],
                  "cannot write the results directory"))
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_a_value_changing_metric_option_makes_a_new_cell(tmp_path):
    from bench.metrics import identity
    assert identity("fid", {"reference": "a.npz", "batch_size": 8}) != identity("fid", {"reference": "b.npz"})
    assert identity("fid", {"reference": "a.npz", "batch_size": 8}) == identity("fid", {"reference": "a.npz"})
    text = BASE.replace('metrics = ["endpoint_error"]', 'metrics = ["fd_exact"]') + '[[solvers]]\nname = "euler"\n'
    plain = grids.load(write(tmp_path, text)).cells[0]
    fake = grids.load(write(tmp_path, text, "b.toml")).cells[0]
    assert plain.metric_keys == fake.metric_keys and plain.key == fake.key


def test_openclip_weights_are_read_weights_only(tmp_path):
    """CLIP score and HPS read their checkpoints through torch's weights-only loader: a file that would run code
    is refused in one line and runs nothing; a checkpoint that does not fit names the first mismatch."""
    import os

    from bench.metrics.text_image import open_clip_weights
    flag = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {flag}",)
    torch.save({"state_dict": {"weight": torch.zeros(2, 2)}, "x": Exploit()}, tmp_path / "evil.bin")
    model = torch.nn.Linear(2, 2, bias=False)
    with pytest.raises(ValueError, match=r"evil\.bin: not a weights-only OpenCLIP checkpoint") as e:
        open_clip_weights(model, tmp_path / "evil.bin")
    assert not flag.exists() and "\n" not in str(e.value)
    torch.save({"state_dict": {"module.weight": torch.ones(2, 2)}}, tmp_path / "ddp.bin")
    assert torch.equal(open_clip_weights(model, tmp_path / "ddp.bin").weight, torch.ones(2, 2))
    torch.save({"weight": torch.ones(3, 2)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="does not fit the architecture: Error.*size mismatch for weight") as e:
        open_clip_weights(model, tmp_path / "other.bin")
    assert "\n" not in str(e.value)


def test_a_grid_file_may_be_json(tmp_path):
    """What a program writes (gpu-check's torchrun pass): the same table as JSON; bad JSON is one line."""
    import json as _json
    (tmp_path / "g.json").write_text(_json.dumps({"name": "g", "nfe": [3], "num_samples": 8, "models": [
        {"name": "gmm2d", "metrics": ["endpoint_error"]}], "solvers": [{"name": "euler", "afs": True}]}))
    g = grids.load(tmp_path / "g.json")
    assert g.name == "g" and len(g.cells) == 1
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        grids.load(tmp_path / "bad.json")
