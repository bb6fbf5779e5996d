"""The harness: grid validation, cells, determinism, learned solvers, failed cells (bench/grid.py, bench/runner.py)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench.models
from bench import grid as grids
from bench import run as runner
from bench import store as results
from bench.models.gmm import GaussianMixture, gmm2d
from solvers.dyweight import DyWeight

ROOT = Path(__file__).resolve().parent.parent

BASE = """
name = "{name}"
nfe = {nfe}
num_samples = {num_samples}
batch_size = {batch_size}
[[models]]
name = "{model}"
metrics = ["fd_exact", "endpoint_error"]
"""


def write_grid(tmp_path: Path, solvers_toml: str, name: str = "t", nfe="[3, 5]", num_samples: int = 40,
               batch_size: int = 16, model: str = "gmm2d", extra: str = "") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(BASE.format(name=name, nfe=nfe, num_samples=num_samples, batch_size=batch_size, model=model)
                 + extra + solvers_toml)
    return p


IPNDM = '[[solvers]]\nname = "ipndm"\nlabel = "iPNDM"\nafs = true\n'
EULER = '[[solvers]]\nname = "euler"\nlabel = "Euler"\n'


# ---- grids ------------------------------------------------------------------------------------------------------
def test_quick_grid_expands_to_its_cells():
    g = grids.load("quick")
    assert {c.model for c in g.cells} == {"gmm2d", "gmm64", "digits_centred", "digits"}
    every = {"Euler", "iPNDM", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-2", "UniPC-3", "DyWeight"}
    for model, floors in (("gmm2d", {"exact_ode", "data"}), ("gmm64", {"exact_ode", "data"}),
                          ("digits_centred", {"teacher", "real"})):
        solved = {c.row.label for c in g.cells if c.model == model and c.row.family != "floor"}
        assert solved == every                           # every solver, both orders, DyWeight, on every model
        assert {c.row.source for c in g.cells if c.model == model and c.row.family == "floor"} == floors
    # the uncentred digits reading: two rows to show the AFS artefact beside the centred one
    assert {c.row.label for c in g.cells if c.model == "digits"} == {"iPNDM", "DPM-Solver++(3M)"}
    assert {c.nfe for c in g.cells if c.row.family != "floor"} == {3, 5, 7, 9}
    assert all(c.row.afs for c in g.cells if c.row.family != "floor")
    for c in g.cells:                                   # one evaluation per step, AFS saves one: N = NFE + 2
        if c.row.family != "floor":
            assert c.num_points == c.nfe + 2
    assert len({c.key for c in g.cells}) == len(g.cells)
    for c in g.cells:
        if c.model.startswith("gmm"):                   # the endpoint error first; floors score FD only
            assert c.metrics == (["endpoint_error", "fd_exact"] if c.row.family != "floor" else ["fd_exact"])


def test_cell_key_ignores_batch_size_and_label_but_not_seeds(tmp_path):
    a = grids.load(write_grid(tmp_path, IPNDM)).cells[0]
    b = grids.load(write_grid(tmp_path, IPNDM.replace('"iPNDM"', '"other"'), batch_size=3)).cells[0]
    c = grids.load(write_grid(tmp_path, IPNDM, num_samples=41)).cells[0]
    assert a.key == b.key and a.key != c.key


@pytest.mark.parametrize("solvers_toml, extra, needle", [
    ('[[solvers]]\nname = "nope"\n', "", "unknown solver 'nope'; accepted: euler"),
    (IPNDM + 'schedule = "cosine"\n', "", "unknown schedule 'cosine'; accepted: polynomial"),
    (IPNDM + "colour = 1\n", "", "unknown key 'colour'"),
    (IPNDM + "options = { max_order = 9 }\n", "", "max_order must be"),
    ('[[solvers]]\nname = "heun"\nlabel = "Heun"\n', "", "heun cannot spend exactly NFE=3"),
    ('[[solvers]]\nname = "dyweight"\nreleased = true\nafs = true\n', "", "has no released coefficients"),
    ('[[solvers]]\nname = "ipndm"\ndistill = {}\n', "",
     "need a learned solver (one of dyweight, epd, gits, ld3, amed, instance_aware), got 'ipndm'"),
    (IPNDM + IPNDM, "", "label 'iPNDM' is used twice"),
])
def test_bad_solver_entries_are_rejected_naming_what_is_accepted(tmp_path, solvers_toml, extra, needle):
    with pytest.raises(ValueError, match=None) as err:
        grids.load(write_grid(tmp_path, solvers_toml, extra=extra))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_a_label_may_name_entries_for_disjoint_models(tmp_path):
    """One row name per model: e.g. DyWeight distilled with other settings on another model."""
    two = BASE.format(name="t", nfe="[3]", num_samples=8, batch_size=8, model="gmm2d") + \
        '[[models]]\nname = "gmm64"\nmetrics = ["fd_exact"]\n'
    p = tmp_path / "t.toml"
    p.write_text(two + IPNDM + 'models = ["gmm2d"]\n' + IPNDM.replace("afs = true", "afs = false")
                 + 'models = ["gmm64"]\n')
    g = grids.load(p)
    assert [(c.model, c.row.label, c.row.afs) for c in g.cells] == [("gmm2d", "iPNDM", True),
                                                                         ("gmm64", "iPNDM", False)]
    p.write_text(two + IPNDM + 'models = ["gmm2d", "gmm64"]\n' + IPNDM + 'models = ["gmm64"]\n')
    with pytest.raises(ValueError, match="label 'iPNDM' is used twice for model.s. gmm64"):
        grids.load(p)


def test_bad_models_metrics_and_files_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'; accepted: gmm2d"):
        grids.load(write_grid(tmp_path, IPNDM, model="nope"))
    p = write_grid(tmp_path, IPNDM)
    p.write_text(p.read_text().replace('"endpoint_error"', '"nope_metric"'))
    with pytest.raises(ValueError, match="unknown metric 'nope_metric'; accepted: .*fd_exact"):
        grids.load(p)
    p.write_text("name = [unclosed\n")
    with pytest.raises(ValueError, match="is not valid TOML"):
        grids.load(p)
    with pytest.raises(ValueError, match="unknown grid 'nope'; accepted: .*quick"):
        grids.load("nope")
    with pytest.raises(FileNotFoundError, match="no grid file"):
        grids.load(tmp_path / "absent.toml")
    p.write_text('name = "k"\nkind = "mystery"\n')
    with pytest.raises(ValueError, match="unknown grid kind 'mystery'; accepted: sampling, numerical_study"):
        grids.load(p)
    with pytest.raises(ValueError, match="'nfe' must be"):
        grids.load(write_grid(tmp_path, IPNDM, nfe="[0]"))


def test_unreachable_budgets_can_be_skipped(tmp_path):
    heun = '[[solvers]]\nname = "heun"\nlabel = "Heun"\nskip_unreachable = true\n'
    g = grids.load(write_grid(tmp_path, IPNDM + heun, nfe="[3, 4]"))
    assert [(c.row.label, c.nfe) for c in g.cells] == [("iPNDM", 3), ("iPNDM", 4), ("Heun", 4)]
    assert [(s[1], s[2]) for s in g.skipped] == [("Heun", 3)]


class MissingWeights(GaussianMixture):
    def requirements(self):
        return [bench.models.Requirement("tiny-weights.pt", Path("/nonexistent/tiny-weights.pt"), env="TINY_PATH")]


def missing_weights_model():
    g = gmm2d()
    m = MissingWeights("needs_weights", g.pi, g.mu, g.U @ torch.diag_embed(g.lam) @ g.U.transpose(1, 2))
    return m


def test_missing_weights_stop_the_run_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.models.REGISTRY.targets, "needs_weights", "test_harness:missing_weights_model")
    g = grids.load(write_grid(tmp_path, IPNDM, model="needs_weights"))
    with pytest.raises(FileNotFoundError, match="tiny-weights.pt at /nonexistent/tiny-weights.pt; set TINY_PATH"):
        runner.run(g, tmp_path / "res", progress=False, out=lambda s: None)
    assert results.load(tmp_path / "res").empty
    lines = []
    assert runner.dry_run(g, tmp_path / "res", out=lines.append) == 1
    assert any("MISSING" in line for line in lines)


# ---- running ----------------------------------------------------------------------------------------------------
def test_samples_do_not_depend_on_batch_size():
    g = grids.load("quick", {"num_samples": 23, "nfe": [5]})
    c = next(c for c in g.cells if c.model == "gmm64" and c.row.label == "UniPC-3")
    b = runner.Builder(g, Path("."), runner.Dist())
    solver, problem = b.solver(c), b.problem(c)

    def samples(seeds, batch):
        return torch.cat([cell.samples for cell in runner.sample_batches(c, problem, solver, seeds, batch)])
    full, small = samples(c.seeds, 23), samples(c.seeds, 4)
    shards = [samples(runner.Dist(r, 3).shard(c.seeds), 5) for r in range(3)]
    torch.testing.assert_close(small, full, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(torch.cat(shards), full, rtol=1e-13, atol=1e-13)


def test_run_stores_every_cell_with_its_columns(tmp_path):
    g = grids.load(write_grid(tmp_path, IPNDM + EULER))
    lines = []
    assert runner.run(g, tmp_path, progress=False, out=lines.append).computed == 4
    df = results.load(tmp_path)
    assert len(df) == 4 * 2 and (df["status"] == "ok").all()
    for col in ("grid", "model", "solver", "label", "family", "options", "nfe", "afs", "schedule", "metric", "value",
                "status", "error", "num_samples", "seeds", "code_version", "config_hash", "torch_version", "device",
                "wall_time", "created_at"):
        assert col in df.columns
    row = df[(df.label == "iPNDM") & (df.nfe == 5) & (df.metric == "endpoint_error")].iloc[0]
    assert row.solver == "ipndm" and row.family == "handcrafted" and bool(row.afs) and row.seeds == "0-39"
    assert row.schedule == "polynomial" and row.num_samples == 40 and 0 < row.value < 1
    table, closing = lines[-1].split("\n\n")[:-1], lines[-1].splitlines()
    assert any("iPNDM" in t and "Endpoint error" in t for t in table)              # the compact table
    assert "t: 4 cells, 4 computed in" in lines[-1] and "0 failed" in lines[-1]
    assert closing[-1].startswith("Next: python -m bench report")
    # a second run finds everything stored and computes nothing
    assert runner.run(g, tmp_path, progress=False, out=lines.append).computed == 0
    assert len(results.load(tmp_path)) == 8


def test_endpoint_error_matches_a_direct_computation(tmp_path):
    g = grids.load(write_grid(tmp_path, EULER, nfe="[4]", num_samples=12))
    runner.run(g, tmp_path, progress=False, out=lambda s: None)
    value = results.load(tmp_path).query("metric == 'endpoint_error'").value.item()
    model = gmm2d()
    sigmas = model.grid(5)
    x_T = model.noise(range(12))
    import solvers
    x = solvers.get("euler").sample(model.denoiser(), x_T, sigmas)
    ref = model.reference_solution(x_T, 80.0, 0.002)
    expect = ((x - ref).norm(dim=1) / ref.norm(dim=1)).mean().item()
    assert value == pytest.approx(expect, rel=1e-9)
    assert list((tmp_path / "cache" / "reference").glob("gmm2d-*.pt"))            # cached for later cells


class NanAbove(GaussianMixture):
    """A denoiser that returns NaN at sigma_max for the samples whose first coordinate is large."""

    def denoiser(self, cond=None):
        def den(x, sigma):
            out = self.denoise(x, sigma)
            return torch.where((x[:, :1] > 40) & (sigma[:, None] > 79), torch.nan, out)
        return den


def nan_model():
    g = gmm2d()
    return NanAbove("nan_gmm", g.pi, g.mu, g.U @ torch.diag_embed(g.lam) @ g.U.transpose(1, 2))


def test_a_cell_with_nonfinite_samples_is_stored_as_failed_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.models.REGISTRY.targets, "nan_gmm", "test_harness:nan_model")
    no_afs = IPNDM.replace("afs = true", "afs = false")
    g = grids.load(write_grid(tmp_path, no_afs + EULER.replace("Euler", "Euler AFS") + "afs = true\n",
                              model="nan_gmm", nfe="[4]", num_samples=200))
    runner.run(g, tmp_path, progress=False, out=lambda s: None)
    df = results.load(tmp_path)
    bad = df[df.label == "iPNDM"]
    assert (bad.status == "failed").all() and bad.value.isna().all()
    assert bad.error.str.contains("non-finite").all()
    ok = df[df.label == "Euler AFS"]                       # AFS skips the call at sigma_max: no NaN
    assert (ok.status == "ok").all() and ok.value.notna().all()


# ---- learned solvers ---------------------------------------------------------------------------------------------
@pytest.fixture
def fake_distill(monkeypatch):
    """bench.distill replaced by a recorder that returns an Adams-Bashforth-initialised DyWeight."""
    calls = []

    def distill(kind, model, sigmas, afs=True, seed=0, cache_dir=None, **options):
        calls.append({"kind": kind, "model": model.name, "n": len(sigmas), "afs": afs, "seed": seed,
                      "cache_dir": cache_dir, "options": options})
        s = DyWeight.from_options(num_points=len(sigmas), afs=afs)
        with torch.no_grad():
            s.time_scale.fill_(0.99)
        s.metadata["training"] = {"step": [0], "loss": [1.0]}
        return s

    import bench.distill
    monkeypatch.setattr(bench.distill, "distill", distill)
    return calls


DYW = '[[solvers]]\nname = "dyweight"\nlabel = "DyWeight"\nafs = true\ndistill = { seed = 3, steps = 7 }\n'


def test_distilled_solvers_are_saved_and_reused(tmp_path, fake_distill):
    g = grids.load(write_grid(tmp_path, DYW, name="dg"))
    runner.run(g, tmp_path, progress=False, out=lambda s: None)
    assert [(c["model"], c["n"], c["seed"], c["options"]) for c in fake_distill] == \
        [("gmm2d", 5, 3, {"steps": 7}), ("gmm2d", 7, 3, {"steps": 7})]
    assert fake_distill[0]["cache_dir"] == tmp_path / "cache" / "distill"
    path = tmp_path / "solvers" / "dg" / "gmm2d" / "DyWeight-nfe3.json"
    saved = json.loads(path.read_text())
    assert saved["metadata"]["training"]["loss"] == [1.0] and saved["time_scale"] == [0.99] * 3
    df = results.load(tmp_path)
    assert (df.family == "learned").all() and (df.distilled_on == "gmm2d").all()
    # new samples count -> new cells, but the distilled solvers are reused from disk
    runner.run(grids.load(write_grid(tmp_path, DYW, name="dg", num_samples=30)), tmp_path, progress=False,
               out=lambda s: None)
    assert len(fake_distill) == 2 and len(results.load(tmp_path)) == 8
    # changed distillation settings -> distilled again
    runner.run(grids.load(write_grid(tmp_path, DYW.replace("steps = 7", "steps = 8"), name="dg")), tmp_path,
               progress=False, out=lambda s: None)
    assert len(fake_distill) == 4


def test_transfer_distils_on_the_source_model_only_once(tmp_path, fake_distill):
    toml = write_grid(tmp_path, DYW.replace('"DyWeight"', '"DyWeight (gmm64)"') + 'distill_from = "gmm64"\n',
                      name="tr", nfe="[3]")
    toml.write_text(toml.read_text().replace('[[solvers]]', '[[models]]\nname = "gmm64"\n'
                                             'metrics = ["fd_exact"]\n\n[[solvers]]', 1))
    g = grids.load(toml)
    runner.run(g, tmp_path, progress=False, out=lambda s: None)
    assert [c["model"] for c in fake_distill] == ["gmm64"]
    df = results.load(tmp_path)
    assert set(df.model) == {"gmm2d", "gmm64"} and set(df.distilled_on) == {"gmm64"}
    assert (tmp_path / "solvers" / "tr" / "gmm64" / "DyWeight_(gmm64)-nfe3.json").exists()


def test_transfer_quick_grid_pairs_every_embedded_model():
    g = grids.load("transfer_quick")
    learned = [c for c in g.cells if getattr(c.row, "distill_from", None)]
    sources = {c.row.distill_from for c in learned}
    targets = {c.model for c in g.cells}
    assert {"gmm2d", "gmm64"} <= sources and sources == targets
    assert {(c.row.distill_from, c.model) for c in learned} == {(s, t) for s in sources for t in targets}


def released_gmm():
    m = gmm2d()
    m.released_key = "cifar10"
    return m


def test_released_coefficients_use_the_checkpoint_grid(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.models.REGISTRY.targets, "gmm_rel", "test_harness:released_gmm")
    rel = '[[solvers]]\nname = "dyweight"\nlabel = "DyWeight (released)"\nafs = true\nreleased = true\n'
    g = grids.load(write_grid(tmp_path, rel, model="gmm_rel", nfe="[3, 5]", num_samples=8))
    assert [c.num_points for c in g.cells] == [5, 7]
    runner.run(g, tmp_path, progress=False, out=lambda s: None)
    df = results.load(tmp_path)
    assert (df.status == "ok").all() and (df.distilled_on == "released:cifar10").all()
    with pytest.raises(ValueError, match="trained with afs=true"):
        grids.load(write_grid(tmp_path, rel.replace("afs = true", "afs = false"), model="gmm_rel"))
    with pytest.raises(ValueError, match="released NFEs"):
        grids.load(write_grid(tmp_path, rel, model="gmm_rel", nfe="[30]"))


# ---- world sizes --------------------------------------------------------------------------------------------------
FAKE_DISTILL_CLI = """
import os, sys, types
from pathlib import Path
from solvers.dyweight import DyWeight

