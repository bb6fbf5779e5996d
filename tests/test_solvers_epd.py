"""EPD-Solver (solvers/epd.py) against an independent float64 evaluation of docs/learned-solvers.md section 1:
its reductions to DPM-Solver-2 (geometric midpoint) and Heun, the general step with random tables (base Euler and
iPNDM, AFS on and off), NFE counting, options/save/load round trips, distillation and bad input."""
from __future__ import annotations

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
    return model.denoiser()(torch.from_numpy(y), torch.full((y.shape[0],), float(s), dtype=torch.float64)).numpy()


def reference(model, x, t, tab, afs, base="euler", max_order=3):
    """The docs' equations in numpy: s_k = t1^r t0^(1-r), y_k from d_i (or its AB combination), g_k at a s_k
    divided by s_k, x += h sum_k w c g_k."""
    x = x.numpy().copy()
    r, w, c, a = (np.asarray(tab[k]) for k in ("r", "weights", "scale_dir", "scale_time"))
    ab = {1: [1.0], 2: [-0.5, 1.5], 3: [5 / 12, -16 / 12, 23 / 12], 4: [-9 / 24, 37 / 24, -59 / 24, 55 / 24]}
    buf = []
    for i in range(len(t) - 1):
        d = x / np.sqrt(1 + t[0] ** 2) if afs and i == 0 else (x - D_np(model, x, t[i])) / t[i]
        order = min(max_order, len(buf) + 1) if base == "ipndm" else 1
        past = (buf + [d])[-order:]
        upd = np.zeros_like(x)
        for k in range(r.shape[1]):
            s = t[i + 1] ** r[i, k] * t[i] ** (1 - r[i, k])
            y = x + (s - t[i]) * sum(cj * dj for cj, dj in zip(ab[order], past))
            upd += w[i, k] * c[i, k] * (y - D_np(model, y, a[i, k] * s)) / s
        x = x + (t[i + 1] - t[i]) * upd
        if base == "ipndm":
            buf = (buf + [d])[-(max_order - 1):]
    return x


def test_reductions_are_dpm_solver_2_and_heun(model):
    x, g = model.noise(range(16)), model.grid(6)
    D = model.denoiser()
    with torch.no_grad():
        mid = solvers.get("epd", r=[[0.5]] * 5, weights=[[1.0]] * 5, scale_dir_bound=0, scale_time_bound=0)
        y = x.clone()
        t = g.tolist()
        for i in range(5):                                   # DPM-Solver-2, r = 1/2 in log sigma
            d = (y - D(y, torch.full((16,), t[i], dtype=torch.float64))) / t[i]
            s = (t[i] * t[i + 1]) ** 0.5
            z = y + (s - t[i]) * d
            y = y + (t[i + 1] - t[i]) * (z - D(z, torch.full((16,), s, dtype=torch.float64))) / s
        torch.testing.assert_close(mid.sample(D, x, g), y, rtol=1e-10, atol=1e-10)
        heun = solvers.get("epd", r=[[0.0, 1.0]] * 5, weights=[[0.5, 0.5]] * 5, scale_dir_bound=0,
                           scale_time_bound=0)
        torch.testing.assert_close(heun.sample(D, x, g), solvers.get("heun").sample(D, x, g), rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize("base", ["euler", "ipndm"])
@pytest.mark.parametrize("afs", [False, True])
def test_general_step_matches_the_equations(model, base, afs):
    s = solvers.get("epd", num_points=5, K=2, afs=afs, base=base, scale_dir_bound=0.05, scale_time_bound=0.1, seed=3)
    tab = {k: v.detach().numpy() for k, v in s.tables().items()}
    assert np.all((tab["scale_time"] > 0.9) & (tab["scale_time"] < 1.1)) and np.allclose(tab["weights"].sum(1), 1)
    x, g = model.noise(range(12)), model.grid(5)
    with torch.no_grad():
        ours = s.sample(model.denoiser(), x, g, afs=afs)
    np.testing.assert_allclose(ours.numpy(), reference(model, x, g.tolist(), tab, afs, base), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("K", [1, 2, 3])
def test_nfe_counts_every_evaluation_and_reports_the_latency_count(model, K):
    for afs in (False, True):
        for n in (3, 4, 6):
            s = solvers.get("epd", num_points=n, K=K, afs=afs)
            counting = solvers.CountingDenoiser(model.denoiser())
            with torch.no_grad():
                s.sample(counting, model.noise(range(2)), model.grid(n), afs=afs)
            assert counting.calls == s.calls(n, afs) == (n - 1) * (1 + K) - afs
            assert s.latency_calls(n, afs) == 2 * (n - 1) - afs
            assert s.num_points(s.calls(n, afs), afs=afs) == n


def test_options_save_and_load_rebuild_the_same_samples(model, tmp_path):
    s = solvers.get("epd", num_points=4, afs=True, base="ipndm", seed=1)
    x, g = model.noise(range(6)), model.grid(4)
    with torch.no_grad():
        out = s.sample(model.denoiser(), x, g, afs=True)
        torch.testing.assert_close(solvers.get("epd", **s.options()).sample(model.denoiser(), x, g, afs=True), out,
                                   rtol=1e-12, atol=1e-12)
        s.save(tmp_path / "epd.json")
        back = solvers.load(tmp_path / "epd.json")
        assert torch.equal(back.sample(model.denoiser(), x, g, afs=True), out)
    assert s.learns() == {"r_raw": 6, "w_raw": 6, "c_raw": 6, "a_raw": 6} and s.parameter_count() == 24
    assert "c_raw" not in solvers.get("epd", num_points=4, scale_dir_bound=0).learns()


def test_distillation_lowers_the_held_out_error(model):
    s = distill("epd", model, model.grid(4), afs=True, seed=0, cache_dir=False, num_samples=256, eval_samples=64,
                teacher_steps=12, steps=60)
    ev = s.metadata["training"]["eval_error"]
    assert ev[-1] < 0.7 * ev[0] and s.metadata["training"]["supervision"] == "path"


@pytest.mark.parametrize("opts, match", [
    ({}, "exactly one of r="),
    ({"num_points": 4, "K": 0}, "K \\(points per step\\) must be an integer >= 1"),
    ({"num_points": 4, "init": "zeros"}, "unknown epd init 'zeros'; accepted: official, neutral"),
    ({"num_points": 4, "base": "heun"}, "base must be one of euler, ipndm"),
    ({"r": [[0.5, 0.5]], "weights": [[1.0]]}, "weights must have r's shape"),
    ({"r": [[0.5]], "weights": [[1.0]], "scale_dir": [[1.2]]}, "scale_dir values must lie inside"),
    ({"num_points": 4, "scale_time_bound": 1.5}, "scale_time_bound must be a number in \\[0, 1\\)"),
])
def test_bad_input_is_one_clear_error(opts, match):
    with pytest.raises(ValueError, match=match):
        solvers.get("epd", **opts)


def test_a_grid_ending_at_zero_is_refused(model):
    with pytest.raises(ValueError, match="epd needs a grid ending above 0"):
        solvers.get("epd", num_points=3).sample(model.denoiser(), model.noise([0]),
                                                torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64))
