"""The flow-time form of the solvers (solvers/flow.py) and FLUX's rows as the reference runs them.

- iPNDM in flow time is Adams-Bashforth on velocities v = dy/dt (an independent loop here), and differs from the
  same rows applied in sigma, while Euler is the same method in both variables;
- the released FLUX DyWeight coefficients follow dyweight_flux/'s update (an independent loop written from the
  conventions recorded beside the coefficients);
- Heun on a grid ending at t = 0 is planned and counted at its labelled NFE;
- DyWeight distils on a prompt-conditioned FLUX stand-in in flow time, on the grid that ends at 0 (and on a
  prompt-conditioned Stable Diffusion stand-in with guidance);
- an image distance on a latent model compares decoded images.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import baselines  # noqa: E402
import solvers  # noqa: E402
from bench import plan  # noqa: E402
from bench.distill import distill  # noqa: E402
from bench.grid import Handcrafted  # noqa: E402
from bench.metrics.analytic import relative_l2  # noqa: E402
from bench.models.flux import flow_times  # noqa: E402

C2 = 4.0     # data x_0 ~ N(0, C2 I)


def gaussian_flow_denoiser(y, t):
    """E[x_0 | x_t = y] for x_t = (1 - t) x_0 + t n, x_0 ~ N(0, C2): D_flow(y, t), defined for any t (also t > 1)."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, *[1] * (y.dim() - 1))
    return (1 - t) * C2 / ((1 - t) ** 2 * C2 + t ** 2) * y


def start(n=5, seed=0):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


AB = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def velocity_adams_bashforth(y, t, order):
    """y_{i+1} = y_i + (t_{i+1} - t_i) sum_j b_j v_{i-j}, v = (y - D_flow(y, t)) / t, order min(i + 1, order)."""
    vs = []
    for i in range(len(t) - 1):
        vs.append((y - gaussian_flow_denoiser(y, t[i])) / t[i])
        b = AB[min(i + 1, order)]
        y = y + (t[i + 1] - t[i]) * sum(bj * vs[-1 - j] for j, bj in enumerate(b))
    return y


@pytest.mark.parametrize("nfe", [3, 5, 7])
def test_flow_ipndm_is_adams_bashforth_on_velocities_and_differs_from_sigma(nfe):
    t = flow_times(nfe + 1, 1.878)
    t[0] = 0.999                              # finite sigma = t / (1 - t), so the sigma form can run too
    y_T = start() * 1.0
    ipndm = solvers.get("ipndm", max_order=2)
    flow = ipndm.sample(gaussian_flow_denoiser, y_T, t)
    torch.testing.assert_close(flow, velocity_adams_bashforth(y_T, t.tolist(), 2), rtol=1e-12, atol=1e-12)
    # the same rows in sigma (x = y / (1 - t), sigma = t / (1 - t)) are another method; Euler is not
    sig = solvers.flow.edm_sigma(t)

    def edm(x, s):
        tt = solvers.flow.flow_time(s)
        return gaussian_flow_denoiser(x * (1 - tt.reshape(-1, 1)), tt)

    x_T = y_T / (1 - t[0])
    assert float(relative_l2(ipndm.sample(edm, x_T, sig), flow).mean()) > 1e-3
    euler = solvers.get("euler")
    torch.testing.assert_close(euler.sample(edm, x_T, sig), euler.sample(gaussian_flow_denoiser, y_T, t),
                               rtol=1e-10, atol=1e-10)


def reference_flux_dyweight(ck, y, t):
    """dyweight_flux/'s loop from the conventions stored beside the released coefficients: query the network at
    s_i t^_i, take its velocity as is, x += (t_{i+1} - t^_i) sum_j w_ij v_j, t^ += sum_j w_ij (t_{i+1} - t^_i)."""
    rows, scales = ck["weights_oldest_to_newest"], ck["time_scale"]
    t_hat, vs = 1.0, []
    for i in range(len(t) - 1):
        tq = scales[i] * t_hat
        vs.append((y - gaussian_flow_denoiser(y, tq)) / tq)
        w = rows[i]
        recent = vs[-len(w):]
        y = y + (t[i + 1] - t_hat) * sum(wj * vj for wj, vj in zip(w, recent))
        t_hat = t_hat + sum(w) * (t[i + 1] - t_hat)
    return y


@pytest.mark.parametrize("nfe", [3, 5, 7])
def test_released_flux_coefficients_follow_the_reference_update(nfe):
    ck = baselines.released_coefficients("flux_dev", nfe)
    s = baselines.released_solver("flux_dev", nfe)
    t = flow_times(nfe + 1, 3.0)
    y_T = start(seed=nfe)
    with torch.no_grad():
        ours = s.sample(gaussian_flow_denoiser, y_T, t, afs=False)
    torch.testing.assert_close(ours, reference_flux_dyweight(ck, y_T, t.tolist()), rtol=1e-9, atol=1e-9)


