"""LD3 (solvers/ld3.py) against an independent float64 evaluation of docs/learned-solvers.md section 3: the
reductions to the base solvers on a logSNR-uniform grid, the decoupled mapping and sampling with non-trivial
logits and active clamps (UniPC bh1/bh2 and iPNDM in noise form, AFS on and off), gradients through the grid, NFE
counting, options/save/load round trips, distillation and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import solvers
from bench.distill import distill
from bench.models.gmm import gmm2d
from solvers import schedules


@pytest.fixture(scope="module")
def model():
    return gmm2d()


def D_np(model, y, s):
    return model.denoiser()(torch.from_numpy(y), torch.full((y.shape[0],), float(s), dtype=torch.float64)).numpy()


def mapping(p1, p2, t_max, t_min, win_rate=0.5):
    """xi and s from the logits, in numpy (the docs' lambda mode)."""
    e = np.exp(p1 - p1.max())
    q = np.cumsum(e / e.sum())
    n = (q - q.min()) / (q.max() - q.min())
    lam = -math.log(t_max) + n * (-math.log(t_min) + math.log(t_max))
    m = win_rate * np.abs(np.diff(p1)).min()
    off = np.clip(p2, -m, m)
    off[0] = off[-1] = 0
    xi, s = np.exp(-lam), np.exp(-(lam + off))
    xi[0], xi[-1], s[0], s[-1] = t_max, t_min, t_max, t_min
    return xi, s


def unipc_reference(model, x, xi, s, afs, order_max=3, variant="bh1"):
    """UniPC (data prediction) on the grid xi with the network at the model times s."""
    x = x.numpy().copy()
    N = len(xi)
    lam = -np.log(xi)
    M = [x * (1 - xi[0] / math.sqrt(1 + xi[0] ** 2)) if afs else D_np(model, x, s[0])]
    for i in range(N - 1):
        if i + 1 < order_max:
            p, corr = i + 1, True
        else:
            p, corr = min(order_max, N - 1 - i), i < N - 2
        h = lam[i + 1] - lam[i]
        hh = -h
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, p)] + [1.0]
        D1 = [(M[-1 - k] - M[-1]) / rks[k - 1] for k in range(1, p)]
        Bh = hh if variant == "bh1" else math.expm1(hh)
        phi, fac = math.expm1(hh) / hh - 1, 1.0
        R, b = [], []
        for k in range(1, p + 1):
            R.append([r ** (k - 1) for r in rks])
            b.append(phi * fac / Bh)
            fac *= k + 1
            phi = phi / hh - 1 / fac
        R, b = np.array(R), np.array(b)
        x_lin = xi[i + 1] / xi[i] * x - math.expm1(-h) * M[-1]
        if p == 1:
            x_pred = x_lin
        else:
            rho = [0.5] if p == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
            x_pred = x_lin - Bh * sum(r * d for r, d in zip(rho, D1))
        if not corr:
            x = x_pred
            continue
        Mt = D_np(model, x_pred, s[i + 1])
        rho_c = [0.5] if p == 1 else np.linalg.solve(R, b)
        x = x_lin - Bh * (sum(r * d for r, d in zip(rho_c[:-1], D1)) + rho_c[-1] * (Mt - M[-1]))
        M.append(Mt)
    return x


def ipndm_reference(model, x, xi, s, afs, max_order=4):
    """LD3's iPNDM: noise predictions eps(x_k, s_k) combined by Adams-Bashforth on xi."""
    x = x.numpy().copy()
    ab = {1: [1.0], 2: [-0.5, 1.5], 3: [5 / 12, -16 / 12, 23 / 12], 4: [-9 / 24, 37 / 24, -59 / 24, 55 / 24]}
    eps = []
    for k in range(len(xi) - 1):
        eps.append(x / math.sqrt(1 + xi[0] ** 2) if afs and k == 0 else (x - D_np(model, x, s[k])) / s[k])
        p = min(max_order, k + 1)
        x = x + (xi[k + 1] - xi[k]) * sum(c * e for c, e in zip(ab[p], eps[-p:]))
    return x


