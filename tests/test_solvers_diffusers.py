"""Agreement with diffusers (an independent implementation users already trust) where the conventions coincide.

How the two are made to coincide (diffusers 0.42):
- DPM-Solver++ 2M/3M <-> EDMDPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint",
  lower_order_final=True, euler_at_final=False, final_sigmas_type="sigma_min"). Its `sigmas` (N-1 step sigmas plus
  the final one) are replaced by our float64 grid, whose last point plays the final sigma. It works on the EDM
  sample itself (alpha = 1). It wants the raw network output F with D = c_skip x + c_out F (sigma_data 0.5,
  epsilon parameterisation), so we hand it F = (D - c_skip x) / c_out.
- UniPC bh1/bh2 <-> UniPCMultistepScheduler(predict_x0=True, prediction_type="sample", lower_order_final=True,
  disable_corrector=[]), whose `sigmas` are VE sigmas converted internally to the VP pair alpha = 1/sqrt(1+s^2),
  sigma_VP = s alpha. We replace them by our grid, run it on x_VP = alpha x and divide by alpha at the end; the
  data-prediction updates are invariant under that scaling (lambda = log(alpha / sigma_VP) = -log s either way).
- Dynamic thresholding: diffusers clamps s to [1, sample_max_value]; sample_max_value = inf gives the
  lineage's s = max(quantile_0.995, 1). diffusers needs a (B, C, ...) sample for it, hence x of shape (B, 1, 64).

What cannot coincide, and is therefore not compared:
- diffusers lowers the order at the end only for fewer than 15 steps (lower_order_final and len(timesteps) < 15);
  the lineage always does, so grids have at most 15 points here.
- On 3-point grids the lineage's 3M runs orders 1, 2 (s < max_order); diffusers runs 1, 1 (lower_order_final).
  UniPC on grids of N <= max_order points keeps the corrector on the last step in the lineage (N calls); diffusers
  has no model call after the last step, so no corrector. Both solvers agree from N = 4 on.
- AFS and grids ending at 0 have no diffusers counterpart (final_sigmas_type="zero" makes diffusers take an Euler
  step to 0 with its own rule); those are pinned by test_solvers_golden.py instead.
"""
from __future__ import annotations

import math

import pytest
import torch

import solvers
from bench.models.gmm import gmm64

diffusers = pytest.importorskip("diffusers")
# diffusers' own NumPy-2 deprecation noise when it builds its default sigma table
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIGMA_DATA = 0.5


@pytest.fixture(scope="module")
def problem():
    model = gmm64()
    x_T = 80.0 * torch.randn(3, 1, 64, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return model, x_T


def grid(n):
    return solvers.schedules.polynomial(n, 0.002, 80.0)


def diffusers_dpmpp(model, x_T, t, order, thresholding):
    sch = diffusers.EDMDPMSolverMultistepScheduler(
        sigma_min=float(t[-1]), sigma_max=float(t[0]), sigma_data=SIGMA_DATA, solver_order=order,
        algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True, euler_at_final=False,
        final_sigmas_type="sigma_min", prediction_type="epsilon", thresholding=thresholding,
        dynamic_thresholding_ratio=0.995, sample_max_value=math.inf)
    sch.set_timesteps(len(t) - 1)
    sch.sigmas = t.clone()
    sch.timesteps = sch.precondition_noise(t[:-1])
    x = x_T.clone()
    for i, ts in enumerate(sch.timesteps):
        s = t[i]
        D = model.denoise(x, s.expand(x.shape[0]))
        c_skip = SIGMA_DATA ** 2 / (s ** 2 + SIGMA_DATA ** 2)
        c_out = s * SIGMA_DATA / (s ** 2 + SIGMA_DATA ** 2).sqrt()
        x = sch.step((D - c_skip * x) / c_out, ts, x).prev_sample
    return x


def diffusers_unipc(model, x_T, t, order, variant, thresholding):
    sch = diffusers.UniPCMultistepScheduler(
        solver_order=order, solver_type=variant, predict_x0=True, prediction_type="sample", lower_order_final=True,
        disable_corrector=[], final_sigmas_type="sigma_min", thresholding=thresholding,
        dynamic_thresholding_ratio=0.995, sample_max_value=math.inf)
    sch.set_timesteps(len(t) - 1)
    assert len(sch.timesteps) == len(t) - 1
    sch.sigmas = t.clone()
    alpha = 1 / (1 + t ** 2).sqrt()
    x = x_T * alpha[0]
    for i, ts in enumerate(sch.timesteps):
        D = model.denoise(x / alpha[i], t[i].expand(x.shape[0]))
        x = sch.step(D, ts, x).prev_sample
    return x / alpha[-1]


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("thresholding", [False, True], ids=["plain", "thresholded"])
@pytest.mark.parametrize("n", [4, 5, 7, 11, 15])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_pp_matches_diffusers(problem, order, n, thresholding):
    model, x_T = problem
    t = grid(n)
    ours = solvers.get("dpm_solver_pp", order=order, dynamic_thresholding=thresholding).sample(model.denoise, x_T, t)
    theirs = diffusers_dpmpp(model, x_T, t, order, thresholding)
    assert rel(ours, theirs) < 1e-9          # the issue asks 1e-6; float64 gives ~1e-14


@pytest.mark.parametrize("thresholding", [False, True], ids=["plain", "thresholded"])
@pytest.mark.parametrize("n", [4, 5, 7, 11, 15])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_matches_diffusers(problem, order, variant, n, thresholding):
    model, x_T = problem
    t = grid(n)
    ours = solvers.get("unipc", order=order, variant=variant, dynamic_thresholding=thresholding).sample(
        model.denoise, x_T, t)
    theirs = diffusers_unipc(model, x_T, t, order, variant, thresholding)
    assert rel(ours, theirs) < 1e-9


def test_logsnr_grid_matches_diffusers_too(problem):
    """Non-polynomial spacing (uniform in lambda): the r_k ratios are all 1, a different code path in neither."""
    model, x_T = problem
    t = solvers.schedules.logsnr(9, 0.002, 80.0)
    ours = solvers.get("unipc").sample(model.denoise, x_T, t)
    assert rel(ours, diffusers_unipc(model, x_T, t, 3, "bh2", False)) < 1e-9
    assert rel(solvers.get("dpm_solver_pp").sample(model.denoise, x_T, t),
               diffusers_dpmpp(model, x_T, t, 3, False)) < 1e-9


def test_where_conventions_differ_the_difference_is_real(problem):
    """Guards the documented exclusions: on a 3-point grid the lineage's 3M takes a 2nd-order last step, diffusers
    a 1st-order one, and the outputs differ (so the agreement above is not vacuous)."""
    model, x_T = problem
    t = grid(3)
    ours = solvers.get("dpm_solver_pp", order=3).sample(model.denoise, x_T, t)
    assert rel(ours, diffusers_dpmpp(model, x_T, t, 3, False)) > 1e-4
    assert rel(solvers.get("dpm_solver_pp", order=1).sample(model.denoise, x_T, t),
               diffusers_dpmpp(model, x_T, t, 3, False)) < 1e-9
