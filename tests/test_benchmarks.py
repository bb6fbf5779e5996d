"""Micro-benchmarks (pytest-benchmark): each solver's own work per sampling run, with an identity "network".

Timing is off by default (pytest.ini: --benchmark-disable), so in the test suite each body runs once and only its
result is checked. Measure with

    pytest tests/test_benchmarks.py --benchmark-enable --benchmark-columns=min,median,rounds

The figures of record (solver time against one network call, the issue's <= 1.05 target, and diffusers' loops)
come from the `perf` grid (bench/studies/perf.py), which measures both in one run.
"""
from __future__ import annotations

import pytest
import torch

import solvers
from bench.studies.perf import identity as _identity
from bench.studies.perf import plan as _plan
from solvers import schedules


@pytest.mark.parametrize("nfe", [5, 10])
@pytest.mark.parametrize("name", solvers.names())
def test_solver_own_time_per_run(benchmark, name, nfe):
    plan = _plan(name, nfe)                          # the grid and AFS choice the perf study measures
    if plan is None:                                 # e.g. EPD (K=2): 1 + K evaluations per step
        assert name == "epd"
        pytest.skip(f"{name} cannot spend exactly NFE {nfe}, with or without AFS")
    solver, afs, n = plan
    sigmas = schedules.polynomial(n, 0.002, 80.0)
    x_T = 80.0 * torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    counter = solvers.CountingDenoiser(_identity)
    with torch.no_grad():
        solver.sample(counter, x_T, sigmas, afs=afs)
        out = benchmark(solver.sample, _identity, x_T, sigmas, afs=afs)
    assert counter.calls == nfe
    assert out.shape == x_T.shape and torch.isfinite(out).all()
