"""The harness's device paths on a model whose tensors live on another device than the CPU defaults.

bench.fakedevice emulates a second device on the CPU and refuses the device mixes CUDA refuses, so these tests
fail on exactly the bugs a GPU user would hit (a sigma tensor made on the CPU times the model's noise, ...).
"""
from __future__ import annotations

import json

import pytest
import torch

import solvers
from bench import fakedevice
from bench import grid as grids
from bench import run as runner
from bench import store as results
from bench.distill import distill
from bench.models.gmm import gmm2d


def test_the_emulated_device_refuses_what_cuda_refuses():
    with fakedevice.active() as dev:
        x = torch.randn(3, 4).to(dev)
        assert (x + torch.zeros(3, 4, device=dev)).device == dev and (x * torch.tensor(2.0)).device == dev
        assert x[torch.tensor([0, 2])].shape == (2, 4) and x.cpu().device.type == "cpu"
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(3, 4)
        with pytest.raises(RuntimeError, match="same device"):
            torch.stack([x.sum(), torch.tensor(1.0)])             # a CPU scalar is no scalar outside pointwise ops
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        lin = torch.nn.Linear(4, 2).to(dev)
        x.requires_grad_(True)
        lin(x).square().mean().backward()                          # autograd works through the emulation
        assert x.grad.device == dev and lin.weight.grad.device == dev


def test_every_solver_samples_on_the_device():
    with fakedevice.active() as dev:
        m = gmm2d(device=dev)
        den = m.denoiser()
        for name in solvers.names():
            cls = solvers.solver_class(name)
            s = cls.untrained(6, afs=True) if cls.learned else solvers.get(name)
            x = s.sample(den, m.noise(range(4)), m.grid(6), afs=True)
            assert x.device == dev and torch.isfinite(x.cpu()).all(), name


@pytest.mark.parametrize("kind", solvers.learned_names())
def test_distillation_runs_with_the_model_on_the_device(tmp_path, kind):
    with fakedevice.active() as dev:
        m = gmm2d(device=dev)
        cls = solvers.solver_class(kind)
        n = cls.budget_probe().num_points(5, afs=True)
        s = distill(kind, m, m.grid(n), afs=True, seed=0, cache_dir=tmp_path, steps=3, num_samples=32,
                    eval_samples=8, teacher_batch_size=16)
        x = s.sample(m.denoiser(), m.noise(range(4)), m.grid(n), afs=True)
        assert x.device == dev and s.metadata["training"]["teacher_cache_hit"] is False


GRID = """
name = "dev"
nfe = [3]
num_samples = 24
batch_size = 10
[[models]]
name = "gmm2d"
options = { device = "meta" }
metrics = ["fd_exact", "endpoint_error"]
[[solvers]]
name = "ipndm"
label = "iPNDM"
afs = true
[[solvers]]
name = "dyweight"
label = "DyWeight"
afs = true
distill = { steps = 3, num_samples = 32, eval_samples = 8, teacher_steps = 6 }
"""


def test_a_grid_with_distillation_runs_end_to_end_on_the_device(tmp_path):
    (tmp_path / "dev.toml").write_text(GRID)
    with fakedevice.active():
        g = grids.load(tmp_path / "dev.toml")
        runner.run(g, tmp_path / "res", progress=False, out=lambda s: None)
    df = results.load(tmp_path / "res")
    assert len(df) == 4 and (df.status == "ok").all(), df[["label", "metric", "error"]]
    cpu = tmp_path / "cpu.toml"
    cpu.write_text(GRID.replace('options = { device = "meta" }\n', ""))
    runner.run(grids.load(cpu), tmp_path / "res_cpu", progress=False, out=lambda s: None)
    a = df.sort_values(["label", "metric"]).value.tolist()
    b = results.load(tmp_path / "res_cpu").sort_values(["label", "metric"]).value.tolist()
    assert a == pytest.approx(b, rel=1e-9)                         # the device changes nothing but where it runs