def flux_model(tmp_path):
    from test_models_real_flux import tiny_flux_components
    from test_models_real_latent import prompts_file

    from bench.models import flux
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a red cat", "a dog", "an astronaut"]))
    return flux.FluxModel(components=tiny_flux_components(), prompts="coco", prompts_path=prompts_file(tmp_path),
                          resolution=16, max_sequence_length=16, train_prompts_path=train)


def test_heun_on_a_grid_ending_at_zero_spends_its_labelled_nfe(tmp_path):
    pytest.importorskip("diffusers")
    m = flux_model(tmp_path)
    p = plan.make(m, Handcrafted(name="heun", label="Heun", time="flow"), 5)
    assert p.ends_at_zero and p.num_points == 4 and p.time == "flow" and p.sigmas[-1] == 0.0
    view = m.view(p.time)
    counting = solvers.CountingDenoiser(view.denoiser(m.conditions([0, 1])))
    with torch.no_grad():
        solvers.get("heun").sample(counting, view.noise([0, 1]), torch.tensor(p.sigmas, dtype=torch.float64))
    assert counting.calls == 5
    with pytest.raises(ValueError, match="exactly NFE=4 .*grid ending at 0"):
        plan.make(m, Handcrafted(name="heun", label="Heun", time="flow"), 4)


FLUX_RECIPE = dict(teacher="euler", teacher_steps=4, teacher_denoise=False, loss="mse", history=2, init="euler",
                   divisor="scaled", time_scale_bounds=[0.5, 1.5], optimizer="adamw", weight_decay=5e-2, lr=1e-2,
                   warmup=0.0, lr_final=0.0, batch_size=1, accumulate=2, steps=3, num_samples=4, eval_samples=2,
                   checkpoint=True)


def test_flux_dyweight_distils_in_flow_time_on_the_grid_ending_at_zero(tmp_path):
    pytest.importorskip("diffusers")
    from bench.distill.teacher import Source
    m = flux_model(tmp_path)
    view = m.view("flow")
    grid = view.grid(4)
    assert float(grid[0]) == 1.0 and float(grid[-1]) == 0.0
    # training prompts come from the training set, not the evaluation prompts
    assert set(Source(view, 0.0, 1.0).conditions([1_000_000_000, 1_000_000_001]).prompts) <= {
        "a red cat", "a dog", "an astronaut"}
    s = distill("dyweight", view, grid, afs=False, seed=0, cache_dir=False, **FLUX_RECIPE)
    assert s.history == 2 and s.divisor == "scaled" and s.time_scale_bounds == (0.5, 1.5)
    assert s.rows() != [[1.0], [0.0, 1.0], [0.0, 1.0]]              # trained away from the Euler init
    assert len(s.metadata["training"]["loss"]) == 3
    with torch.no_grad():
        out = s.sample(view.denoiser(m.conditions([0, 1])), view.noise([0, 1]), grid, afs=False)
    assert torch.isfinite(out).all()


def test_sd_dyweight_distils_with_prompts_and_guidance(tmp_path):
    pytest.importorskip("diffusers")
    from test_models_real_latent import prompts_file, tiny_sd_components

    from bench.models import latent
    m = latent.StableDiffusion(components=tiny_sd_components(), prompts_path=prompts_file(tmp_path))
    assert m.evals_per_call == 2
    grid = m.grid(3)
    s = distill("dyweight", m, grid, afs=False, seed=0, cache_dir=False, teacher="ipndm", teacher_steps=4,
                history=2, num_samples=3, eval_samples=2, batch_size=2, steps=2, teacher_batch_size=2)
    with torch.no_grad():
        out = s.sample(m.denoiser(m.conditions([0, 1])), m.noise([0, 1]), grid, afs=False)
    assert out.shape == (2, *m.shape) and torch.isfinite(out).all()


def test_an_image_distance_on_a_latent_model_compares_decoded_images(tmp_path, monkeypatch):
    """The reference decodes latents (differentiable_decode_first_stage) before the Inception features; a distance
    that reads images gets decoded student and teacher samples, and its gradient reaches the solver."""
    pytest.importorskip("diffusers")
    from test_models_real_latent import prompts_file, tiny_sd_components

    from bench.distill import losses
    from bench.models import latent
    seen = []

    def image_mse(student, teacher):
        seen.append((tuple(student.shape), student.requires_grad, teacher.requires_grad))
        return (student - teacher).pow(2).flatten(1).mean(1)

    image_mse.reads_images = True
    monkeypatch.setattr(losses.REGISTRY, "targets", dict(losses.REGISTRY.targets))
    losses.register("image_mse", image_mse)
    assert losses.reads_images(losses.get("inception")[1]) and not losses.reads_images(losses.get("mse")[1])
    m = latent.StableDiffusion(components=tiny_sd_components(), prompts_path=prompts_file(tmp_path))
    s = distill("dyweight", m, m.grid(3), afs=False, seed=0, cache_dir=False, teacher_steps=4, history=2,
                num_samples=2, eval_samples=0, batch_size=2, steps=2, loss="image_mse")
    assert m.shape == (4, 8, 8) and seen[0] == ((2, 3, 16, 16), True, False)
    assert s.rows() != solvers.get("dyweight", num_points=3, afs=False, history=2).rows()   # it trained