def test_reductions_are_the_base_solvers_on_a_logsnr_grid(model):
    x, g = model.noise(range(16)), model.grid(6)
    D = model.denoiser()
    uniform = schedules.logsnr(6, float(g[-1]), float(g[0])).double()
    for base, opts in (("unipc", {"order": 3, "variant": "bh1"}), ("unipc", {"order": 2, "variant": "bh2"}),
                       ("ipndm", {}), ("euler", {})):
        for afs in (False, True):
            s = solvers.get("ld3", num_points=6, base=base, base_options=opts)
            with torch.no_grad():
                torch.testing.assert_close(s.sample(D, x, g, afs=afs),
                                           solvers.get(base, **opts).sample(D, x, uniform, afs=afs),
                                           rtol=1e-10, atol=1e-10)
    # p2 = 0 with learned logits: the base solver on the learned grid
    ld3 = solvers.solver_class("ld3")(torch.tensor([0.3, 1.0, -0.5, 0.2, 0.9, 0.1]), torch.zeros(6))
    grid = ld3.grid(float(g[0]), float(g[-1]))
    assert grid["timesteps"] == grid["model_times"]
    with torch.no_grad():
        torch.testing.assert_close(ld3.sample(D, x, g), solvers.get("unipc", order=3, variant="bh1").sample(
            D, x, torch.tensor(grid["timesteps"], dtype=torch.float64)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("base, variant", [("unipc", "bh1"), ("unipc", "bh2"), ("ipndm", None)])
@pytest.mark.parametrize("afs", [False, True])
def test_decoupled_sampling_matches_the_equations(model, base, variant, afs):
    rng = np.random.default_rng(4)
    p1, p2 = rng.normal(size=7), rng.normal(size=7) * 0.4
    opts = {"order": 3, "variant": variant} if base == "unipc" else {}
    s = solvers.solver_class("ld3")(p1, p2, afs=afs, base=base, base_options=opts)
    x, g = model.noise(range(12)), model.grid(7)
    xi, sm = mapping(p1, p2, float(g[0]), float(g[-1]))
    m = 0.5 * np.abs(np.diff(p1)).min()
    assert (np.abs(p2[1:-1]) > m).any() and (np.abs(p2[1:-1]) < m).any()       # some offsets clamped, some not
    got = s.grid(float(g[0]), float(g[-1]))
    np.testing.assert_allclose(got["timesteps"], xi, rtol=1e-13)
    np.testing.assert_allclose(got["model_times"], sm, rtol=1e-13)
    with torch.no_grad():
        ours = s.sample(model.denoiser(), x, g, afs=afs).numpy()
    ref = (unipc_reference(model, x, xi, sm, afs, 3, variant) if base == "unipc"
           else ipndm_reference(model, x, xi, sm, afs))
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)


def test_gradients_reach_the_logits_through_the_grid(model):
    """Autograd through UniPC's differentiable coefficients agrees with central differences."""
    p1 = torch.tensor([0.2, 0.9, -0.4, 0.5, 1.3], dtype=torch.float64)
    p2 = torch.tensor([0.0, 0.1, -0.2, 0.05, 0.0], dtype=torch.float64)
    x, g = model.noise(range(8)), model.grid(5)
    D = model.denoiser()

    def loss(a, b):
        s = solvers.solver_class("ld3")(a, b)
        return s, s.sample(D, x, g).pow(2).sum()

    s, value = loss(p1, p2)
    value.backward()
    for k in (1, 2, 3):
        for which, grad in (("p1", s.p1.grad), ("p2", s.p2.grad)):
            e = torch.zeros(5, dtype=torch.float64)
            e[k] = 1e-6
            a, b = (p1 + e, p2) if which == "p1" else (p1, p2 + e)
            a2, b2 = (p1 - e, p2) if which == "p1" else (p1, p2 - e)
            with torch.no_grad():
                fd = (loss(a, b)[1] - loss(a2, b2)[1]) / 2e-6
            assert float(grad[k]) == pytest.approx(float(fd), rel=1e-5, abs=1e-6), (which, k)


def test_nfe_counts(model):
    for base in ("unipc", "ipndm", "euler"):
        for afs in (False, True):
            for n in (3, 4, 6, 9):
                s = solvers.get("ld3", num_points=n, afs=afs, base=base)
                counting = solvers.CountingDenoiser(model.denoiser())
                with torch.no_grad():
                    s.sample(counting, model.noise(range(2)), model.grid(n), afs=afs)
                assert counting.calls == s.calls(n, afs) == solvers.get(base).calls(n, afs)
                nfe = s.calls(n, afs)
                assert s.num_points(nfe, afs=afs) == solvers.get(base).num_points(nfe, afs=afs)


def test_options_save_and_load_rebuild_the_same_samples(model, tmp_path):
    rng = np.random.default_rng(1)
    s = solvers.solver_class("ld3")(rng.normal(size=6), rng.normal(size=6) * 0.3, afs=True)
    x, g = model.noise(range(6)), model.grid(6)
    with torch.no_grad():
        out = s.sample(model.denoiser(), x, g, afs=True)
        again = solvers.get("ld3", **s.options())
        torch.testing.assert_close(again.sample(model.denoiser(), x, g, afs=True), out, rtol=1e-12, atol=1e-12)
        s.save(tmp_path / "ld3.json")
        back = solvers.load(tmp_path / "ld3.json")
        assert torch.equal(back.sample(model.denoiser(), x, g, afs=True), out)
    assert s.learns() == {"timesteps": 4, "model_times": 4} and s.parameter_count() == 8
    assert back.options() == s.options()


def test_distillation_lowers_the_held_out_error(model):
    s = distill("ld3", model, model.grid(5), afs=True, seed=0, cache_dir=False, num_samples=128, eval_samples=64,
                steps=80, batch_size=16, lr=2e-2)
    t = s.metadata["training"]
    assert t["eval_error"][-1] < 0.7 * t["eval_error"][0]
    assert t["teacher"] == "unipc" and t["teacher_steps"] == 20 and t["teacher_denoise"] is False
    assert t["parameters"] == 6
    pos = s.positions().detach()
    assert not torch.allclose(pos, torch.linspace(0, 1, 5, dtype=torch.float64))     # the grid moved


def test_the_relaxed_ball_moves_training_noises_within_their_radius():
    """LD3's relaxed objective (its default): training noises move, only where the loss fell, never farther than
    r = 0.001 numel(z) / S^2 from where they started; each trial costs one more forward pass."""
    from bench.models.gmm import gmm64
    m = gmm64()
    s = distill("ld3", m, m.grid(5), afs=True, seed=0, cache_dir=False, num_samples=64, eval_samples=32,
                steps=40, batch_size=16, lr=2e-2)
    t = s.metadata["training"]
    ball = t["ball"]
    assert t["relaxed_ball"] is True and ball["radius"] == pytest.approx(0.001 * 64 / 4 ** 2)
    assert ball["moves_tried"] == 40 * 16 and 0 < ball["moves_kept"] <= ball["moves_tried"]
    assert 0 < ball["max_offset"] <= ball["radius"] * (1 + 1e-9) and ball["lr"] == 3.0
    assert t["student_calls"] == 2 * 40 * 16 * s.calls(5, True)
    off = distill("ld3", m, m.grid(5), afs=True, seed=0, cache_dir=False, num_samples=64, eval_samples=32,
                  steps=40, batch_size=16, lr=2e-2, relaxed_ball=False)
    assert "ball" not in off.metadata["training"] and off.options() != s.options()


@pytest.mark.parametrize("opts, match", [
    ({}, "exactly one of positions="),
    ({"num_points": 1}, "num_points >= 2"),
    ({"num_points": 4, "base": "heun"}, "base must be one of unipc, ipndm, euler"),
    ({"num_points": 4, "mode": "time"}, "mode 'time' is not supported; accepted: lambda"),
    ({"num_points": 4, "win_rate": -1}, "win_rate must be a number >= 0"),
    ({"positions": [0.0, 0.6, 0.4, 1.0]}, "rising strictly from exactly 0 to exactly 1"),
    ({"positions": [0.1, 0.5, 1.0]}, "rising strictly from exactly 0 to exactly 1"),
    ({"positions": [0.0, 0.5, 1.0], "offsets": [0.0, 0.1]}, "offsets must have positions' length"),
    ({"positions": [0.0, 0.2, 0.5, 1.0], "offsets": [0.0, 5.0, 0.0, 0.0]}, "offsets must lie within the window"),
])
def test_bad_input_is_one_clear_error(opts, match):
    with pytest.raises(ValueError, match=match):
        solvers.get("ld3", **opts)


def test_grids_it_cannot_use_are_refused(model):
    s = solvers.get("ld3", num_points=3)
    with pytest.raises(ValueError, match="ld3 needs a grid ending above 0"):
        s.sample(model.denoiser(), model.noise([0]), torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="needs a grid of 3 points, got 4"):
        s.sample(model.denoiser(), model.noise([0]), model.grid(4))


@pytest.mark.parametrize("opts, match", [({"relaxed_ball": "yes"}, "relaxed_ball must be True or False"),
                                         ({"ball_radius": -1.0}, "ball_radius must be a positive number"),
                                         ({"ball_lr": 0}, "ball_lr must be a positive number")])
def test_bad_relaxed_ball_settings_are_one_clear_error(model, opts, match):
    with pytest.raises(ValueError, match=match):
        distill("ld3", model, model.grid(4), afs=False, cache_dir=False, **opts)
