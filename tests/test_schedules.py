"""Time grids against the conventions' formulas (written out here with math), the discrete VP mapping against the
latent models' documented sigma ranges, and the budget -> grid function."""
from __future__ import annotations

import math

import pytest
import torch

import baselines
import solvers
from solvers import schedules

SMIN, SMAX = 0.002, 80.0


@pytest.mark.parametrize("n", [2, 3, 6, 11])
def test_polynomial_is_edm_rho7(n):
    a, b = SMAX ** (1 / 7), SMIN ** (1 / 7)
    want = [(a + i / (n - 1) * (b - a)) ** 7 for i in range(n)]
    got = schedules.polynomial(n, SMIN, SMAX)
    assert got.dtype == torch.float64 and got.shape == (n,)
    assert got.tolist() == pytest.approx(want, rel=1e-14)
    assert got[0] == pytest.approx(SMAX, rel=1e-14) and got[-1] == pytest.approx(SMIN, rel=1e-12)
    assert schedules.polynomial(n, SMIN, SMAX, rho=3.0).tolist() == pytest.approx(
        [(SMAX ** (1 / 3) + i / (n - 1) * (SMIN ** (1 / 3) - SMAX ** (1 / 3))) ** 3 for i in range(n)], rel=1e-14)


@pytest.mark.parametrize("n", [2, 5, 9])
def test_logsnr_is_log_uniform(n):
    got = schedules.logsnr(n, SMIN, SMAX)
    lam = [-math.log(SMAX) + i / (n - 1) * (math.log(SMAX) - math.log(SMIN)) for i in range(n)]
    assert got.tolist() == pytest.approx([math.exp(-v) for v in lam], rel=1e-13)
    ratios = (got[1:] / got[:-1]).tolist()
    assert max(ratios) - min(ratios) < 1e-12


@pytest.mark.parametrize("n", [2, 5, 9])
def test_time_uniform_is_the_vp_schedule(n):
    eps = 1e-3
    beta_d = 2 * (math.log(SMIN ** 2 + 1) / eps - math.log(SMAX ** 2 + 1)) / (eps - 1)
    beta_min = math.log(SMAX ** 2 + 1) - beta_d / 2
    taus = [1 + i / (n - 1) * (eps - 1) for i in range(n)]
    want = [math.sqrt(math.exp(beta_d * tau ** 2 / 2 + beta_min * tau) - 1) for tau in taus]
    got = schedules.time_uniform(n, SMIN, SMAX)
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert got[0] == pytest.approx(SMAX, rel=1e-12) and got[-1] == pytest.approx(SMIN, rel=1e-6)


def scaled_linear_sigma_fn(beta_start, beta_end, T=1000):
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    return schedules.vp_discrete_sigma_fn(torch.cumprod(1 - betas, 0))


@pytest.mark.parametrize("betas,dataset,nfe", [((0.00085, 0.012), "ms_coco", 16),
                                               ((0.0015, 0.0195), "lsun_bedroom_ldm", 5)])
def test_discrete_grid_spans_the_latent_models_range(betas, dataset, nfe):
    """SD v1.5 [0.029168, 14.6146], LSUN-Bedroom LDM [0.03876, 83.822] (conventions), equal to the released
    checkpoints' recorded training range up to the lineage's float32 cumprod (rel 1.3e-5 at SD's low end)."""
    fn = scaled_linear_sigma_fn(*betas)
    grid = schedules.get("discrete", 7, sigma_fn=fn)
    ck = baselines.released_coefficients(dataset, nfe)
    assert ck["schedule"] == "discrete"
    assert float(grid[0]) == pytest.approx(ck["sigma_max_trained"], rel=3e-5)
    assert float(grid[-1]) == pytest.approx(ck["sigma_min_trained"], rel=3e-5)
    assert (grid[1:] < grid[:-1]).all()
    # uniform in the model's own time: tau_i = 1 + i/(N-1) (1e-3 - 1); index tau T - 1, log-sigma interpolated
    ac = torch.cumprod(1 - torch.linspace(betas[0] ** 0.5, betas[1] ** 0.5, 1000, dtype=torch.float64) ** 2, 0)
    log_sigmas = (0.5 * torch.log((1 - ac) / ac)).tolist()
    for i, s in enumerate(grid.tolist()):
        idx = (1 + i / 6 * (1e-3 - 1)) * 1000 - 1
        lo = min(int(math.floor(idx)), 998)
        w = idx - lo
        assert s == pytest.approx(math.exp((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]), rel=1e-12)


def test_flow_shift():
    """t uniform in [t_max, t_min], t' = shift t / (1 + (shift - 1) t), sigma = t' / (1 - t')."""
    got = schedules.flow_shift(6, shift=3.0, t_max=0.9, t_min=0.1)
    ts = [0.9 - i * 0.8 / 5 for i in range(6)]
    want = [(3 * t / (1 + 2 * t)) / (1 - 3 * t / (1 + 2 * t)) for t in ts]
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    capped = schedules.flow_shift(6, shift=3.0, sigma_min=0.002, sigma_max=80.0)
    assert float(capped[0]) == 80.0 and float(capped[-1]) == 0.002 and (capped[1:] < capped[:-1]).all()


def test_every_kind_gives_a_grid_the_solvers_accept():
    fn = scaled_linear_sigma_fn(0.00085, 0.012)
    x = torch.ones(2, 3, dtype=torch.float64)
    for kind in schedules.KINDS:
        opts = {"sigma_fn": fn} if kind == "discrete" else {}
        grid = schedules.get(kind, 6, SMIN, SMAX, **opts)
        solvers.get("euler").sample(lambda x, s: 0 * x, x, grid)      # validated by check_grid


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"unknown schedule 'karras'; accepted: polynomial, logsnr, time_uniform"):
        schedules.get("karras", 5, SMIN, SMAX)
    with pytest.raises(ValueError, match="needs sigma_fn"):
        schedules.get("discrete", 5)
    with pytest.raises(ValueError, match="at least 2 points"):
        schedules.polynomial(1, SMIN, SMAX)
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        schedules.logsnr(5, 80.0, 0.002)
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        schedules.time_uniform(5, 0.0, 80.0)


def test_grid_for_is_the_one_budget_to_grid_map():
    for name in ("euler", "ipndm", "dpm_solver_pp", "unipc", "dyweight"):
        assert len(schedules.grid_for(name, 5)) == 6 and len(schedules.grid_for(name, 5, afs=True)) == 7
    assert len(schedules.grid_for("heun", 6)) == 4 and len(schedules.grid_for("heun", 5, afs=True)) == 4
    assert len(schedules.grid_for("ipndm", 8, evals_per_call=2)) == 5                    # CFG: 4 calls
    g = schedules.grid_for(solvers.get("unipc", order=2), 7, kind="logsnr", sigma_min=0.03, sigma_max=14.6)
    assert g.tolist() == pytest.approx(schedules.logsnr(8, 0.03, 14.6).tolist(), rel=1e-15)
    assert schedules.grid_for("ipndm", 4, rho=3.0).tolist() == schedules.polynomial(5, SMIN, SMAX, rho=3.0).tolist()
    with pytest.raises(ValueError, match="unknown solver 'foo'"):
        schedules.grid_for("foo", 4)
