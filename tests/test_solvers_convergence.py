"""Convergence against the reference PF-ODE solution (GaussianMixture.reference_solution, DOP853 at rtol 1e-10).

What the conventions imply for the GLOBAL order (measured honestly, not the methods' nominal bulk order):
- Euler and DPM-Solver++(1) (DDIM): 1.
- Heun: 2.
- Every multistep method (iPNDM, iPNDM-v, DPM-Solver++ 2M/3M, UniPC 1-3): 2. Their warm start takes a first-order
  step 0 (local error O(h^2), which alone makes the global error O(h^2)), and DPM-Solver++ / UniPC end with a
  first-order step (lower order final; UniPC's last step has no corrector). UniPC-1 is 2 thanks to its corrector.
  The bulk steps are of higher order (iPNDM-v's exactness is shown in test_solvers_adams.py), so at moderate N the
  measured slopes can exceed 2; asymptotically they settle at 2.
"""
from __future__ import annotations

import math

import pytest
import torch

import solvers
from bench.models.gmm import gmm64
from solvers import schedules

# (name, options, global order implied by the conventions)
CONFIGS = [("euler", {}, 1), ("dpm_solver_pp", {"order": 1}, 1), ("heun", {}, 2), ("ipndm", {}, 2),
           ("ipndm_v", {}, 2), ("dpm_solver_pp", {"order": 2}, 2), ("dpm_solver_pp", {"order": 3}, 2),
           ("unipc", {"order": 1}, 2), ("unipc", {"order": 2}, 2), ("unipc", {"order": 3}, 2),
           ("unipc", {"order": 3, "variant": "bh1"}, 2)]
IDS = [f"{n}{''.join(f'-{v}' for v in o.values())}" for n, o, _ in CONFIGS]
NS = (33, 65, 129)


@pytest.fixture(scope="module")
def model():
    return gmm64()


@pytest.fixture(scope="module")
def mid_range(model):
    """sigma 5 -> 0.1 from noisy data: a range where the asymptotic regime is reached at N ~ 100."""
    g = torch.Generator().manual_seed(0)
    x = model.sample_data(4, g) + 5.0 * torch.randn(4, 64, generator=g, dtype=torch.float64)
    return x, model.reference_solution(x, 5.0, 0.1)


@pytest.fixture(scope="module")
def full_range(model):
    x = 80.0 * torch.randn(4, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x, model.reference_solution(x, 80.0, 0.002)


def err(model, solver, x, ref, grid):
    return float((solver.sample(model.denoise, x, grid) - ref).norm() / ref.norm())


def test_reference_solution_is_accurate(model):
    """The yardstick itself: on a single Gaussian the PF-ODE has the closed form
    x(s) = mu + U diag(sqrt((lam + s^2) / (lam + s0^2))) U^T (x0 - mu)."""
    from bench.models.gmm import GaussianMixture
    cov = torch.tensor([[0.5, 0.1], [0.1, 0.2]], dtype=torch.float64)
    single = GaussianMixture("g1", [1.0], [[0.3, -0.2]], cov[None])
    x0 = torch.tensor([[40.0, -30.0], [-5.0, 60.0]], dtype=torch.float64)
    lam, U = torch.linalg.eigh(cov)
    mu = torch.tensor([0.3, -0.2], dtype=torch.float64)
    exact = mu + ((x0 - mu) @ U) * torch.sqrt((lam + 0.002 ** 2) / (lam + 80.0 ** 2)) @ U.T
    got = single.reference_solution(x0, 80.0, 0.002)
    assert float((got - exact).abs().max() / exact.abs().max()) < 1e-8


@pytest.mark.parametrize("name,opts,order", CONFIGS, ids=IDS)
def test_global_order(model, mid_range, name, opts, order):
    x, ref = mid_range
    solver = solvers.get(name, **opts)
    errs = [err(model, solver, x, ref, schedules.polynomial(n, 0.1, 5.0)) for n in NS]
    slopes = [math.log(errs[i] / errs[i + 1]) / math.log((NS[i + 1] - 1) / (NS[i] - 1)) for i in range(2)]
    if order == 1:
        assert all(0.9 < s < 1.1 for s in slopes), (errs, slopes)
    elif name == "heun":                         # no warm start: exactly second order
        assert all(1.9 < s < 2.1 for s in slopes), (errs, slopes)
    else:                                        # at least the implied 2, settling towards it from above
        assert all(s > 1.85 for s in slopes) and slopes[-1] < 2.6, (errs, slopes)


def test_at_large_n_every_solver_agrees_with_the_reference(model, full_range):
    """The full EDM range 80 -> 0.002, 257 points: second-order methods within 1e-3, first-order within 2e-2
    (measured: Euler 1.0e-2, UniPC-1 5.1e-4, the others 1.4e-4 or less)."""
    x, ref = full_range
    grid = schedules.polynomial(257, 0.002, 80.0)
    for name, opts, order in CONFIGS:
        e = err(model, solvers.get(name, **opts), x, ref, grid)
        assert e < (2e-2 if order == 1 else 1e-3), (name, opts, e)


def test_ddim_is_euler_in_the_edm_parameterisation(model, full_range):
    """DPM-Solver++(1): (t'/t) x + (1 - t'/t) D  ==  Euler: x + (t' - t)(x - D)/t, identically."""
    x, _ = full_range
    grid = schedules.polynomial(8, 0.002, 80.0)
    a = solvers.get("dpm_solver_pp", order=1).sample(model.denoise, x, grid)
    b = solvers.get("euler").sample(model.denoise, x, grid)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-12
