"""FLUX.1-dev as an EDM denoiser, on a tiny random-weight FluxTransformer2DModel (CPU, offline)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import solvers  # noqa: E402
from bench import standins  # noqa: E402
from bench.models import flux  # noqa: E402

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from test_models_real_latent import prompts_file  # noqa: E402

SCHED = standins.FLUX_SCHEDULER


def tiny_flux_components(seed=0):
    return standins.flux_components(seed, "tiny")


def make(tmp_path, **kw):
    return flux.FluxModel(components=tiny_flux_components(), prompts="coco", prompts_path=prompts_file(tmp_path),
                          resolution=16, max_sequence_length=16, **kw)


def test_flow_to_edm_conversion_against_an_independent_computation(tmp_path):
    m = make(tmp_path)
    seeds = [0, 1]
    cond = m.conditions(seeds)
    D = m.denoiser(cond)
    x0, n = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    for t in (0.05, 0.5, 0.9):
        x_flow = (1 - t) * x0 + t * n
        sigma = t / (1 - t)
        x_edm = x_flow / (1 - t)
        torch.testing.assert_close(x_edm, x0 + sigma * n, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            v = m.velocity(x_flow, torch.full((2,), t), cond)
            torch.testing.assert_close(D(x_edm, torch.full((2,), sigma)), x_flow - t * v, rtol=1e-5, atol=1e-5)


def test_grid_is_fluxs_shifted_grid_ending_at_zero(tmp_path):
    m = make(tmp_path)
    s = math.exp(0.5 + (1.15 - 0.5) / (4096 - 256) * (16 - 256))
    assert m.shift == pytest.approx(s)
    g = m.grid(4).numpy()
    t = np.linspace(1, 0, 4)
    ts = s * t / (1 + (s - 1) * t)
    with np.errstate(divide="ignore"):
        expect = np.minimum(ts / (1 - ts), 1000.0)
    np.testing.assert_allclose(g, expect, rtol=1e-12)
    assert g[-1] == 0 and g[0] == 1000.0
    assert flux.dynamic_shift(1024) == pytest.approx(math.exp(0.63))        # 512x512 FLUX.1-dev: s ~ 1.878


def test_euler_equals_diffusers_flux_pipeline(tmp_path):
    """The 'euler' solver on the adapter reproduces FluxPipeline's own sampler (same start t = 1000/1001)."""
    comps = tiny_flux_components()
    m = flux.FluxModel(components=comps, prompts="coco", prompts_path=prompts_file(tmp_path), resolution=16,
                       max_sequence_length=16)
    seeds = [3, 4]
    cond = m.conditions(seeds)
    steps = 3
    x_T = m.noise(seeds)
    with torch.no_grad():
        ours = solvers.get("euler").sample(m.denoiser(cond), x_T, m.grid(steps + 1))
    a = m.sigma_max / (1 + m.sigma_max)
    s = m.shift
    unshifted = np.linspace(1.0, 1 / steps, steps)
    unshifted[0] = a / (s - (s - 1) * a)                                   # the pipeline shifts it back to t = a
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, **SCHED)
    pipe = diffusers.FluxPipeline(scheduler=sched, vae=comps["vae"], text_encoder=None, tokenizer=None,
                                  text_encoder_2=None, tokenizer_2=None, transformer=comps["transformer"])
    out = pipe(prompt_embeds=cond["txt"], pooled_prompt_embeds=cond["pooled"], latents=flux.pack(x_T * (1 - a)),
               sigmas=list(unshifted), num_inference_steps=steps, guidance_scale=3.5, height=16, width=16,
               output_type="latent").images
    torch.testing.assert_close(ours, flux.unpack(out, m.shape), rtol=1e-4, atol=1e-4)


def test_solvers_run_and_decode(tmp_path):
    m = make(tmp_path)
    cond = m.conditions([7, 8])
    counting = solvers.CountingDenoiser(m.denoiser(cond))
    with torch.no_grad():
        for name in ("ipndm", "dpm_solver_pp"):
            out = solvers.get(name, **({"order": 2} if name == "dpm_solver_pp" else {})).sample(
                counting, m.noise([7, 8]), m.grid(6))
            assert torch.isfinite(out).all()
        img = m.decode(out)
    assert counting.calls == 10 and img.shape == (2, 3, 16, 16) and img.abs().max() <= 1


def test_missing_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("FEWSTEP_WEIGHTS", str(tmp_path / "root"))
    m = flux.flux_drawbench()
    assert m.shape == (16, 64, 64)
    with pytest.raises(FileNotFoundError, match=r"FLUX\.1-dev.*FEWSTEP_FLUX_DEV.*drawbench_dyweight\.txt.*"
                                                    r"FEWSTEP_DRAWBENCH_DYWEIGHT"):
        m.check_available()
