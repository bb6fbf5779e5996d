"""Golden full-loop values: every solver against an independent float64 re-implementation of
docs/solver-conventions.md, written here in NumPy without importing the solver code, plus hard-coded numbers.

The reference functions below are transcribed from the conventions document's equations, on purpose in a different
form from solvers/: variable-step Adams-Bashforth weights from a moment (Vandermonde) system instead of Lagrange
integrals, UniPC's b_k from the closed form k! (e^hh - sum_{j<=k} hh^j / j!) / hh^k / B(h) instead of the recurrence.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

import baselines
import solvers
from bench.models.gmm import gmm2d, gmm64

# ---------------------------------------------------------------------------------------------------------------
# The reference (NumPy, float64). D(x, s) takes a (B, ...) array and a float sigma.
# ---------------------------------------------------------------------------------------------------------------
AB = {1: [1.0], 2: [-1 / 2, 3 / 2], 3: [5 / 12, -16 / 12, 23 / 12], 4: [-9 / 24, 37 / 24, -59 / 24, 55 / 24]}


def ref_afs_d(x, t0):
    return x / math.sqrt(1 + t0 ** 2)


def ref_euler(D, x, t, afs=False):
    for i in range(len(t) - 1):
        d = ref_afs_d(x, t[0]) if (afs and i == 0) else (x - D(x, t[i])) / t[i]
        x = x + (t[i + 1] - t[i]) * d
    return x


def ref_heun(D, x, t, afs=False):
    for i in range(len(t) - 1):
        h = t[i + 1] - t[i]
        d = ref_afs_d(x, t[0]) if (afs and i == 0) else (x - D(x, t[i])) / t[i]
        xp = x + h * d
        if t[i + 1] == 0:                      # the project's documented behaviour for grids ending at 0
            x = xp
            continue
        x = x + h * (d + (xp - D(xp, t[i + 1])) / t[i + 1]) / 2
    return x


def moment_weights(nodes, t_next):
    """beta with sum_j beta_j u_j^m = (1/h) int_0^h u^m du = h^m / (m+1), u = t - t_cur (exact for degree < p)."""
    u = np.asarray(nodes, dtype=np.float64) - nodes[-1]
    h = t_next - nodes[-1]
    p = len(u)
    V = np.array([u ** m for m in range(p)])
    rhs = np.array([h ** m / (m + 1) for m in range(p)])
    return np.linalg.solve(V, rhs)


def ref_ipndm(D, x, t, afs=False, max_order=4, variable=False):
    ds = []
    for i in range(len(t) - 1):
        d = ref_afs_d(x, t[0]) if (afs and i == 0) else (x - D(x, t[i])) / t[i]
        ds.append(d)
        p = min(max_order, i + 1)
        w = moment_weights(t[i - p + 1:i + 1], t[i + 1]) if variable else AB[p]
        x = x + (t[i + 1] - t[i]) * sum(wj * dj for wj, dj in zip(w, ds[-p:]))
    return x


def ref_threshold(m, ratio=0.995):
    flat = np.abs(m.reshape(m.shape[0], -1))
    s = np.maximum(np.quantile(flat, ratio, axis=1), 1.0).reshape(-1, *([1] * (m.ndim - 1)))
    return np.clip(m, -s, s) / s


def ref_dpmpp(D, x, t, order=3, afs=False, thresh=False):
    N = len(t)
    lam = [-math.log(v) if v > 0 else math.inf for v in t]
    M = []
    for i in range(N - 1):
        m = x - t[0] * ref_afs_d(x, t[0]) if (afs and i == 0) else D(x, t[i])
        M.append(ref_threshold(m) if thresh else m)
        s = i + 1
        p = s if s < order else min(order, N - s)
        if t[i + 1] == 0:
            p = 1
        h = lam[i + 1] - lam[i]
        ratio = t[i + 1] / t[i]
        phi1 = math.exp(-h) - 1 if t[i + 1] > 0 else -1.0
        if p == 1:
            x = ratio * x - phi1 * M[-1]
        elif p == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            x = ratio * x - phi1 * (M[-1] + (M[-1] - M[-2]) / (2 * r0))
        else:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            D1_0, D1_1 = (M[-1] - M[-2]) / r0, (M[-2] - M[-3]) / r1
            D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
            D2 = (D1_0 - D1_1) / (r0 + r1)
            phi2 = phi1 / h + 1
            phi3 = phi2 / h - 0.5
            x = ratio * x - (phi1 * M[-1] - phi2 * D1 + phi3 * D2)
    return x


def unipc_b(hh, order, variant):
    B = math.expm1(hh) if variant == "bh2" else hh
    b = []
    for k in range(1, order + 1):
        g_k = (math.exp(hh) - sum(hh ** j / math.factorial(j) for j in range(k + 1))) / hh ** k
        b.append(math.factorial(k) * g_k / B)
    return B, np.array(b)


def ref_unipc(D, x, t, order=3, variant="bh2", afs=False, thresh=False):
    N = len(t)
    prep = ref_threshold if thresh else (lambda m: m)
    M = [prep(x * (1 - t[0] / math.sqrt(1 + t[0] ** 2)) if afs else D(x, t[0]))]
    for i in range(N - 1):
        if t[i + 1] == 0 and i == N - 2:              # documented behaviour for grids ending at 0
            p, corr = 1, False
        elif i + 1 < order:
            p, corr = i + 1, True
        else:
            p, corr = min(order, N - 1 - i), i < N - 2
        Mi = M[-1]
        x_lin = (t[i + 1] / t[i]) * x - (t[i + 1] / t[i] - 1) * Mi
        if p == 1 and not corr:
            x = x_lin
            continue
        h = math.log(t[i]) - math.log(t[i + 1])
        r = [(math.log(t[i]) - math.log(t[i - k])) / h for k in range(1, p)] + [1.0]
        D1 = [(M[-1 - k] - Mi) / r[k - 1] for k in range(1, p)]
        B, b = unipc_b(-h, p, variant)
        R = np.array([[rk ** (k - 1) for rk in r] for k in range(1, p + 1)])
        if p == 1:
            xt = x_lin
        elif p == 2:
            xt = x_lin - B * 0.5 * D1[0]
        else:
            rho_p = np.linalg.solve(R[:-1, :-1], b[:-1])
            xt = x_lin - B * sum(c * d for c, d in zip(rho_p, D1))
        if not corr:
            x = xt
            continue
        Mt = prep(D(xt, t[i + 1]))
        rho_c = np.array([0.5]) if p == 1 else np.linalg.solve(R, b)
        x = x_lin - B * (sum(c * d for c, d in zip(rho_c[:-1], D1)) + rho_c[-1] * (Mt - Mi))
        M.append(Mt)
    return x


def ref_dyweight(D, x, t, rows, scale, afs=False, eps=1e-8):
    K = max(len(r) for r in rows)
    th = t[0]
    ds = []
    for i in range(len(t) - 1):
        if afs and i == 0:
            d = x / math.sqrt(1 + th ** 2)
        else:
            s = scale[i - 1] if afs else scale[i]
            d = (x - D(x, abs(s * th))) / (th + eps)
        ds.append(d)
        w = rows[i]
        assert len(w) == min(i + 1, K)
        x = x + (t[i + 1] - th) * sum(wj * dj for wj, dj in zip(w, ds[-len(w):]))
        th = th + sum(w) * (t[i + 1] - th)
    return x


# ---------------------------------------------------------------------------------------------------------------
# The fixed analytic problem
# ---------------------------------------------------------------------------------------------------------------
def karras(n, smin=0.002, smax=80.0, rho=7.0):
    a, b = smax ** (1 / rho), smin ** (1 / rho)
    return [(a + i / (n - 1) * (b - a)) ** rho for i in range(n)]


@pytest.fixture(scope="module")
def problem():
    model = gmm64()
    g = torch.Generator().manual_seed(7)
    # (B, 1, 64): a trailing shape other than the model's own; the denoiser flattens and restores it
    x_T = 80.0 * torch.randn(3, 1, 64, generator=g, dtype=torch.float64)

    def D_np(x, s):
        xt = torch.from_numpy(np.ascontiguousarray(x))
        return model.denoise(xt, torch.full((x.shape[0],), float(s), dtype=torch.float64)).numpy()

    return model, x_T, D_np


CASES = [  # (id, solver name, options, reference(D, x, t, afs))
    ("euler", "euler", {}, lambda D, x, t, a: ref_euler(D, x, t, a)),
    ("heun", "heun", {}, lambda D, x, t, a: ref_heun(D, x, t, a)),
    ("ipndm", "ipndm", {}, lambda D, x, t, a: ref_ipndm(D, x, t, a)),
    ("ipndm-o2", "ipndm", {"max_order": 2}, lambda D, x, t, a: ref_ipndm(D, x, t, a, max_order=2)),
    ("ipndm-o3", "ipndm", {"max_order": 3}, lambda D, x, t, a: ref_ipndm(D, x, t, a, max_order=3)),
    ("ipndm_v", "ipndm_v", {}, lambda D, x, t, a: ref_ipndm(D, x, t, a, variable=True)),
    ("ipndm_v-o3", "ipndm_v", {"max_order": 3}, lambda D, x, t, a: ref_ipndm(D, x, t, a, 3, variable=True)),
    ("dpm1", "dpm_solver_pp", {"order": 1}, lambda D, x, t, a: ref_dpmpp(D, x, t, 1, a)),
    ("dpm2m", "dpm_solver_pp", {"order": 2}, lambda D, x, t, a: ref_dpmpp(D, x, t, 2, a)),
    ("dpm3m", "dpm_solver_pp", {"order": 3}, lambda D, x, t, a: ref_dpmpp(D, x, t, 3, a)),
    ("dpm3m-thr", "dpm_solver_pp", {"order": 3, "dynamic_thresholding": True},
     lambda D, x, t, a: ref_dpmpp(D, x, t, 3, a, thresh=True)),
    ("dpm2m-thr", "dpm_solver_pp", {"order": 2, "dynamic_thresholding": True},
     lambda D, x, t, a: ref_dpmpp(D, x, t, 2, a, thresh=True)),
] + [
    (f"unipc{o}-{v}", "unipc", {"order": o, "variant": v},
     functools.partial(lambda o, v, D, x, t, a: ref_unipc(D, x, t, o, v, a), o, v))
    for o in (1, 2, 3) for v in ("bh1", "bh2")
] + [
    ("unipc3-thr", "unipc", {"order": 3, "dynamic_thresholding": True},
     lambda D, x, t, a: ref_unipc(D, x, t, 3, "bh2", a, thresh=True)),
    ("unipc2-bh1-thr", "unipc", {"order": 2, "variant": "bh1", "dynamic_thresholding": True},
     lambda D, x, t, a: ref_unipc(D, x, t, 2, "bh1", a, thresh=True)),
]


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("afs", [False, True], ids=["noafs", "afs"])
@pytest.mark.parametrize("n", [3, 4, 7, 10])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_full_loop_matches_reference(problem, case, n, afs):
    model, x_T, D_np = problem
    _, name, opts, ref = case
    t = karras(n)
    got = solvers.get(name, **opts).sample(model.denoise, x_T, torch.tensor(t, dtype=torch.float64), afs=afs)
    want = ref(D_np, x_T.numpy(), t, afs)
    assert got.shape == x_T.shape and got.dtype == torch.float64
    assert _rel(got.numpy(), want) < 1e-11


@pytest.mark.parametrize("case", [c for c in CASES if c[1] in ("heun", "dpm_solver_pp", "unipc", "euler")],
                         ids=lambda c: c[0])
def test_grid_ending_at_zero_is_the_documented_behaviour(problem, case):
    """The project's deliberate deviation: a grid may end at 0; the last step is then first order (Heun: Euler;
    DPM-Solver++ / UniPC: x = M_{N-2}, no corrector), so no network call at sigma = 0."""
    model, x_T, D_np = problem
    _, name, opts, ref = case
    t = karras(6)[:-1] + [0.0]
    counter = solvers.CountingDenoiser(model.denoise)
    solver = solvers.get(name, **opts)
    got = solver.sample(counter, x_T, torch.tensor(t, dtype=torch.float64))
    assert _rel(got.numpy(), ref(D_np, x_T.numpy(), t, False)) < 1e-11
    assert 0.0 not in counter.sigmas
    assert counter.calls == solver.calls(6, ends_at_zero=True)


def test_thresholding_is_active_on_this_problem(problem):
    """Guard: the thresholded cases above exercise the clamp (the data exceed [-1, 1] here)."""
    model, x_T, _ = problem
    t = torch.tensor(karras(7), dtype=torch.float64)
    for name in ("dpm_solver_pp", "unipc"):
        a = solvers.get(name).sample(model.denoise, x_T, t)
        b = solvers.get(name, dynamic_thresholding=True).sample(model.denoise, x_T, t)
        assert _rel(a.numpy(), b.numpy()) > 1e-3


@pytest.mark.parametrize("afs", [False, True], ids=["noafs", "afs"])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_dyweight_matches_reference(problem, afs, eps):
    """Arbitrary (non-AB) weights and time scales: time shifting, |s t^| for the network, 1e-8 in the divisor."""
    model, x_T, D_np = problem
    n = 7
    t = karras(n)
    rng = np.random.default_rng(3)
    rows = [list(np.round(np.asarray(AB[min(i + 1, 3)]) + 0.1 * rng.standard_normal(min(i + 1, 3)), 6))
            for i in range(n - 1)]
    scale = list(np.round(1 + 0.1 * rng.standard_normal(n - 1 - int(afs)), 6))
    scale[-1] = -scale[-1]                      # the network sees |s t^|: a negative factor must be harmless
    solver = solvers.get("dyweight", weights=rows, time_scale=scale, afs=afs, divisor_eps=eps)
    got = solver.sample(model.denoise, x_T, torch.tensor(t, dtype=torch.float64), afs=afs)
    want = ref_dyweight(D_np, x_T.numpy(), t, rows, scale, afs, eps)
    assert _rel(got.detach().numpy(), want) < 1e-11


@pytest.mark.parametrize("dataset,nfe", [("cifar10", 5), ("ms_coco", 8), ("ms_coco", 20)])
def test_released_dyweight_matches_reference(problem, dataset, nfe):
    model, x_T, D_np = problem
    ck = baselines.released_coefficients(dataset, nfe)
    t = karras(ck["num_time_points"])
    solver = baselines.released_solver(dataset, nfe)
    got = solver.sample(model.denoise, x_T, torch.tensor(t, dtype=torch.float64), afs=ck["afs"])
    want = ref_dyweight(D_np, x_T.numpy(), t, ck["weights_oldest_to_newest"], ck["time_scale"], ck["afs"])
    assert _rel(got.detach().numpy(), want) < 1e-11


# ---------------------------------------------------------------------------------------------------------------
# Hard-coded golden numbers (diffusers style): a silent change in any solver or in the test problem shows here.
# gmm2d, x_T = 80 * randn(2, 2) from torch.Generator().manual_seed(0) in float64, EDM grid (rho 7, 0.002..80).
# ---------------------------------------------------------------------------------------------------------------
GOLDEN = {
    # (name, options as tuple, N, afs): x[0] after sampling
    ('euler', (), 6, False): [0.4996357319756904, -0.08823574634555692],
    ('heun', (), 4, False): [3.82283141734025, -0.6507502566726039],
    ('heun', (), 5, True): [1.7023885177825053, -0.056373221542278786],
    ('ipndm', (), 6, False): [1.0043970827717406, 0.022253628587997204],
    ('ipndm', (), 7, True): [0.7231879094955047, -0.08151078626333874],
    ('ipndm_v', (), 6, False): [0.7939011066092223, -0.07412165700068032],
    ('dpm_solver_pp', (('order', 2),), 6, False): [0.9924840595354515, -0.08246516034834075],
    ('dpm_solver_pp', (('order', 3),), 6, False): [0.9939855194109424, -0.08430473882075763],
    ('dpm_solver_pp', (('order', 3),), 7, True): [1.0315398743515274, -0.15494399923151952],
    ('unipc', (('order', 3), ('variant', 'bh2')), 6, False): [0.9955520432268449, -0.08447796387373321],
    ('unipc', (('order', 3), ('variant', 'bh2')), 7, True): [1.0284162597338984, -0.15519474710424389],
    ('unipc', (('order', 2), ('variant', 'bh1')), 6, False): [1.0190465736758911, -0.12453881760125454],
    ('unipc', (('order', 1), ('variant', 'bh2')), 6, False): [0.5624503937858403, -0.08703373156422671],
    ('dyweight-released', (('released', 'cifar10'), ('nfe', 5)), 7, True): [1.1919199289126372, 0.027027257245652136],
}


@pytest.fixture(scope="module")
def golden_problem():
    model = gmm2d()
    x_T = 80.0 * torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return model, x_T


def _golden_solver(key):
    name, opts, n, afs = key
    if name == "dyweight-released":
        return baselines.released_solver(opts[0][1], opts[1][1]), n, afs
    return solvers.get(name, **dict(opts)), n, afs


@pytest.mark.parametrize("key", list(GOLDEN), ids=lambda k: f"{k[0]}{dict(k[1]) or ''}-N{k[2]}-afs{int(k[3])}")
def test_golden_numbers(golden_problem, key):
    model, x_T = golden_problem
    solver, n, afs = _golden_solver(key)
    x = solver.sample(model.denoise, x_T, torch.tensor(karras(n), dtype=torch.float64), afs=afs)
    assert x[0].detach().tolist() == pytest.approx(GOLDEN[key], rel=1e-9, abs=1e-12)
