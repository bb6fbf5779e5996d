"""Distillation memory is planned, not discovered: micro-batches give the batch's gradient, the paper grids plan within
an 80 GiB device, ranks distil together with the single process's update, and running out of device memory fails
one cell, not the run (issue "The paper grids fit in GPU memory")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import store
from bench.cli import main
from bench.distill import distill, memory
from bench.models.gmm import gmm2d

ROOT = Path(__file__).resolve().parent.parent
GiB, MiB = memory.GiB, memory.MiB


def test_the_planner_picks_the_largest_micro_batch_that_fits_and_refuses_what_cannot():
    p = memory.plan(batch=128, calls=9, per_call=113 * MiB, budget=80 * GiB)
    assert p.micro * p.accumulate == 128 and p.peak <= 0.85 * 80 * GiB and not p.checkpoint
    assert memory.plan(batch=128, calls=9, per_call=113 * MiB, budget=200 * GiB).micro == 128
    tight = memory.plan(batch=16, calls=20, per_call=2 * GiB, budget=24 * GiB)
    assert tight.checkpoint and tight.held_calls == 1                       # only checkpointing fits
    with pytest.raises(ValueError, match="one sample's backward pass needs"):
        memory.plan(batch=16, calls=20, per_call=30 * GiB, budget=24 * GiB)
    with pytest.raises(ValueError, match="does not split over 3"):
        memory.plan(batch=16, calls=2, per_call=MiB, budget=GiB, ranks=3)
    assert memory.parse_size("80GiB") == 80 * GiB and memory.parse_size("512MiB") == 512 * MiB


def test_micro_batches_give_the_batchs_update():
    """Float64 stand-in: 16 pairs per step in one backward pass, or in micro-batches of 4 (4 accumulation rounds),
    give the same coefficients."""
    m = gmm2d()
    grid = m.grid(6)
    options = dict(seed=0, cache_dir=False, num_samples=64, eval_samples=8, steps=6, batch_size=16)
    whole = distill("dyweight", m, grid, afs=True, **options)
    plan = memory.plan(batch=16, calls=4, per_call=1, budget=int(16 / 0.85) + 1)    # room for 4 samples
    assert plan.micro == 4 and plan.accumulate == 4
    parts = distill("dyweight", m, grid, afs=True, memory=plan, **options)
    assert torch.allclose(parts.weights, whole.weights, rtol=0, atol=1e-6)
    assert torch.allclose(parts.time_scale, whole.time_scale, rtol=0, atol=1e-6)
    assert parts.metadata["training"]["memory"] == plan.describe()


def test_the_probe_counts_activations_not_weights():
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.SiLU(), torch.nn.Linear(256, 64)).double()
    net.requires_grad_(False)
    x = torch.randn(1, 64, dtype=torch.float64)
    n = memory.probe_call(lambda y, s: net(y), x, torch.ones(1), net.parameters())
    assert 0 < n < 64 * 256 * 8                                             # activations, not the 128 KiB weights


def test_the_paper_grids_plan_every_distillation_within_an_80_gib_device(capsys):
    for grid in ("paper_table1", "paper_flux", "paper_sd_clip"):
        main(["run", "--grid", grid, "--dry-run", "--device-memory", "80GiB"])
        out = capsys.readouterr().out
        plans = [line for line in out.splitlines() if line.startswith("memory: ")]
        assert plans and not [p for p in plans if "DOES NOT FIT" in p], grid
        peaks = [float(p.split("peak ≈ ")[1].split(" GiB")[0]) for p in plans]
        assert max(peaks) <= 0.85 * 80
    main(["run", "--grid", "paper_table1", "--dry-run", "--device-memory", "8GiB"])
    out = capsys.readouterr().out
    assert "checkpointed calls" in out                                      # a small device: checkpointing


GRID = """
name = "dp"
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
distill = { steps = 8, num_samples = 64, eval_samples = 16, batch_size = 16 }
"""


def test_two_ranks_distil_together_with_the_single_process_update(tmp_path):
    (tmp_path / "dp.toml").write_text(GRID)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = ["-m", "bench", "run", "--grid", str(tmp_path / "dp.toml"), "--no-progress", "--results-dir"]
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *args, str(tmp_path / "two")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "solvers" / "dp" / "gmm2d" / "DyWeight-nfe3.json").read_text())
            for d in ("one", "two"))
    assert b["metadata"]["harness"]["ranks"] == 2 and a["metadata"]["harness"]["ranks"] == 1
    for key in ("weights_oldest_to_newest", "time_scale"):
        x, y = torch.tensor(sum(a[key], []) if key.startswith("w") else a[key]), \
            torch.tensor(sum(b[key], []) if key.startswith("w") else b[key])
        assert torch.allclose(x, y, rtol=0, atol=1e-6), key
    assert store.load(tmp_path / "two").value.item() == pytest.approx(store.load(tmp_path / "one").value.item(),
                                                                      rel=1e-6)


def test_running_out_of_device_memory_fails_that_cell_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    import bench.distill
    real = bench.distill.distill

    def oom_on_nfe3(kind, target, sigmas, *a, **k):
        if len(sigmas) == 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(kind, target, sigmas, *a, **k)
    monkeypatch.setattr(bench.distill, "distill", oom_on_nfe3)
    (tmp_path / "g.toml").write_text(GRID.replace("nfe = [3]", "nfe = [3, 4]"))
    assert main(["run", "--grid", str(tmp_path / "g.toml"), "--results-dir", str(tmp_path / "r"),
                 "--no-progress"]) == 1
    df = store.load(tmp_path / "r").set_index("nfe")
    assert df.loc[3, "status"] == "failed" and "ran out of device memory" in df.loc[3, "error"]
    assert df.loc[4, "status"] == "ok"
    assert "FAILED gmm2d / DyWeight +AFS / NFE 3" in capsys.readouterr().out


# ---- everything a grid needs is checked before the first cell -------------------------------------------------------
def _fid_grid(tmp_path, inception, reference) -> Path:
    text = f"""
