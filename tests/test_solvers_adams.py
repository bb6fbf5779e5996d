"""The Adams-Bashforth family: iPNDM-v reduces to classical AB on uniform steps (paper Appendix A), is exact for
polynomial derivatives of degree < order on any grid, and DyWeight at its AB initialisation is iPNDM of order 3."""
from __future__ import annotations

import pytest
import torch

import solvers
from bench.models.gmm import gmm64
from solvers import schedules

CLASSICAL_AB = {1: [1.0], 2: [-1 / 2, 3 / 2], 3: [5 / 12, -16 / 12, 23 / 12],
                4: [-9 / 24, 37 / 24, -59 / 24, 55 / 24]}


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_v_weights_are_classical_ab_on_uniform_steps(order):
    v = solvers.get("ipndm_v")
    for t in (torch.linspace(80.0, 0.5, 9, dtype=torch.float64).tolist(), [4.0, 3.0, 2.0, 1.0, 0.0]):
        i = order - 1
        assert list(v.coefficients(t, i, order)) == pytest.approx(CLASSICAL_AB[order], rel=1e-12, abs=1e-12)


def test_ipndm_v_second_order_weights_on_a_nonuniform_grid():
    """Appendix A, p = 2: beta = (-h / (2 h_1), 1 + h / (2 h_1)), h = t_{i+1} - t_i, h_1 = t_i - t_{i-1}."""
    t = [10.0, 6.0, 5.0]
    h, h1 = t[2] - t[1], t[1] - t[0]
    got = solvers.get("ipndm_v").coefficients(t, 1, 2)
    assert list(got) == pytest.approx([-h / (2 * h1), 1 + h / (2 * h1)], rel=1e-13)


@pytest.fixture(scope="module")
def problem():
    model = gmm64()
    x_T = 80.0 * torch.randn(4, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return model, x_T


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("afs", [False, True], ids=["noafs", "afs"])
def test_ipndm_v_equals_ipndm_on_uniform_grid_only(problem, afs):
    model, x_T = problem
    uniform = torch.linspace(80.0, 0.002, 9, dtype=torch.float64)
    a = solvers.get("ipndm").sample(model.denoise, x_T, uniform, afs=afs)
    b = solvers.get("ipndm_v").sample(model.denoise, x_T, uniform, afs=afs)
    assert rel(b, a) < 1e-12
    edm = schedules.polynomial(9, 0.002, 80.0)
    assert rel(solvers.get("ipndm_v").sample(model.denoise, x_T, edm, afs=afs),
               solvers.get("ipndm").sample(model.denoise, x_T, edm, afs=afs)) > 1e-3


def polynomial_problem(degree):
    """D(x, s) = x - s q(s): then d(x, s) = q(s) exactly, x(s) = x_T + int_{t_0}^{s} q, and a step's error is
    pure quadrature error (nothing propagates)."""
    coef = [0.7, -1.3, 2.1, -0.9, 0.4][:degree + 1]

    def q(s):
        u = s / 80.0
        return sum(c * u ** k for k, c in enumerate(coef))

    def Q(s):                                    # antiderivative in s
        u = s / 80.0
        return 80.0 * sum(c * u ** (k + 1) / (k + 1) for k, c in enumerate(coef))

    def D(x, s):
        return x - s.reshape(-1, 1) * q(s).reshape(-1, 1)

    return D, Q


@pytest.mark.parametrize("max_order", [2, 3, 4])
def test_ipndm_v_steps_of_order_p_are_exact_for_degree_below_p(max_order):
    """After the warm-up (steps 0..p-2, orders 1..p-1), every step integrates a degree p-1 derivative exactly on
    the non-uniform EDM grid: the final error equals the error accumulated by the warm-up steps alone."""
    D, Q = polynomial_problem(max_order - 1)
    t = schedules.polynomial(10, 0.002, 80.0)
    x_T = torch.zeros(1, 1, dtype=torch.float64)
    exact = lambda s: Q(s) - Q(float(t[0]))  # noqa: E731
    v = solvers.get("ipndm_v", max_order=max_order)
    err_full = float(v.sample(D, x_T, t)) - exact(float(t[-1]))
    warm = t[:max_order]                                            # points 0..p-1: the p-1 warm-up steps
    err_warm = float(v.sample(D, x_T, warm)) - exact(float(warm[-1]))
    assert abs(err_warm) > 1e-3                                     # the warm-up really is inexact
    assert abs(err_full - err_warm) < 1e-11 * 80
    # the lineage's iPNDM (fixed uniform-step coefficients) is not exact on this non-uniform grid ...
    fixed = solvers.get("ipndm", max_order=max_order)
    assert abs((float(fixed.sample(D, x_T, t)) - exact(float(t[-1]))) - err_warm) > 1e-3
    # ... but is on a uniform one
    u = torch.linspace(80.0, 0.002, 10, dtype=torch.float64)
    err_u = float(fixed.sample(D, x_T, u)) - exact(float(u[-1]))
    err_uw = float(fixed.sample(D, x_T, u[:max_order])) - exact(float(u[max_order - 1]))
    assert abs(err_u - err_uw) < 1e-11 * 80


@pytest.mark.parametrize("afs", [False, True], ids=["noafs", "afs"])
@pytest.mark.parametrize("n", [3, 4, 6, 9])
def test_dyweight_at_ab_init_is_ipndm_order_3(problem, n, afs):
    model, x_T = problem
    t = schedules.polynomial(n, 0.002, 80.0)
    ipndm3 = solvers.get("ipndm", max_order=3).sample(model.denoise, x_T, t, afs=afs)
    exact = solvers.get("dyweight", num_points=n, afs=afs, divisor_eps=0.0)
    assert exact.rows() == [CLASSICAL_AB[min(i + 1, 3)] for i in range(n - 1)]
    assert exact.time_scale.detach().tolist() == [1.0] * (n - 1 - int(afs))
    # equal up to float rounding (the AB rows sum to 1 only to ~1e-16, so t^ drifts by that much)
    assert rel(exact.sample(model.denoise, x_T, t, afs=afs).detach(), ipndm3) < 1e-12
    lineage = solvers.get("dyweight", num_points=n, afs=afs)        # the lineage's 1e-8 in the divisor
    r = rel(lineage.sample(model.denoise, x_T, t, afs=afs).detach(), ipndm3)
    assert r < 1e-7


def test_dyweight_other_inits_and_history():
    """Euler init = Euler; history 1 with AB init = Euler; uniform init rows average the history."""
    model = gmm64()
    x_T = 80.0 * torch.randn(2, 64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = schedules.polynomial(6, 0.002, 80.0)
    euler = solvers.get("euler").sample(model.denoise, x_T, t)
    for opts in ({"init": "euler"}, {"history": 1}):
        s = solvers.get("dyweight", num_points=6, divisor_eps=0.0, **opts)
        assert rel(s.sample(model.denoise, x_T, t).detach(), euler) < 1e-12
    assert solvers.get("dyweight", num_points=5, init="uniform").rows() == [[1.0], [0.5, 0.5], [1 / 3] * 3, [1 / 3] * 3]