def distill(kind, model, sigmas, afs=True, seed=0, cache_dir=None, **options):
    with open(os.environ["DISTILL_LOG"], "a") as f:
        f.write(f"{os.environ.get('RANK', '0')} {model.name} {len(sigmas)}\\n")
    return DyWeight.from_options(num_points=len(sigmas), afs=afs)

import bench.distill
bench.distill.distill = distill
from bench.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_two_gloo_processes_give_the_results_of_one(tmp_path):
    toml = write_grid(tmp_path, IPNDM + EULER + DYW, name="ws", nfe="[3]", num_samples=90, batch_size=16,
                      model="gmm64")
    (tmp_path / "fakecli.py").write_text(FAKE_DISTILL_CLI)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DISTILL_LOG": str(tmp_path / "log")}
    args = ["run", "--grid", str(toml), "--no-progress", "--results-dir"]
    one = subprocess.run([sys.executable, str(tmp_path / "fakecli.py"), *args, str(tmp_path / "one")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(tmp_path / "fakecli.py"), *args, str(tmp_path / "two")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    # one process distils alone; two distil together (data-parallel: each its share of every batch)
    assert sorted((tmp_path / "log").read_text().splitlines()) == ["0 gmm64 5", "0 gmm64 5", "1 gmm64 5"]
    a, b = results.load(tmp_path / "one"), results.load(tmp_path / "two")
    assert len(a) == len(b) == 6
    assert (b.world_size == 2).all() and (a.world_size == 1).all()
    key = ["label", "nfe", "metric"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert (a.cell_key == b.cell_key).all()
    for x, y in zip(a.value, b.value):
        assert math.isclose(x, y, rel_tol=1e-10)   # FD is full-rank here (90 samples > 64 dims)


SLOW_OR_FAILING_CLI = """
import os, sys, time, types
from solvers.errors import InputError
from solvers.dyweight import DyWeight
import bench.models
from bench.models.gmm import GaussianMixture, gmm2d

def distill(kind, model, sigmas, afs=True, seed=0, cache_dir=None, **options):
    if os.environ.get("DISTILL") == "fail":
        raise InputError("the teacher file is corrupt")
    time.sleep(float(os.environ.get("DISTILL_SECONDS", "0")))
    return DyWeight.from_options(num_points=len(sigmas), afs=afs)

class BrokenOnRank1(GaussianMixture):
    def denoiser(self, cond=None):
        if os.environ.get("RANK") == "1":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().denoiser(cond)

def broken():
    g = gmm2d()
    return BrokenOnRank1("broken", g.pi, g.mu, g.U @ g.lam.diag_embed() @ g.U.transpose(1, 2))

import bench.distill
bench.distill.distill = distill
bench.models.register("broken", "__main__:broken")
from bench.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _torchrun(tmp_path, toml, env_extra, timeout=120):
    (tmp_path / "cli.py").write_text(SLOW_OR_FAILING_CLI)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "cli.py"), "run", "--grid", str(toml), "--no-progress", "--results-dir",
                           str(tmp_path / "res")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_no_rank_times_out_while_rank_0_distils(tmp_path):
    """The process group's timeout is 3 s; rank 0 distils for 8 s while rank 1 waits, and the run completes."""
    toml = write_grid(tmp_path, DYW, name="slow", nfe="[3]", num_samples=12, batch_size=4)
    run = _torchrun(tmp_path, toml, {"BENCH_COLLECTIVE_TIMEOUT": "3", "DISTILL_SECONDS": "8"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(results.load(tmp_path / "res")) == 2


def test_a_failed_distillation_ends_every_rank_with_its_message(tmp_path):
    toml = write_grid(tmp_path, DYW, name="fail", nfe="[3]", num_samples=12, batch_size=4)
    run = _torchrun(tmp_path, toml, {"DISTILL": "fail"})
    assert run.returncode != 0
    assert run.stderr.count("rank 0: distilling DyWeight for gmm2d at NFE 3 failed: the teacher file is corrupt") >= 2


def test_a_failure_on_rank_1_ends_rank_0_with_rank_1s_message(tmp_path):
    toml = write_grid(tmp_path, EULER, name="broken", nfe="[3]", num_samples=12, batch_size=4, model="broken")
    toml.write_text(toml.read_text().replace('metrics = ["fd_exact", "endpoint_error"]', 'metrics = ["fd_exact"]'))
    run = _torchrun(tmp_path, toml, {})
    assert run.returncode != 0
    assert "error: rank 1: RuntimeError: CUDA error: an illegal memory access was encountered" in run.stderr
    assert "Traceback" in run.stderr                          # rank 1 itself keeps its traceback
    assert results.load(tmp_path / "res").empty


def test_other_grid_kinds_are_handed_to_their_study(tmp_path, monkeypatch):
    import bench.studies.numerical_study as study
    seen = []
    monkeypatch.setattr(study, "run", lambda grid, results_dir: seen.append((grid, results_dir)))
    p = tmp_path / "s.toml"
    p.write_text('name = "s"\nkind = "numerical_study"\n[study]\nproblems = 2\n')
    g = grids.load(p)
    assert runner.run(g, tmp_path, progress=False).computed == 0
    assert seen == [({"name": "s", "kind": "numerical_study", "study": {"problems": 2}}, tmp_path)]