name = "pre"
nfe = [3]
num_samples = 8
batch_size = 8
[[models]]
name = "standin_edm"
metrics = ["fid"]
metric_options = {{ fid = {{ inception = "{inception}", reference = "{reference}", num_samples = 8 }} }}
[[solvers]]
name = "ipndm"
afs = true
"""
    (tmp_path / "pre.toml").write_text(text)
    return tmp_path / "pre.toml"


def test_a_broken_inception_or_reference_file_fails_before_any_sampling(tmp_path, capsys):
    pytest.importorskip("diffusers")
    from bench import standins
    from bench.metrics.fid import write_reference
    inception = standins.write_inception(tmp_path / "inception.pt")
    good = write_reference(torch.rand(16, 3, 32, 32) * 2 - 1, tmp_path / "ref.npz", inception=inception)
    (tmp_path / "garbage.pt").write_bytes(b"not a torchscript file")
    (tmp_path / "garbage.npz").write_bytes(b"PK not a zip")
    import numpy as np
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(3), sigma=np.eye(3))
    for inc, ref, needle in ((tmp_path / "garbage.pt", good, "does not run"),
                             (inception, tmp_path / "garbage.npz", "is not readable reference statistics"),
                             (inception, tmp_path / "wrong.npz", "reference statistics of dimension")):
        res = tmp_path / f"r-{needle[:8].replace(' ', '_')}"
        assert main(["run", "--grid", str(_fid_grid(tmp_path, inc, ref)), "--results-dir", str(res),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
        assert store.load(res).empty                                     # nothing was sampled
    assert main(["run", "--grid", str(_fid_grid(tmp_path, inception, good)), "--results-dir",
                 str(tmp_path / "ok"), "--no-progress"]) == 0


def needs_a_package():
    m = gmm2d()
    m.packages = (("no_such_package_xyz", "models"),)
    return m


def test_a_missing_package_fails_before_any_sampling_naming_its_extra(tmp_path, monkeypatch, capsys):
    import bench.models
    monkeypatch.setitem(bench.models.REGISTRY.targets, "needs_pkg", "test_memory:needs_a_package")
    (tmp_path / "p.toml").write_text('name = "p"\nnfe = [3]\nnum_samples = 8\n[[models]]\nname = "needs_pkg"\n'
                                     'metrics = ["endpoint_error"]\n[[solvers]]\nname = "euler"\n')
    assert main(["run", "--grid", str(tmp_path / "p.toml"), "--results-dir", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "needs the Python package(s) no_such_package_xyz: pip install -e '.[models]'" in err
    assert store.load(tmp_path / "r").empty
