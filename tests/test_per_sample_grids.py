"""Per-sample (B, N) grids: every handcrafted solver and DyWeight integrates each row exactly as on its own."""
from __future__ import annotations

import pytest
import torch

import solvers
from solvers import schedules
from solvers.errors import InputError
from solvers.nfe import CountingDenoiser

CONFIGS = [("euler", {}), ("heun", {}), ("ipndm", {}), ("ipndm", {"max_order": 2}), ("ipndm_v", {}),
           ("dpm_solver_pp", {"order": 2}), ("dpm_solver_pp", {"order": 3}), ("unipc", {"order": 1}),
           ("unipc", {"order": 2}), ("unipc", {"order": 3}), ("unipc", {"order": 3, "variant": "bh1"}),
           ("dyweight", {})]
IDS = [f"{n}{''.join(f'-{v}' for v in o.values())}" for n, o in CONFIGS]


def mixture_denoiser(x, sigma):
    """Exact denoiser of an equal mixture of N(+-1, 0.05 I) in any dimension (nonlinear in x and sigma)."""
    s2 = sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2
    v = 0.05 + s2
    logits = torch.stack([-((x - m) ** 2).flatten(1).sum(1) for m in (1.0, -1.0)], 1) / (2 * v.reshape(-1, 1))
    w = torch.softmax(logits, 1).reshape(-1, 2, *([1] * (x.dim() - 1)))
    means = [(0.05 * x + s2 * m) / v for m in (1.0, -1.0)]
    return w[:, 0] * means[0] + w[:, 1] * means[1]


def build(name, opts, n, afs=False):
    if name == "dyweight":
        # distilled-looking weights, not the Adams-Bashforth initialisation, and time scales != 1
        base = solvers.get("dyweight", num_points=n, afs=afs)
        rows = [[w * (1 + 0.05 * (i + 1)) for w in r] for i, r in enumerate(base.rows())]
        scale = [1 + 0.02 * k for k in range(n - 1 - int(afs))]
        return solvers.get("dyweight", weights=rows, time_scale=scale, afs=afs)
    return solvers.get(name, **opts)


def rows_grid(B, n, dtype=torch.float64, end=0.002):
    """B distinct descending grids of n points from 80 to `end`: EDM rho grids with rho spread over the rows."""
    return torch.stack([torch.as_tensor(schedules.polynomial(n, end, 80.0, rho=3.0 + 5.0 * b / max(1, B - 1)),
                                        dtype=dtype) for b in range(B)])


@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_per_row_results_equal_separate_runs(name, opts, afs):
    B, n = 5, 6
    g = torch.Generator().manual_seed(0)
    x_T = 80.0 * torch.randn(B, 3, 2, generator=g, dtype=torch.float64)
    grid = rows_grid(B, n)
    solver = build(name, opts, n, afs)
    out = solver.sample(mixture_denoiser, x_T, grid, afs=afs)
    for b in range(B):
        alone = solver.sample(mixture_denoiser, x_T[b:b + 1], grid[b], afs=afs)
        torch.testing.assert_close(out[b:b + 1], alone, rtol=1e-12, atol=1e-12)
    # float32 samples stay float32 and agree to float32 rounding
    out32 = solver.sample(mixture_denoiser, x_T.float(), grid, afs=afs)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_equal_rows_give_exactly_the_1d_result(name, opts):
    B, n = 4, 5
    x_T = 80.0 * torch.randn(B, 6, generator=torch.Generator().manual_seed(1))
    sigmas = torch.as_tensor(schedules.polynomial(n, 0.002, 80.0), dtype=torch.float64)
    solver = build(name, opts, n)
    one = solver.sample(mixture_denoiser, x_T, sigmas)
    assert torch.equal(solver.sample(mixture_denoiser, x_T, sigmas.expand(B, n)), one)


