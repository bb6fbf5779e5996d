"""Latent models through diffusers, on tiny random-weight stand-ins built from configs (CPU, offline)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import solvers  # noqa: E402
from bench import standins  # noqa: E402
from bench.models import latent  # noqa: E402

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def tiny_tokenizer(max_len=77):
    return standins.tokenizer(max_len)


def tiny_sd_components(seed=0):
    return standins.sd_components(seed, "tiny")


def tiny_ldm_components(seed=0):
    return standins.ldm_components(seed, "tiny")


def prompts_file(tmp_path):
    f = tmp_path / "captions.json"
    f.write_text(json.dumps({"annotations": [{"caption": c} for c in
                                             ["a photo of a cat", "a red dog", "an astronaut", "a bedroom"]]}))
    return f


def test_sigma_ranges_match_the_conventions():
    m = latent.LSUNBedroomLDM(components=tiny_ldm_components())
    assert m.sigma_min == pytest.approx(0.03876, abs=1e-5) and m.sigma_max == pytest.approx(83.822, abs=1e-3)
    m = latent.StableDiffusion(components=tiny_sd_components())
    assert m.sigma_min == pytest.approx(0.029168, abs=1e-6) and m.sigma_max == pytest.approx(14.6146, abs=1e-4)
    g = m.grid(6)
    tau = np.linspace(1, 1e-3, 6)
    assert float(g[0]) == pytest.approx(m.sigma_max) and float(g[-1]) == pytest.approx(m.sigma_min)
    # independent: the grid is sigma at fractional step tau*T - 1 with log-sigma interpolated (numpy interp)
    ac = np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2)
    log_s = np.log(np.sqrt((1 - ac) / ac))
    np.testing.assert_allclose(g.numpy(), np.exp(np.interp(tau * 1000 - 1, np.arange(1000), log_s)), rtol=1e-12)


def test_eps_to_D_matches_the_ddpm_x0_prediction():
    """At an integer step t, x_edm = z_t / sqrt(abar_t) and D must be the DDPM x0-prediction."""
    comps = tiny_ldm_components()
    m = latent.LSUNBedroomLDM(components=comps)
    ac = latent.alphas_cumprod(latent.LSUN_BETAS)
    D = m.denoiser()
    z = torch.randn(2, 3, 8, 8)
    for t in (0, 321, 999):
        a = ac[t]
        sigma = float(((1 - a) / a).sqrt())
        x_edm = z / a.sqrt().float()
        with torch.no_grad():
            eps = comps["unet"](z, torch.tensor([float(t)] * 2)).sample
            x0 = (z - (1 - a).sqrt().float() * eps) / a.sqrt().float()
            got = D(x_edm, torch.full((2,), sigma))
        torch.testing.assert_close(got, x0, rtol=1e-4, atol=1e-4)


def test_fractional_step_interpolates_log_sigma():
    m = latent.StableDiffusion(components=tiny_sd_components())
    sig = torch.tensor([0.05, 1.0, 3.3, 14.0], dtype=torch.float64)
    ac = np.cumprod(1 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2)
    expect = np.interp(np.log(sig.numpy()), np.log(np.sqrt((1 - ac) / ac)), np.arange(1000))
    np.testing.assert_allclose(m.t_of_sigma(sig).numpy(), expect, rtol=1e-10)


def test_sd_guidance_prompts_and_solver_steps(tmp_path):
    comps = tiny_sd_components()
    m = latent.StableDiffusion(components=comps, prompts_path=prompts_file(tmp_path))
    assert m.evals_per_call == 2 and m.shape == (4, 8, 8) and m.released_key == "ms_coco"
    seeds = [0, 1, 2]
    cond = m.conditions(seeds)
    assert cond["prompts"] == m.conditions([0, 1, 2])["prompts"]
    assert cond["prompts"][1:] == m.conditions([1, 2])["prompts"]         # a prompt depends on its seed only
    assert cond["cond"].shape == (3, 77, 32) and cond["uncond"].shape == (1, 77, 32)
    D = m.denoiser(cond)
    x = torch.randn(3, 4, 8, 8) * 3
    s = torch.full((3,), 3.0)
    with torch.no_grad():     # independent CFG: two separate network calls
        t = m.t_of_sigma(s.double()).float()
        xin = x / (1 + 9.0) ** 0.5
        e_u = comps["unet"](xin, t, encoder_hidden_states=cond["uncond"].expand(3, -1, -1)).sample
        e_c = comps["unet"](xin, t, encoder_hidden_states=cond["cond"]).sample
        expect = x - 3.0 * (e_u + 7.5 * (e_c - e_u))
        torch.testing.assert_close(D(x, s), expect, rtol=1e-4, atol=1e-4)
    nfe = 8
    counting = solvers.CountingDenoiser(D)
    solver = solvers.get("ipndm")
    grid = m.grid(solver.num_points(nfe, afs=False, evals_per_call=m.evals_per_call))
    with torch.no_grad():
        out = solver.sample(counting, m.noise(seeds), grid)
    assert torch.isfinite(out).all() and m.evals_per_call * counting.calls == nfe
    img = m.decode(out)
    assert img.shape == (3, 3, 16, 16) and img.abs().max() <= 1


def test_sd_loads_from_a_diffusers_folder_and_names_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("FEWSTEP_WEIGHTS", str(tmp_path / "root"))
    missing = latent.StableDiffusion()
    with pytest.raises(FileNotFoundError, match=r"stable-diffusion-v1-5.*FEWSTEP_SD15.*"
                                                    r"MS-COCO_val2014_30k_captions\.csv.*FEWSTEP_COCO_30K_CAPTIONS"):
        missing.check_available()
    comps = tiny_sd_components()
    folder = tmp_path / "sd"
    for sub in ("unet", "vae", "text_encoder", "tokenizer"):
        comps[sub].save_pretrained(folder / sub)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(latent.SD_BETAS))
    monkeypatch.setenv("FEWSTEP_SD15", str(folder))
    m = latent.StableDiffusion(prompts_path=prompts_file(tmp_path))
    m.check_available()
    cond = m.conditions([5, 6])
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        ref = latent.StableDiffusion(components=comps, prompts_path=prompts_file(tmp_path))
        torch.testing.assert_close(m.denoiser(cond)(x, torch.tensor([1.0, 2.0])),
                                   ref.denoiser(ref.conditions([5, 6]))(x, torch.tensor([1.0, 2.0])))


def test_lsun_runs_solver_steps_with_afs_and_decodes():
    m = latent.LSUNBedroomLDM(components=tiny_ldm_components())
    assert m.schedule == "discrete" and m.released_key == "lsun_bedroom_ldm" and m.evals_per_call == 1
    x_T = m.noise([0, 1])
    with torch.no_grad():
        for name in ("ipndm", "unipc"):
            out = solvers.get(name).sample(m.denoiser(), x_T, m.grid(5), afs=True)
            assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
        img = m.decode(out)
    assert img.shape == (2, 3, 16, 16) and img.abs().max() <= 1


def test_prompt_conditions_are_lazy_and_read_every_prompt_format(tmp_path):
    from bench.models import conditions
    m = latent.StableDiffusion(components=tiny_sd_components(), prompts_path=prompts_file(tmp_path))
    c = m.conditions(range(50))
    assert len(c.prompts) == 50 and c["prompts"] == c.prompts and c._encoded is None   # nothing encoded yet
    assert set(c.prompts) <= {"a photo of a cat", "a red dog", "an astronaut", "a bedroom"}
    (tmp_path / "db.csv").write_text("Prompts,Category\nA red cube.,Colors\n\"Two, cats\",Counting\n")
    (tmp_path / "p.txt").write_text("one\n\n two  words \n")
    assert conditions.load_prompts(tmp_path / "db.csv") == ["A red cube.", "Two, cats"]
    assert conditions.load_prompts(tmp_path / "p.txt") == ["one", "two words"]
    assert conditions.prompts_for_seeds(["a", "b", "c"], [4, 5, 9], "cycle") == ["b", "c", "a"]
    coco = {"annotations": [{"id": 3, "image_id": 1, "caption": "b second"}, {"id": 1, "image_id": 1, "caption": "a"},
                            {"id": 2, "image_id": 2, "caption": " c  "}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert conditions.load_prompts(tmp_path / "coco.json") == ["a", "c"]          # one caption per image
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        conditions.load_prompts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="accepted: index, random, cycle"):
        conditions.prompts_for_seeds(["a"], [0], "shuffle")


def test_random_prompts_are_distinct_across_the_first_seeds():
    from bench.models import conditions
    prompts = [f"caption {i}" for i in range(1000)]
    got = conditions.prompts_for_seeds(prompts, range(1000))
    assert len(set(got)) == 1000 and got != prompts                      # a shuffle, no repeats
    assert conditions.prompts_for_seeds(prompts, [7, 3]) == [got[7], got[3]]
