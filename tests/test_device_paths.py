"""The harness's device paths on a model whose tensors live on another device than the CPU defaults.

bench.fakedevice emulates a second device on the CPU and refuses the device mixes CUDA refuses, so these tests
fail on exactly the bugs a GPU user would hit (a sigma tensor made on the CPU times the model's noise, ...).
"""
from __future__ import annotations

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
