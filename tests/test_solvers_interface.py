"""The common interface: NFE counted at every budget, every bad-input error, shapes/dtypes, DyWeight gradients."""
from __future__ import annotations

import math

import pytest
import torch

import baselines
import solvers
from solvers import schedules

CONFIGS = [("euler", {}), ("heun", {}), ("ipndm", {}), ("ipndm_v", {}), ("dpm_solver_pp", {"order": 2}),
           ("dpm_solver_pp", {"order": 3}), ("unipc", {"order": 1}), ("unipc", {"order": 2}),
           ("unipc", {"order": 3}), ("unipc", {"order": 3, "variant": "bh1"}), ("dyweight", {})]
IDS = [f"{n}{''.join(f'-{v}' for v in o.values())}" for n, o in CONFIGS]


def gauss_denoiser(var=0.25):
    """Exact denoiser of N(0, var I) data, any trailing shape; checks that sigma arrives as (B,) in x's dtype."""
    def D(x, sigma):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype and sigma.device == x.device
        s2 = sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2
        return x * var / (var + s2)
    return D


def build(name, opts, n=None, afs=False):
    if name == "dyweight":
        return solvers.get("dyweight", num_points=n, afs=afs)
    return solvers.get(name, **opts)


def expected_points(name, opts, nfe, afs):
    """The conventions' budget rules, written out (not derived from solver.calls)."""
    if name == "heun":            # NFE = 2 (N - 1), AFS saves step 0's predictor call
        return (nfe + int(afs)) // 2 + 1 if (nfe + int(afs)) % 2 == 0 and (nfe >= 3 or not afs) else None
    if name == "unipc" and opts.get("order") == 3 and nfe == 2 and not afs:
        return 2                  # N = 3 would spend 3 calls (corrector on every step of a short grid)
    return nfe + 1 + int(afs)     # one evaluation per step; AFS: N = NFE + 2


# ---- NFE ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("afs", [False, True], ids=["noafs", "afs"])
@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_nfe_counted_equals_calls_and_budget(name, opts, afs):
    x_T = 80.0 * torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for nfe in range(2, 13):
        want_n = expected_points(name, opts, nfe, afs)
        if want_n is None:
            with pytest.raises(ValueError, match="cannot spend exactly NFE"):
                schedules.grid_for(build(name, opts, 3), nfe, afs=afs)
            continue
        grid = schedules.grid_for(name if name == "dyweight" else build(name, opts), nfe, afs=afs)
        assert len(grid) == want_n, (nfe, len(grid))
        solver = build(name, opts, want_n, afs)
        assert solver.num_points(nfe, afs=afs) == want_n
        counter = solvers.CountingDenoiser(gauss_denoiser())
        solver.sample(counter, x_T, grid, afs=afs)
        assert counter.calls == nfe == solver.calls(want_n, afs)
        # classifier-free guidance: every call is two evaluations, so budget 2 * nfe needs the same grid
        assert solver.num_points(2 * nfe, afs=afs, evals_per_call=2) == want_n
        cfg = solvers.CountingDenoiser(gauss_denoiser(), evals_per_call=2)
        solver.sample(cfg, x_T, schedules.grid_for(solver, 2 * nfe, afs=afs, evals_per_call=2), afs=afs)
        assert cfg.evaluations == 2 * nfe


@pytest.mark.parametrize("afs", [False, True], ids=["noafs", "afs"])
@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_nfe_on_grids_ending_at_zero(name, opts, afs):
    """Flow models' grids end at sigma = 0: no call is made there, so Heun spends one call less per grid (odd
    budgets without AFS, even with) and grid_for accounts for it; the others are unchanged."""
    x_T = 80.0 * torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for nfe in range(2, 11):
        kw = dict(kind="flow_shift", sigma_min=None, sigma_max=80.0, t_min=0.0, afs=afs)
        if name == "heun" and (nfe + int(afs)) % 2 == 0:
            with pytest.raises(ValueError, match="grid ending at 0"):
                schedules.grid_for("heun", nfe, **kw)
            continue
        grid = schedules.grid_for(name if name == "dyweight" else build(name, opts), nfe, **kw)
        assert float(grid[-1]) == 0.0
        counter = solvers.CountingDenoiser(gauss_denoiser())
        build(name, opts, len(grid), afs).sample(counter, x_T, grid, afs=afs)
        assert counter.calls == nfe and 0.0 not in counter.sigmas