def test_the_real_architecture_stand_ins_sample_and_distil_on_the_device(tmp_path, monkeypatch):
    """EDM (a snapshot in EDM's pickle format of the project's networks), Stable Diffusion (diffusers UNet, CFG)
    and FLUX (diffusers transformer, flow time, the reference's distillation recipe), every network on the
    emulated device."""
    pytest.importorskip("diffusers")
    from test_models_real_edm import tiny_net, write_snapshot
    from test_models_real_flux import tiny_flux_components
    from test_models_real_latent import prompts_file, tiny_sd_components

    from bench.models import edm, flux, latent
    path = write_snapshot(tmp_path / "edm.pkl", *tiny_net(label_dim=10))
    monkeypatch.setenv("FEWSTEP_EDM_IMAGENET64", str(path))
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a dog"}\n{"prompt": "a red cat"}\n')
    with fakedevice.active() as dev:
        e = edm.EDMModel("tiny", "edm-imagenet64", (3, 8, 8), label_dim=10, device=dev)
        x = solvers.get("ipndm").sample(e.denoiser(e.conditions([0, 1])), e.noise([0, 1]), e.grid(4), afs=True)
        assert x.device == dev and e.decode(x).device == dev
        distill("dyweight", e, e.grid(4), afs=True, seed=0, cache_dir=False, teacher_steps=4, num_samples=2,
                eval_samples=2, batch_size=2, steps=2)
        sd = latent.StableDiffusion(components=tiny_sd_components(), prompts_path=prompts_file(tmp_path), device=dev)
        x = solvers.get("dpm_solver_pp").sample(sd.denoiser(sd.conditions([0, 1])), sd.noise([0, 1]), sd.grid(3))
        assert x.device == dev and sd.decode(x).device == dev
        distill("dyweight", sd, sd.grid(3), afs=False, seed=0, cache_dir=False, teacher_steps=4, history=2,
                num_samples=2, eval_samples=2, batch_size=2, steps=2)
        f = flux.FluxModel(components=tiny_flux_components(), prompts="coco", prompts_path=prompts_file(tmp_path),
                           resolution=16, max_sequence_length=16, train_prompts_path=train, device=dev)
        view = f.view("flow")
        s = distill("dyweight", view, view.grid(4), afs=False, seed=0, cache_dir=False, teacher="euler",
                    teacher_steps=4, teacher_denoise=False, history=2, init="euler", divisor="scaled",
                    time_scale_bounds=[0.5, 1.5], optimizer="adamw", weight_decay=5e-2, num_samples=2,
                    eval_samples=2, batch_size=1, accumulate=2, steps=2, checkpoint=True)
        x = s.sample(view.denoiser(f.conditions([0, 1])), view.noise([0, 1]), view.grid(4), afs=False)
        assert x.device == dev and f.decode(x).device == dev


