"""The sampling callback (k-diffusion's hook): every solver reports every grid point once, in order, with the state
there and the denoiser output it used; one run thus gives a whole trajectory (teacher path targets, GITS, path
supervision)."""
from __future__ import annotations

import pytest
import torch

import solvers
from bench.distill.teacher import Cache, Source, Teacher, identity, path_states, refine
from bench.models.gmm import gmm2d

CASES = [("euler", {}), ("heun", {}), ("ipndm", {}), ("ipndm_v", {}), ("dpm_solver_pp", {"order": 3}),
         ("dpm_solver_pp", {"order": 2}), ("unipc", {"order": 3}), ("dyweight", {"num_points": 7}),
         ("epd", {"num_points": 7}), ("amed", {"num_points": 7}), ("ld3", {"num_points": 7}),
         ("gits", {"num_points": 7}), ("instance_aware", {"num_points": 7})]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{o.get('order', '')}" for n, o in CASES])
@pytest.mark.parametrize("afs", [False, True])
def test_every_solver_reports_every_grid_point_once(name, options, afs):
    m = gmm2d()
    solver = solvers.get(name, **({**options, "afs": afs} if "num_points" in options else options))
    grid, x_T = m.grid(7), m.noise(range(5))
    seen = []
    out = solver.sample(m.denoiser(), x_T, grid, afs=afs, callback=seen.append)
    assert [s["i"] for s in seen] == list(range(7))
    assert seen[0]["x"] is x_T and torch.equal(seen[-1]["x"], out)
    assert seen[-1]["denoised"] is None
    assert (seen[0]["denoised"] is None) == afs
    plain = solver.sample(m.denoiser(), x_T, grid, afs=afs)
    assert torch.equal(plain, out)                          # the hook changes nothing


def test_denoised_is_the_output_used_at_the_point_and_the_final_denoise_is_reported():
    m = gmm2d()
    den, grid, x_T = m.denoiser(), m.grid(6), m.noise(range(4))
    seen = []
    out = solvers.get("euler").sample(den, x_T, grid, denoise_to_zero=True, callback=seen.append)
    for s in seen[:-1]:
        sigma = torch.full((4,), float(s["t"]), dtype=x_T.dtype)
        torch.testing.assert_close(s["denoised"], den(s["x"], sigma), rtol=0, atol=0)
    assert torch.equal(seen[-1]["denoised"], out)


def _quadratic_path_states(src, teacher, sigmas, substeps, seeds):
    """The targets as computed before the callback: one teacher run per prefix of the refined grid."""
    fine = refine(sigmas, substeps)
    x = src.noise(seeds)
    den = src.denoiser(src.conditions(seeds))
    solver = teacher.build()
    return torch.stack([solver.sample(den, x, fine[:j * substeps + 1], afs=teacher.afs)
                        for j in range(1, len(sigmas) - 1)], 1)


@pytest.mark.parametrize("teacher", [Teacher(), Teacher("euler"), Teacher("heun", 10)], ids=["ipndm", "euler", "heun"])
def test_one_pass_path_states_equal_the_prefix_runs_of_causal_teachers(teacher, tmp_path):
    m = gmm2d()
    grid = [float(v) for v in m.grid(6)]
    src = Source(m, grid[-1], grid[0])
    ps = path_states(src, teacher, grid, 5, range(6), identity(src), Cache(tmp_path))
    old = _quadratic_path_states(src, teacher, grid, 5, range(6))
    assert torch.equal(ps.targets, old)