def test_cfg_odd_budget_is_an_error():
    with pytest.raises(ValueError, match="not a multiple of 2"):
        schedules.grid_for("ipndm", 7, evals_per_call=2)


def test_denoise_to_zero_spends_one_more_call_and_returns_D():
    D = gauss_denoiser()
    x_T = 80.0 * torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = schedules.polynomial(6, 0.002, 80.0)
    counter = solvers.CountingDenoiser(D)
    solver = solvers.get("ipndm")
    out = solver.sample(counter, x_T, t, denoise_to_zero=True)
    assert counter.calls == solver.calls(6) + 1 and counter.sigmas[-1] == pytest.approx(0.002)
    assert torch.equal(out, D(solver.sample(D, x_T, t), torch.full((2,), 0.002, dtype=torch.float64)))


# ---- bad input ----------------------------------------------------------------------------------------------
def test_unknown_solver_lists_accepted():
    with pytest.raises(ValueError) as e:
        solvers.get("ddim")
    assert "'ddim'" in str(e.value) and all(n in str(e.value) for n in solvers.names())


@pytest.mark.parametrize("name", ["euler", "heun", "ipndm", "ipndm_v", "dpm_solver_pp", "unipc", "dyweight"])
def test_unknown_option_lists_accepted(name):
    with pytest.raises(ValueError, match=r"no option 'bogus'; accepted: ") as e:
        solvers.get(name, bogus=1)
    if name == "unipc":
        assert "order" in str(e.value) and "variant" in str(e.value)


@pytest.mark.parametrize("name,opts,match", [
    ("dpm_solver_pp", {"order": 4}, "order must be 1, 2 or 3"),
    ("unipc", {"order": 0}, "order must be 1, 2 or 3"),
    ("unipc", {"variant": "bh3"}, "variant must be 'bh1' or 'bh2'"),
    ("ipndm", {"max_order": 5}, "max_order must be 1, 2, 3 or 4"),
    ("ipndm_v", {"max_order": 0}, "max_order must be 1, 2, 3 or 4"),
    ("dyweight", {}, "needs exactly one of"),
    ("dyweight", {"num_points": 5, "init": "zeros"}, "unknown init 'zeros'; accepted"),
    ("dyweight", {"released": "cifar10", "nfe": 4}, "has no option 'released', 'nfe'"),   # baselines.released_solver
    ("dyweight", {"weights": [[1.0], [0.5, 0.5], [1.0]]}, "row 2 must hold"),
    ("dyweight", {"weights": [[1.0], [-0.5, 1.5]], "time_scale": [1.0, 1.0, 1.0]}, "one factor per network call"),
    ("dyweight", {"weights": [[1.0], [-0.5, 1.5]], "time_scale": [1.0], "afs": False}, "one factor per network"),
])
def test_bad_option_values(name, opts, match):
    with pytest.raises(ValueError, match=match):
        solvers.get(name, **opts)