def test_gpu_check_runs_the_miniature_paper_grid_and_says_what_it_skipped(tmp_path, capsys):
    """`bench gpu-check` on the CPU: every stand-in's cells (distillation and released rows included) are stored
    as ok, each model's line has its timings, and what only a GPU can show is listed as not checked."""
    pytest.importorskip("diffusers")
    from bench import cli
    assert cli.main(["gpu-check", "--no-torchrun", "--num-samples", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for paper_model in ("cifar10 / ffhq / afhqv2", "imagenet64", "lsun_bedroom", "sd15", "flux"):
        assert any(line.startswith(paper_model) and "CRASHED" not in line for line in out.splitlines()), out
    assert "not checked here: CUDA device placement" in out and "NCCL" in out and "torchrun (--no-torchrun)" in out
    df = results.load(tmp_path / "single")
    assert (df.status == "ok").all() and set(df.metric) == {"fid"}
    assert {"DyWeight", "DyWeight (released)", "iPNDM", "AMED-Solver"} <= set(df.label)
    assert len(df) == 8 + 3 + 3 + 3 + 4 + 5                      # AMED-Solver: EDM at NFE 3 and 5, cond, LSUN, SD
    assert cli.main(["gpu-check", "--models", "standin_sdxl"]) == 2


def test_gpu_check_without_diffusers_leaves_out_the_latent_stand_ins_and_says_so(tmp_path, capsys, monkeypatch):
    """The base install has no diffusers: the default check runs the EDM stand-ins and lists the others as not
    checked; naming a latent stand-in is a one-line error (exit 2), not a traceback."""
    from bench import cli
    from bench.commands import gpu_check
    real = gpu_check._has_module
    monkeypatch.setattr(gpu_check, "_has_module", lambda name: False if name == "diffusers" else real(name))
    assert cli.main(["gpu-check", "--models", "standin_lsun", "--no-torchrun"]) == 2
    assert "standin_lsun needs diffusers: pip install -e '.[models]'" in capsys.readouterr().err
    assert cli.main(["gpu-check", "--no-torchrun", "--num-samples", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "standin_lsun (diffusers not installed" in out and "standin_flux (diffusers not installed" in out
    assert set(results.load(tmp_path / "single").model) == {"standin_edm", "standin_edm_cond"}


def test_gpu_check_torchrun_pass_distils_and_agrees(tmp_path, capsys):
    """With torchrun (gloo, 2 processes on the CPU) the grid runs again, distilling data-parallel (nothing copied
    from the single pass); the same batches give equal fixed-solver values."""
    from bench import cli
    assert cli.main(["gpu-check", "--models", "standin_edm", "--num-samples", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "torchrun (gloo, 2 processes, every distillation data-parallel" in out and "torchrun agrees" in out
    single, parallel = results.load(tmp_path / "single"), results.load(tmp_path / "torchrun")
    assert set(parallel.world_size) == {2} and (parallel.status == "ok").all() and len(parallel) == len(single)
    trained = list((tmp_path / "torchrun" / "solvers").rglob("*.json"))
    assert trained and all(json.loads(p.read_text())["metadata"]["harness"]["ranks"] == 2 for p in trained)


def test_gpu_check_comparison_fails_on_a_real_difference():
    import pandas as pd

    from bench.commands.gpu_check import TOLERANCE, compare_runs
    rows = [("m", "iPNDM", 3, "fid", "handcrafted", 10.0), ("m", "DyWeight", 3, "fid", "distilled", 5.0)]
    single = pd.DataFrame(rows, columns=["model", "label", "nfe", "metric", "kind", "value"]).assign(status="ok")

    def with_values(fixed, distilled):
        return single.assign(value=[fixed, distilled])
    found, problems = compare_runs(single, with_values(10.0 * (1 + 1e-7), 5.0 * (1 + 1e-3)), cuda=False)
    assert problems == [] and found["fixed"][1] == 1 and found["distilled"][0] == pytest.approx(1e-3)
    _, problems = compare_runs(single, with_values(10.5, 5.0), cuda=False)
    assert len(problems) == 1 and "fixed values differ" in problems[0] and "m / iPNDM / 3 / fid" in problems[0]
    _, problems = compare_runs(single, with_values(10.0, 5.0 * (1 + 3 * TOLERANCE["distilled", False])), cuda=False)
    assert len(problems) == 1 and "distilled values differ" in problems[0]
    _, problems = compare_runs(single, single.iloc[:1], cuda=False)
    assert problems and "torchrun stored 0 distilled values, the single process 1" in problems[0]


def test_full_width_check_plans_and_measures(monkeypatch, capsys):
    """The full-size check's path on the CPU: the tiny stand-ins in place of the full-size ones and CUDA's memory
    counters faked; each distillation is planned (a budget is given) and its plan and peak printed."""
    from bench import standins
    from bench.commands import gpu_check
    from bench.distill import memory
    monkeypatch.setattr(standins, "small_edm", lambda device=None: standins.edm("tiny", device=device),
                        raising=False)
    monkeypatch.setattr(standins, "small_sd", lambda device=None: standins.sd("tiny", device=device), raising=False)
    monkeypatch.setattr(gpu_check, "FULL_WIDTH", (("cifar10", "small_edm"), ("sd15", "small_sd")))
    monkeypatch.setattr(memory, "budget_of", lambda device: 8 * memory.GiB)
    peaks = iter([memory.MiB, 100 * memory.GiB])                 # each model's peak above its loaded weights
    for name, value in (("empty_cache", lambda: None), ("reset_peak_memory_stats", lambda: None),
                        ("memory_allocated", lambda: 0), ("max_memory_allocated", lambda: next(peaks))):
        monkeypatch.setattr(torch.cuda, name, value)
    problems = gpu_check.full_width("cpu", steps=1)
    out = capsys.readouterr().out
    assert "cifar10 (small_edm), NFE 9, batch 16: batch 16 = 1 rank(s)" in out and "measured peak 0.0 GiB" in out
    assert "sd15 (small_sd), NFE 20, batch 2" in out
    assert len(problems) == 1 and problems[0].startswith("sd15 (small_sd)") and "exceeds the plan's" in problems[0]
