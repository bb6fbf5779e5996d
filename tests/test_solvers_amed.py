"""AMED-Solver (solvers/amed.py) against an independent float64 evaluation of its equations (the module
docstring, from the official amed_sampler and AMED_predictor): its reductions to DPM-Solver-2 and Euler, the
general step with a random predictor (AFS on and off, both scale heads), NFE counting, options/save/load round
trips, distillation and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import solvers
from bench.distill import distill
from bench.models.gmm import gmm2d


@pytest.fixture(scope="module")
def model():
    return gmm2d()


def D_np(model, y, s):
    s = np.broadcast_to(np.asarray(s, dtype=np.float64), (y.shape[0],))
    return model.denoiser()(torch.from_numpy(y), torch.from_numpy(s.copy())).numpy()


def silu(v):
    return v / (1 + np.exp(-v))


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def predictor_np(W, f, t0, t1, bd, bt):
    def lin(name, v):
        return v @ W[name + ".weight"].T + W[name + ".bias"]

    def emb(t):
        freqs = (1 / 10000) ** (np.arange(4) / 3)
        e = np.concatenate([np.sin(t * freqs), np.cos(t * freqs)])[None]
        return np.repeat(silu(lin("map_layer0", e)), f.shape[0], axis=0)

    h = lin("enc_layer1", silu(lin("enc_layer0", f)))
    out = np.concatenate([h, emb(t0), emb(t1)], axis=1)
    r = sigmoid(lin("fc_r", out))[:, 0]
    c = 2 * bd * sigmoid(lin("fc_scale_dir", out))[:, 0] + 1 - bd if bd else np.ones_like(r)
    a = 2 * bt * sigmoid(lin("fc_scale_time", out))[:, 0] + 1 - bt if bt else np.ones_like(r)
    return r, c, a


def reference(model, solver, x, t, afs):
    W = {k: v.detach().numpy() for k, v in solver.state_dict().items()}
    x = x.numpy().copy()
    for i in range(len(t) - 1):
        if afs and i == 0:
            d, f = x / math.sqrt(1 + t[0] ** 2), np.zeros((x.shape[0], 6))
        else:
            den = D_np(model, x, t[i])
            d = (x - den) / t[i]
            xs = x / math.sqrt(1 + t[i] ** 2)
            f = np.stack([v for y in (xs, den) for v in (y.mean(1), y.std(1), np.abs(y).mean(1))], axis=1)
        r, c, a = predictor_np(W, f, t[i], t[i + 1], solver.scale_dir_bound, solver.scale_time_bound)
        s = t[i + 1] ** r * t[i] ** (1 - r)
        y = x + (s - t[i])[:, None] * d
        g = (y - D_np(model, y, a * s)) / s[:, None]
        x = x + (c * (t[i + 1] - t[i]))[:, None] * g
    return x


def _fixed_r(n, bias):
    """A predictor whose r is sigmoid(bias) for every input (zero weights in its r head), c = a = 1."""
    s = solvers.get("amed", num_points=n, scale_dir_bound=0, scale_time_bound=0)
    with torch.no_grad():
        s.fc_r.weight.zero_()
        s.fc_r.bias.fill_(bias)
    return s


def test_reductions_are_dpm_solver_2_and_euler(model):
    x, g = model.noise(range(16)), model.grid(6)
    D = model.denoiser()
    with torch.no_grad():
        mid = solvers.get("epd", r=[[0.5]] * 5, weights=[[1.0]] * 5, scale_dir_bound=0, scale_time_bound=0)
        torch.testing.assert_close(_fixed_r(6, 0.0).sample(D, x, g), mid.sample(D, x, g), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(_fixed_r(6, -60.0).sample(D, x, g), solvers.get("euler").sample(D, x, g),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("afs", [False, True])
def test_general_step_matches_the_equations(model, afs):
    s = solvers.get("amed", num_points=5, afs=afs, scale_dir_bound=0.05, scale_time_bound=0.1, seed=3)
    with torch.no_grad():                                   # a predictor far from r = 1/2
        for p in s.parameters():
            p.mul_(3)
    x, g = model.noise(range(12)), model.grid(5)
    with torch.no_grad():
        ours = s.sample(model.denoiser(), x, g, afs=afs)
        r, _, _ = s.predict(torch.randn(12, 6, dtype=torch.float64), 80.0, 10.0)
    assert float(r.std()) > 0.01                              # per-sample points
    np.testing.assert_allclose(ours.numpy(), reference(model, s, x, g.tolist(), afs), rtol=1e-10, atol=1e-10)


def test_nfe_counts(model):
    for afs in (False, True):
        for n in (3, 4, 6):
            s = solvers.get("amed", num_points=n, afs=afs)
            counting = solvers.CountingDenoiser(model.denoiser())
            with torch.no_grad():
                s.sample(counting, model.noise(range(2)), model.grid(n), afs=afs)
            assert counting.calls == s.calls(n, afs) == 2 * (n - 1) - afs
            assert s.num_points(s.calls(n, afs), afs=afs) == n


def test_options_save_and_load_rebuild_the_same_samples(model, tmp_path):
    s = solvers.get("amed", num_points=4, afs=True, scale_time_bound=0.1, seed=1)
    x, g = model.noise(range(6)), model.grid(4)
    with torch.no_grad():
        out = s.sample(model.denoiser(), x, g, afs=True)
        assert torch.equal(solvers.get("amed", **s.options()).sample(model.denoiser(), x, g, afs=True), out)
        s.save(tmp_path / "amed.json")
        back = solvers.load(tmp_path / "amed.json")
        assert torch.equal(back.sample(model.denoiser(), x, g, afs=True), out)
    assert s.parameter_count() == sum(p.numel() for p in s.parameters()) > 1000
    layers = ("map_layer0", "enc_layer0", "enc_layer1", "fc_r", "fc_scale_dir", "fc_scale_time")
    assert set(s.learns()) == {f"{layer}.{w}" for layer in layers for w in ("weight", "bias")}
    assert "fc_scale_time.weight" not in solvers.get("amed", num_points=4).learns()


def test_distillation_lowers_the_held_out_error(model):
    s = distill("amed", model, model.grid(4), afs=True, seed=0, cache_dir=False, num_samples=256, eval_samples=64,
                teacher_steps=12, steps=80, lr=2e-2)
    t = s.metadata["training"]
    assert t["eval_error"][-1] < 0.7 * t["eval_error"][0]
    assert t["supervision"] == "path" and t["teacher"] == "heun" and t["path_substeps"] == 2


@pytest.mark.parametrize("opts, match", [
    ({}, "amed needs num_points"),
    ({"num_points": 1}, "num_points >= 2"),
    ({"num_points": 4, "features": "unet"}, "unknown amed features 'unet'; accepted: pooled, bottleneck"),
    ({"num_points": 4, "scale_dir_bound": 1.5}, "scale_dir_bound must be a number in \\[0, 1\\)"),
    ({"num_points": 4, "weights": {"fc_r.weight": [[0.0]]}}, "weights must give exactly"),
])
def test_bad_input_is_one_clear_error(opts, match):
    with pytest.raises(ValueError, match=match):
        solvers.get("amed", **opts)


def test_wrong_weight_shapes_and_grids_are_refused(model):
    w = solvers.get("amed", num_points=3).options()["weights"]
    w["fc_r.weight"] = [[0.0] * 3]
    with pytest.raises(ValueError, match="amed weight fc_r.weight must have shape \\(1, 20\\)"):
        solvers.get("amed", num_points=3, weights=w)
    s = solvers.get("amed", num_points=3)
    with pytest.raises(ValueError, match="amed needs a grid ending above 0"):
        s.sample(model.denoiser(), model.noise([0]), torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="needs a grid of 3 points, got 4"):
        s.sample(model.denoiser(), model.noise([0]), model.grid(4))


def test_bottleneck_features_are_the_networks_own(model):
    """features="bottleneck" reads, through the denoiser's Features, the channel mean of the EDM stand-in's encoder
    block 8x8_block3 (as the official AMED hook) at each step's first call: the same 64 values a hook of one's own
    sees, and nothing is captured outside sampling. A denoiser without them is one clear error."""
    from bench import standins
    edm = standins.edm("tiny")
    D = edm.denoiser()
    x, g = edm.noise(range(3)), edm.grid(4)
    s = solvers.get("amed", num_points=4, features="bottleneck", seed=2)
    seen, inputs = [], []
    hook = edm.network().model.enc["8x8_block3"].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    orig = s.predict
    s.predict = lambda f, t0, t1: inputs.append(f) or orig(f, t0, t1)
    try:
        counting = solvers.CountingDenoiser(D)
        with torch.no_grad():
            out = s.sample(counting, x, g)
    finally:
        hook.remove()
    assert out.shape == x.shape and counting.calls == 6 and len(seen) == 6 and len(inputs) == 3
    for k, f in enumerate(inputs):                               # step k's first call is call 2k
        assert f.shape == (3, 64)
        torch.testing.assert_close(f, seen[2 * k].float().mean(1).flatten(1).double())
    assert D.features.capture is False and D.features.latest is None
    with torch.no_grad():                                        # pooled features give other samples
        assert not torch.allclose(solvers.get("amed", num_points=4, seed=2).sample(D, x, g), out)
    with pytest.raises(ValueError, match="features='bottleneck' needs a denoiser that exposes"):
        s.sample(model.denoiser(), model.noise([0]), model.grid(4))