@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_bad_grids(name, opts):
    x = torch.ones(2, 3, dtype=torch.float64)
    D = gauss_denoiser()
    bad = {
        "strictly descending": [80.0, 10.0, 10.0, 1.0],
        "strictly descending ": [1.0, 10.0, 20.0, 80.0],
        "finite and non-negative": [80.0, 10.0, 1.0, -0.5],
        "finite and non-negative ": [80.0, float("nan"), 1.0, 0.5],
    }
    for match, t in bad.items():
        s = build(name, opts, len(t))
        with pytest.raises(ValueError, match=match.strip()):
            s.sample(D, x, torch.tensor(t, dtype=torch.float64))
    with pytest.raises(ValueError, match="1-D"):
        build(name, opts, 4).sample(D, x, torch.ones(2, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="strictly descending"):             # a (B, N) grid: per-sample rows
        build(name, opts, 2).sample(D, x, torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs at least 2 grid points"):
        build(name, opts, 2).sample(D, x, torch.tensor([80.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="needs at least 3 grid points with afs=True"):
        (solvers.get(name, num_points=2) if name == "dyweight" else build(name, opts)).sample(
            D, x, torch.tensor([80.0, 1.0], dtype=torch.float64), afs=True)


@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_unreachable_budgets(name, opts):
    s = build(name, opts, 3)
    for nfe in (0, -1):
        with pytest.raises(ValueError, match=f"cannot spend exactly NFE={nfe}"):
            s.num_points(nfe)
    if name == "heun":
        with pytest.raises(ValueError, match=r"heun cannot spend exactly NFE=5 \(afs=False\)"):
            schedules.grid_for("heun", 5)
        with pytest.raises(ValueError, match=r"NFE=4 \(afs=True\)"):
            schedules.grid_for("heun", 4, afs=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_nonfinite_denoiser_output_is_reported(name, opts, bad):
    D = gauss_denoiser()
    calls = []

    def broken(x, sigma):
        calls.append(1)
        out = D(x, sigma)
        return out * bad if len(calls) == 3 else out

    t = schedules.polynomial(6, 0.002, 80.0)
    x = 80.0 * torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(solvers.NonFiniteError, match=rf"{name}: .*call 3 of \d+ \(sigma="):
        build(name, opts, 6).sample(broken, x, t)


def test_diverging_update_is_reported():
    """Finite denoiser outputs, but x - D overflows: the message blames the update, not the network."""
    t = torch.tensor([80.0, 1.0], dtype=torch.float64)
    x = torch.full((1, 2), 1e308, dtype=torch.float64)
    with pytest.raises(solvers.NonFiniteError, match="outputs were finite, so the solver's update diverged"):
        solvers.get("euler").sample(lambda x, s: -x, x, t)


def test_dyweight_grid_size_and_afs_mismatch():
    s = solvers.get("dyweight", num_points=5, afs=True)
    x = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs a grid of 5 points, got 6"):
        s.sample(gauss_denoiser(), x, schedules.polynomial(6, 0.002, 80.0), afs=True)
    with pytest.raises(ValueError, match="built for afs=True"):
        s.sample(gauss_denoiser(), x, schedules.polynomial(5, 0.002, 80.0), afs=False)
    released = baselines.released_solver("ms_coco", 8)           # no AFS, 5 points
    with pytest.raises(ValueError, match="built for afs=False"):
        released.sample(gauss_denoiser(), x, schedules.polynomial(5, 0.002, 80.0), afs=True)


def test_denoiser_shape_mismatch_and_bad_x():
    t = schedules.polynomial(4, 0.002, 80.0)
    with pytest.raises(ValueError, match=r"returned shape \(2, 2\) for input \(2, 3\)"):
        solvers.get("euler").sample(lambda x, s: x[:, :2], torch.ones(2, 3), t)
    with pytest.raises(ValueError, match="x_T must be a tensor"):
        solvers.get("euler").sample(gauss_denoiser(), [1.0, 2.0], t)
    with pytest.raises(ValueError, match="ends above 0"):
        solvers.get("euler").sample(gauss_denoiser(), torch.ones(2, 3), torch.tensor([80.0, 1.0, 0.0]),
                                    denoise_to_zero=True)


# ---- shape / dtype / device -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3,), (2, 5), (2, 3, 4, 4), (1, 1, 1)], ids=str)
@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_output_shape_dtype_device(name, opts, shape):
    g = torch.Generator().manual_seed(1)
    x64 = 80.0 * torch.randn(*shape, generator=g, dtype=torch.float64)
    t = schedules.polynomial(6, 0.002, 80.0)
    outs = {}
    for dtype in (torch.float32, torch.float64):
        for afs in (False, True):
            x = x64.to(dtype)
            out = build(name, opts, 6, afs).sample(gauss_denoiser(), x, t, afs=afs)
            assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
            outs[dtype, afs] = out.detach()
    for afs in (False, True):
        a, b = outs[torch.float32, afs].double(), outs[torch.float64, afs]
        assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_the_denoiser_sees_grid_points_in_x_dtype(name, opts, dtype):
    """Every call's sigma is a grid point (DyWeight's shifted, scaled times are off the grid), in x's dtype, the same
    value for every sample, and a later call never modifies an earlier call's sigma."""
    t = schedules.polynomial(6, 0.002, 80.0)
    seen, D = [], gauss_denoiser()

    def recording(x, sigma):
        seen.append((sigma, sigma.clone()))
        return D(x, sigma)

    build(name, opts, 6).sample(recording, 80.0 * torch.ones(3, 2, dtype=dtype), t)
    grid = t.to(dtype)
    for s, copy in seen:
        assert s.dtype == dtype and (s == s[0]).all() and (name == "dyweight" or bool((grid == s[0]).any()))
        assert torch.equal(s, copy)                    # still the value that call received


def test_grid_as_list_or_float32_tensor_gives_the_same_result():
    x = 80.0 * torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = schedules.polynomial(6, 0.002, 80.0)
    s = solvers.get("unipc")
    ref = s.sample(gauss_denoiser(), x, t)
    assert torch.equal(s.sample(gauss_denoiser(), x, t.tolist()), ref)
    assert torch.allclose(s.sample(gauss_denoiser(), x, t.float()), ref, rtol=1e-6)


# ---- DyWeight is differentiable ----------------------------------------------------------------------------
@pytest.mark.parametrize("afs", [False, True], ids=["noafs", "afs"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_dyweight_gradients_reach_weights_and_time_scale(afs, dtype):
    n = 6
    s = solvers.get("dyweight", num_points=n, afs=afs)
    assert isinstance(s.weights, torch.nn.Parameter) and isinstance(s.time_scale, torch.nn.Parameter)
    assert {name for name, _ in s.named_parameters()} == {"weights", "time_scale"}
    x = (80.0 * torch.randn(2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).to(dtype)
    out = s.sample(gauss_denoiser(), x, schedules.polynomial(n, 0.002, 80.0), afs=afs)
    (out ** 2).sum().backward()
    gw, gs = s.weights.grad, s.time_scale.grad
    assert gw is not None and gs is not None and torch.isfinite(gw).all() and torch.isfinite(gs).all()
    K = s.history
    for i in range(n - 1):
        p = min(i + 1, K)
        assert (gw[i, K - p:] != 0).all(), f"row {i} gets no gradient"
        assert (gw[i, :K - p] == 0).all(), f"row {i}'s unused (left-padding) entries must get none"
    assert gs.shape == (n - 1 - int(afs),) and (gs != 0).all()


@pytest.mark.parametrize("afs", [False, True], ids=["noafs", "afs"])
def test_dyweight_inference_and_differentiable_paths_agree(afs):
    """Under no_grad the scalars run as Python floats (fused updates); with autograd as Parameters: same samples."""
    n = 7
    rng = torch.Generator().manual_seed(5)
    rows = [(torch.randn(min(i + 1, 3), generator=rng, dtype=torch.float64) * 0.2
             + torch.tensor(solvers.get("dyweight", num_points=n, afs=afs).rows()[i])).tolist() for i in range(n - 1)]
    scale = (1 + 0.1 * torch.randn(n - 1 - int(afs), generator=rng, dtype=torch.float64)).tolist()
    s = solvers.get("dyweight", weights=rows, time_scale=scale, afs=afs)
    x = 80.0 * torch.randn(3, 4, generator=rng, dtype=torch.float64)
    t = schedules.polynomial(n, 0.002, 80.0)
    with torch.no_grad():
        fast = s.sample(gauss_denoiser(), x, t, afs=afs)
    slow = s.sample(gauss_denoiser(), x, t, afs=afs)
    assert slow.requires_grad and not fast.requires_grad
    assert torch.allclose(fast, slow.detach(), rtol=1e-12, atol=1e-12)


def test_dyweight_gradient_matches_finite_difference():
    """d output / d time_scale[1] by autograd equals a central difference (float64)."""
    n = 5
    x = 80.0 * torch.randn(2, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = schedules.polynomial(n, 0.002, 80.0)
    D = gauss_denoiser()
    s = solvers.get("dyweight", num_points=n, afs=True)
    s.sample(D, x, t, afs=True).sum().backward()
    eps = 1e-6

    def f(delta):
        with torch.no_grad():
            s2 = solvers.get("dyweight", weights=s.rows(), time_scale=(s.time_scale + delta).tolist(), afs=True)
            return float(s2.sample(D, x, t, afs=True).sum())

    e1 = torch.zeros(n - 2, dtype=torch.float64)
    e1[1] = eps
    fd = (f(e1) - f(-e1)) / (2 * eps)
    assert float(s.time_scale.grad[1]) == pytest.approx(fd, rel=1e-5)
    assert math.isfinite(fd) and fd != 0
