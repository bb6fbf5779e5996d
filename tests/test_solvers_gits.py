"""GITS (solvers/gits.py) against docs/learned-solvers.md section 2: the cost matrix against numpy for the three
metrics, the DP against a brute-force search of the same objective, the teacher trajectories it reads, the
untrained reduction to its base solver, NFE, round trips, the search beating its base, and bad input."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import solvers
from bench.distill import distill
from bench.distill.teacher import Cache, Source, Teacher, identity, trajectories
from bench.metrics.analytic import relative_l2
from bench.models.gmm import gmm2d
from solvers.gits import cost_matrix, dp


def random_trajectory(M=7, B=5, D=3, seed=0):
    g = np.random.default_rng(seed)
    return np.sort(g.uniform(0.01, 80, M))[::-1].tolist(), g.normal(size=(M, B, D)), g.normal(size=(M - 1, B, D))


@pytest.mark.parametrize("metric", ["dev", "l1", "l2"])
def test_cost_matrix_matches_numpy(metric):
    T, X, d = random_trajectory()
    C = cost_matrix(torch.from_numpy(X), torch.from_numpy(d), T, metric).numpy()
    u = (X[-1] - X[0]) / np.linalg.norm(X[-1] - X[0], axis=1, keepdims=True)

    def dev(y):
        r = X[-1] - y
        return np.linalg.norm(r - (r * u).sum(1, keepdims=True) * u, axis=1).mean()
    for i in range(len(T)):
        for j in range(len(T)):
            if j <= i:
                assert C[i, j] == 0
                continue
            Y = X[i] + (T[j] - T[i]) * d[i]
            if metric == "l1":
                want = np.abs(Y - X[j]).sum(1).mean()
            elif metric == "l2":
                want = np.linalg.norm(Y - X[j], axis=1).mean()
            else:
                want = dev(Y) - (dev(X[j]) if j < len(T) - 1 else 0.0)
            assert C[i, j] == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_points", [2, 3, 4, 5])
def test_dp_finds_the_weighted_minimum(seed, num_points):
    M, coeff = 9, 1.15
    C = torch.from_numpy(np.triu(np.random.default_rng(seed).normal(size=(M, M)), 1))
    best = None
    for mid in itertools.combinations(range(1, M - 1), num_points - 2):
        idx = [0, *mid, M - 1]
        cost = sum(coeff ** k * float(C[a, b]) for k, (a, b) in enumerate(zip(idx, idx[1:])))
        if best is None or cost < best[0] - 1e-12:
            best = (cost, idx)
    assert dp(C, num_points, coeff) == best[1]


def test_trajectories_are_the_teachers_states_and_derivatives(tmp_path):
    m = gmm2d()
    src = Source(m, float(m.grid(2)[-1]), float(m.grid(2)[0]))
    teacher = Teacher("ipndm", 8, {}, False, False)
    ident, cache = identity(src), Cache(tmp_path)
    for afs in (False, True):
        T, X, d, x_T, hit = trajectories(src, teacher, range(6), afs, ident, cache, batch_size=4)
        again = trajectories(src, teacher, range(6), afs, ident, cache, batch_size=4)   # from the shared cache
        assert not hit and again[4] and torch.equal(again[1], X) and torch.equal(again[2], d)
        assert len(T) == 9 and X.shape == (9, 6, 2) and d.shape == (8, 6, 2)
        grid = torch.tensor(T, dtype=torch.float64)
        for j in ((2, 4, 8) if afs else (1, 4, 8)):            # a causal solver's prefix run ends at X_j
            torch.testing.assert_close(X[j], solvers.get("ipndm").sample(m.denoiser(), x_T, grid[:j + 1], afs=afs))
        D = m.denoiser()(X[3], torch.full((6,), T[3], dtype=torch.float64))
        torch.testing.assert_close(d[3], (X[3] - D) / T[3])
        if afs:
            torch.testing.assert_close(d[0], x_T / np.sqrt(1 + T[0] ** 2))
    # any solver is a trajectory teacher (one run, read by its sampling callback): Heun's states are its own
    T, X, d, x_T, _ = trajectories(src, Teacher("heun", 8, {}, False, False), range(3), False, ident, Cache(None))
    grid = torch.tensor(T, dtype=torch.float64)
    torch.testing.assert_close(X[4], solvers.get("heun").sample(m.denoiser(), x_T, grid[:5]))
    D = m.denoiser()(X[4], torch.full((3,), T[4], dtype=torch.float64))
    torch.testing.assert_close(d[4], (X[4] - D) / T[4])


def test_untrained_and_given_grids_reduce_to_the_base_solver():
    m = gmm2d()
    x, g = m.noise(range(8)), m.grid(6)
    base = solvers.get("ipndm", max_order=3).sample(m.denoiser(), x, g, afs=True)
    plain = solvers.get("gits", num_points=6, base="ipndm", base_options={"max_order": 3})
    assert torch.equal(plain.sample(m.denoiser(), x, g, afs=True), base)
    given = solvers.get("gits", timesteps=g.tolist(), base="ipndm", base_options={"max_order": 3})
    assert torch.equal(given.sample(m.denoiser(), x, g, afs=True), base)
    counting = solvers.CountingDenoiser(m.denoiser())
    given.sample(counting, x, g, afs=True)
    assert counting.calls == given.calls(6, True) == 4 and given.learns() == {"timesteps": 4}


def test_the_search_beats_its_base_and_round_trips(tmp_path):
    m = gmm2d()
    x = m.noise(range(500))
    ref = solvers.get("ipndm").sample(m.denoiser(), x, m.grid(200))
    g = m.grid(7)                                            # NFE 5 with AFS
    s = distill("gits", m, g, afs=True, seed=0, cache_dir=False, teacher_steps=30, num_samples=64)
    idx = s.metadata["indices"]
    assert len(idx) == 7 and idx[0] == 0 and idx[-1] == 30 and idx == sorted(set(idx))
    err = lambda solver: float(relative_l2(solver.sample(m.denoiser(), x, g, afs=True), ref).mean())  # noqa: E731
    assert err(s) < err(solvers.get("ipndm"))
    s.save(tmp_path / "g.json")
    back = solvers.load(tmp_path / "g.json")
    assert torch.equal(back.sample(m.denoiser(), x, g, afs=True), s.sample(m.denoiser(), x, g, afs=True))
    assert torch.equal(solvers.get("gits", **s.options()).sample(m.denoiser(), x, g, afs=True),
                       s.sample(m.denoiser(), x, g, afs=True))
    with pytest.raises(ValueError, match="gits grid spans"):
        s.sample(m.denoiser(), x, m.grid(7) * 0.5, afs=True)


@pytest.mark.parametrize("opts, match", [
    ({}, "exactly one of timesteps="),
    ({"num_points": 4, "base": "dyweight"}, "base must be a handcrafted solver"),
    ({"num_points": 4, "metric": "bdev"}, "unknown gits metric 'bdev'; accepted: dev, l1, l2"),
    ({"timesteps": [1.0, 2.0]}, "strictly descending"),
])
def test_bad_input_is_one_clear_error(opts, match):
    with pytest.raises(ValueError, match=match):
        solvers.get("gits", **opts)


def test_with_nothing_to_insert_the_dp_chooses_every_point(monkeypatch):
    """GITS's AFS inserts a point before the DP's first one; when that is teacher point 1 there is none, and the
    grid keeps its budget by letting the DP choose all N points."""
    import solvers.gits as gits
    M = 6
    C = torch.ones(M, M, dtype=torch.float64).triu(1)
    C[0, 1] = -10.0                                          # the DP's first step is one teacher interval
    monkeypatch.setattr(gits, "cost_matrix", lambda *a, **k: C)
    T = [80.0, 20.0, 5.0, 1.0, 0.1, 0.002]
    s = solvers.get("gits", num_points=4)
    s.search(T, torch.zeros(M, 1, 2), torch.zeros(M - 1, 1, 2), afs=True)
    assert s.metadata["afs_insertion"] is False and len(s.timesteps) == 4 and s.metadata["indices"][:2] == [0, 1]