@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_equal_rows_through_the_per_sample_arithmetic_match_the_1d_result(name, opts):
    """The vectorised path itself (forced by a grid that asks for a gradient) on equal rows: the 1-D result to
    float64 rounding (the scalar kernels and the per-sample ones round differently)."""
    if name == "ipndm_v":
        pytest.skip("ipndm_v refuses a per-sample grid that carries a gradient")
    B, n = 4, 5
    x_T = 80.0 * torch.randn(B, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = torch.as_tensor(schedules.polynomial(n, 0.002, 80.0), dtype=torch.float64)
    solver = build(name, opts, n)
    one = solver.sample(mixture_denoiser, x_T, sigmas)
    rows = sigmas.expand(B, n).clone().requires_grad_(True)
    torch.testing.assert_close(solver.sample(mixture_denoiser, x_T, rows).detach(), one, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name,opts", CONFIGS, ids=IDS)
def test_per_sample_grids_spend_the_same_calls_and_reach_every_sample_at_its_own_times(name, opts):
    B, n = 3, 6
    x_T = 80.0 * torch.randn(B, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = rows_grid(B, n)
    seen = []

    def den(x, sigma):
        seen.append(sigma.clone())
        return mixture_denoiser(x, sigma)
    counting = CountingDenoiser(den)
    solver = build(name, opts, n)
    solver.sample(counting, x_T, grid)
    assert counting.calls == solver.calls(n)
    for s in seen:                                   # each call's sigma is, per sample, a point of its own row
        assert s.shape == (B,)                       # (DyWeight's: shifted and scaled from its own row)
        assert name == "dyweight" or all(bool((grid[b] == s[b]).any()) for b in range(B))
    assert any(len(set(s.tolist())) > 1 for s in seen)


@pytest.mark.parametrize("name,opts", [c for c in CONFIGS if c[0] in ("euler", "heun", "dpm_solver_pp", "unipc")],
                         ids=[i for c, i in zip(CONFIGS, IDS) if c[0] in ("euler", "heun", "dpm_solver_pp", "unipc")])
def test_per_sample_grids_ending_at_zero(name, opts):
    B, n = 3, 5
    x_T = 80.0 * torch.randn(B, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grid = torch.cat([rows_grid(B, n - 1), torch.zeros(B, 1, dtype=torch.float64)], 1)
    solver = build(name, opts, n)
    counting = CountingDenoiser(mixture_denoiser)
    out = solver.sample(counting, x_T, grid)
    assert counting.calls == solver.calls(n, ends_at_zero=True)
    for b in range(B):
        torch.testing.assert_close(out[b:b + 1], solver.sample(mixture_denoiser, x_T[b:b + 1], grid[b]),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,opts", [c for c in CONFIGS if c[0] != "ipndm_v"],
                         ids=[i for c, i in zip(CONFIGS, IDS) if c[0] != "ipndm_v"])
def test_gradient_reaches_every_row_of_the_grid(name, opts):
    B, n = 3, 5
    x_T = 80.0 * torch.randn(B, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grid = rows_grid(B, n).requires_grad_(True)
    solver = build(name, opts, n)
    solver.sample(mixture_denoiser, x_T, grid).pow(2).sum().backward()
    assert torch.isfinite(grid.grad).all()
    assert bool((grid.grad[:, 1:-1].abs() > 0).all())       # every interior point of every row moves the result
    # sample b's result depends on row b only
    grid.grad = None
    solver.sample(mixture_denoiser, x_T, grid)[0].pow(2).sum().backward()
    assert bool((grid.grad[1:] == 0).all())


def test_bad_per_sample_grids_are_one_line_errors():
    solver = solvers.get("ipndm")
    x_T = torch.randn(3, 2)
    good = rows_grid(3, 4)
    with pytest.raises(InputError, match="one row per sample"):
        solver.sample(mixture_denoiser, x_T, good[:2])
    rising = good.clone()
    rising[1, 2] = rising[1, 1] + 1
    with pytest.raises(InputError, match="row 1 is not"):
        solver.sample(mixture_denoiser, x_T, rising)
    mixed = good.clone()
    mixed[0, -1] = 0.0
    with pytest.raises(InputError, match="all end at 0 or all end above 0"):
        solver.sample(mixture_denoiser, x_T, mixed)
    nan = good.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(InputError, match="finite"):
        solver.sample(mixture_denoiser, x_T, nan)
    with pytest.raises(InputError, match="1-D"):
        solver.sample(mixture_denoiser, x_T, good[None])


@pytest.mark.parametrize("name", ["ld3", "gits", "epd", "amed"])
def test_learned_solvers_without_per_sample_grids_say_so(name):
    solver = solvers.get(name, num_points=4)
    with pytest.raises(InputError, match="does not support per-sample"):
        solver.sample(mixture_denoiser, torch.randn(3, 2), rows_grid(3, 4))


def test_ipndm_v_refuses_a_grid_that_carries_a_gradient():
    with pytest.raises(InputError, match="not differentiable"):
        solvers.get("ipndm_v").sample(mixture_denoiser, torch.randn(3, 2, dtype=torch.float64),
                                      rows_grid(3, 5).requires_grad_(True))
