"""The solver-overhead study (grid kind "perf"): what a solver's own work costs beside its network, measured in one
run and stored as rows of the store, so `bench report` renders them and `bench check` can compare them.

On a small EDM-preconditioned conv network with random weights (`width`, `batch`), for every registered solver at
each NFE of the grid (with AFS where the solver can spend exactly that budget with it; a learned solver at its
official initialisation), each row one measurement with its 95 % interval (bootstrap of the median over `repeats`
interleaved repeats, `bench.stats.bootstrap_median`):

    overhead          the wall time of solver.sample / the time of exactly its NFE network calls run back to
                      back on the same batch, paired per repeat (a slow moment of a shared machine slows both)
    implied           1 + the solver's own time per call (sample() with an identity network) / one network call
    network_in_sample a network call inside sample() / the same call alone (timed one by one in traced runs)
    solver_between    the solver's work between two calls / its time alone per call
    per_sample_path   sample() on a (B, N) grid of distinct rows (rho spread over 5..9) / on the 1-D grid, for the
                      solvers that integrate per-sample grids
    diffusers         diffusers' DPMSolverMultistep / UniPCMultistep loop on the same network and grid (VP scaling,
                      data prediction, our sigmas) / ours; `diffusers_difference` the largest relative difference
                      of their outputs (the two loops compute the same thing)
    wall_time         (`quick_threads = true`) the `quick` grid end to end in a fresh results directory, in a
                      subprocess with 1 torch thread and with the machine's core count (torch's default), in
                      seconds, one row each

Every run of the grid measures anew (a timing is of its moment: its cells are keyed by the run).
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings

import torch

from solvers.errors import InputError

SIGMA_DATA = 0.5
DEFAULTS = {"nfe": [5, 10], "repeats": 51, "batch": 8, "width": 32, "threads": 1, "diffusers": True,
            "per_sample": True, "quick_threads": False}
LABELS = {"overhead": "sample / (NFE × network call)", "implied": "1 + solver time per call / network call",
          "network_in_sample": "network call in sample() / alone",
          "solver_between": "solver work between calls / alone",
          "per_sample_path": "(B, N) grid / 1-D grid", "diffusers": "diffusers' loop / ours",
          "diffusers_difference": "max relative output difference vs diffusers",
          "wall_time": "quick grid wall time (s)"}


class ConvDenoiser(torch.nn.Module):
    """A small EDM-preconditioned conv net: D(x, s) = c_skip x + c_out F(c_in x, c_noise) (random weights)."""

    def __init__(self, channels: int = 3, width: int = 32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels + 1, width, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(width, channels, 3, padding=1))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        c_skip = SIGMA_DATA ** 2 / (s ** 2 + SIGMA_DATA ** 2)
        c_out = s * SIGMA_DATA / (s ** 2 + SIGMA_DATA ** 2).sqrt()
        c_in = 1 / (s ** 2 + SIGMA_DATA ** 2).sqrt()
        c_noise = (s.log() / 4).expand(x.shape[0], 1, *x.shape[2:])
        return c_skip * x + c_out * self.net(torch.cat([c_in * x, c_noise], 1))


def identity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x


def plan(name: str, nfe: int):
    """(solver, afs, num_points) for a budget: AFS when the solver can spend exactly nfe with it, else without; a
    learned solver at its official initialisation. None when neither reaches the budget."""
    import solvers
    cls = solvers.solver_class(name)
    solver = cls.budget_probe() if cls.learned else solvers.get(name)
    for afs in (True, False):
        try:
            n = solver.num_points(nfe, afs=afs)
        except ValueError:
            continue
        return (cls.untrained(n, afs) if cls.learned else solver), afs, n
    return None


def times(fns: list, repeats: int) -> list[list[float]]:
    """Wall times of each function over `repeats` interleaved rounds (fns[0], fns[1], ..., fns[0], ...)."""
    out = [[] for _ in fns]
    for f in fns:                                  # warm-up
        f()
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            out[i].append(time.perf_counter() - t0)
    return out


def settings(grid: dict) -> dict:
    cfg = {**DEFAULTS, **(grid.get("study") or {})}
    unknown = sorted(set(grid.get("study") or {}) - set(DEFAULTS))
    if unknown:
        raise InputError(f"perf study: unknown key {', '.join(map(repr, unknown))}; accepted: {', '.join(DEFAULTS)}")
    for k in ("repeats", "batch", "width", "threads"):
        if not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < 1:
            raise InputError(f"perf study: {k} must be a positive integer, got {cfg[k]!r}")
    if not isinstance(cfg["nfe"], list) or not all(isinstance(n, int) and n > 0 for n in cfg["nfe"]):
        raise InputError(f"perf study: nfe must be a list of positive integers, got {cfg['nfe']!r}")
    return cfg


def validate(grid: dict) -> None:
    settings(grid)


def measure(cfg: dict, out=print) -> list[dict]:
    """Every measurement as {solver, nfe, afs, metric, values (the repeats) or value}."""
    import solvers
    from solvers import schedules
    torch.set_num_threads(cfg["threads"])
    den = ConvDenoiser(width=cfg["width"]).eval()
    x_T = 80.0 * torch.randn(cfg["batch"], 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = []
    for nfe in cfg["nfe"]:
        for name in solvers.names():
            p = plan(name, nfe)
            if p is None:
                continue
            solver, afs, n = p
            sigmas = schedules.polynomial(n, 0.002, 80.0)
            rows += _overhead(name, solver, afs, den, x_T, sigmas, nfe, cfg["repeats"])
            if cfg["per_sample"] and solver.per_sample_grids:
                rows += _per_sample(name, solver, afs, den, x_T, n, nfe, cfg["repeats"])
        if cfg["diffusers"]:
            rows += _diffusers(den, x_T, nfe, cfg["repeats"], out)
        out(f"perf: NFE {nfe} measured")
    return rows


def _overhead(name, solver, afs, den, x_T, sigmas, nfe, repeats) -> list[dict]:
    import solvers
    counter = solvers.CountingDenoiser(den)
    with torch.no_grad():
        solver.sample(counter, x_T, sigmas, afs=afs)
    calls = counter.calls
    s_batch = [torch.full((x_T.shape[0],), float(s)) for s in sigmas]
    inside: list = []                                # per traced run: the time of each of its network calls

    def pure():
        x = x_T
        for i in range(calls):
            x = den(x, s_batch[i % len(s_batch)])

    def traced():
        seen = []
        inside.append(seen)

        def timed(x, s):
            t0 = time.perf_counter()
            y = den(x, s)
            seen.append(time.perf_counter() - t0)
            return y
        solver.sample(timed, x_T, sigmas, afs=afs)

    with torch.no_grad():
        pures, samples, bares, traceds = times([pure, lambda: solver.sample(den, x_T, sigmas, afs=afs),
                                                lambda: solver.sample(identity, x_T, sigmas, afs=afs), traced],
                                               repeats)
    t_pure = statistics.median(pures)
    net_alone = [t / calls for t in pures]
    one = dict(solver=name, nfe=nfe, afs=afs)
    return [{**one, "metric": "overhead", "values": [a / b for a, b in zip(samples, pures)]},
            {**one, "metric": "implied", "values": [1 + b / t_pure for b in bares]},
            {**one, "metric": "network_in_sample",
             "values": [sum(c) / calls / a for c, a in zip(inside[1:], net_alone)]},
            {**one, "metric": "solver_between",
             "values": [(t - sum(c)) / calls / (b / calls) for t, c, b in zip(traceds, inside[1:], bares)]}]


def _per_sample(name, solver, afs, den, x_T, n, nfe, repeats) -> list[dict]:
    from solvers import schedules
    B = x_T.shape[0]
    one = schedules.polynomial(n, 0.002, 80.0)
    per = torch.stack([schedules.polynomial(n, 0.002, 80.0, rho=5.0 + 4.0 * b / max(1, B - 1)) for b in range(B)])
    with torch.no_grad():
        t1, tb = times([lambda: solver.sample(den, x_T, one, afs=afs), lambda: solver.sample(den, x_T, per, afs=afs)],
                       repeats)
    return [dict(solver=name, nfe=nfe, afs=afs, metric="per_sample_path", values=[b / a for a, b in zip(t1, tb)])]


def _diffusers_loop(kind: str, den, x_T, t):
    """One sampling run through a diffusers multistep scheduler on our grid `t` (no AFS; data prediction)."""
    import diffusers
    common = dict(solver_order=3, prediction_type="sample", lower_order_final=True, final_sigmas_type="sigma_min")
    if kind == "dpm_solver_pp":
        sch = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint", **common)
    else:
        sch = diffusers.UniPCMultistepScheduler(solver_type="bh2", predict_x0=True, disable_corrector=[], **common)
    sch.set_timesteps(len(t) - 1)
    sch.sigmas = t.to(torch.float32).clone()
    alpha = 1 / (1 + t ** 2).sqrt()
    x = x_T * float(alpha[0])
    batch = x_T.shape[0]
    for i, ts in enumerate(sch.timesteps):
        D = den(x / float(alpha[i]), t[i].to(x.dtype).expand(batch))
        x = sch.step(D, ts, x).prev_sample
    return x / float(alpha[-1])


def _diffusers(den, x_T, nfe: int, repeats: int, out) -> list[dict]:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        out("perf: diffusers is not installed; its comparison is left out (pip install diffusers)")
        return []
    import solvers
    from solvers import schedules
    t = schedules.polynomial(nfe + 1, 0.002, 80.0)     # no AFS on either side: one call per step
    rows = []
    for kind in ("dpm_solver_pp", "unipc"):
        ours = solvers.get(kind, order=3)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a, b = ours.sample(den, x_T, t), _diffusers_loop(kind, den, x_T, t)
            mine, theirs = times([functools.partial(ours.sample, den, x_T, t),
                                  functools.partial(_diffusers_loop, kind, den, x_T, t)], repeats)
        rows += [dict(solver=kind, nfe=nfe, afs=False, metric="diffusers",
                      values=[y / x for x, y in zip(mine, theirs)]),
                 dict(solver=kind, nfe=nfe, afs=False, metric="diffusers_difference",
                      value=float((a - b).abs().max() / a.abs().max()))]
    return rows


def quick_wall_times(out=print) -> list[dict]:
    """The `quick` grid end to end in fresh results directories, 1 thread and the machine's core count."""
    rows = []
    for threads in (1, os.cpu_count() or 1):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "quick", "--results-dir", d,
                            "--no-progress", "--threads", str(threads)], check=True, capture_output=True)
            wall = time.perf_counter() - t0
        out(f"perf: quick with {threads} torch thread(s): {wall:.1f} s")
        rows.append(dict(solver="quick", label=f"quick, {threads} torch thread(s)", nfe=0, afs=False,
                         metric="wall_time", value=wall, threads=threads, repeats=1))
    return rows


def run(grid: dict, results_dir) -> None:
    """Harness entry point: measure and store the rows as one run of the grid."""
    from bench import stats
    from bench.grid.files import canonical_hash
    from bench.store import Result, now, write_study
    cfg = settings(grid)
    name = str(grid.get("name", "perf"))
    measured = measure(cfg)
    if cfg["quick_threads"]:
        measured += quick_wall_times()
    nonce, model = uuid.uuid4().hex, f"convnet-w{cfg['width']}-b{cfg['batch']}"
    results = []
    for m in measured:
        est = stats.bootstrap_median(m["values"]) if "values" in m else stats.Estimate(m["value"], float("nan"),
                                                                                         float("nan"), "")
        where = "quick grid" if m["metric"] == "wall_time" else model
        results.append(Result(
            cell_key=canonical_hash({"run": nonce, "model": where, "solver": m["solver"], "nfe": m["nfe"],
                                     "metric": m["metric"], "threads": m.get("threads", cfg["threads"])}),
            metric_key=canonical_hash({"metric": m["metric"]}), grid=name, model=where, solver=m["solver"],
            label=m.get("label", m["solver"]), family="learned" if _learned(m["solver"]) else "handcrafted",
            kind="measurement", paper_method="", options=json.dumps({"afs": m["afs"]}), nfe=m["nfe"], afs=m["afs"],
            schedule="polynomial", metric=m["metric"], metric_label=LABELS[m["metric"]], metric_options="{}",
            higher_is_better=False, value=est.value, status="ok", error="", ci_low=est.low, ci_high=est.high,
            ci_method=est.method, replicas=1, num_samples=m.get("repeats", cfg["repeats"]), seeds="", paper_key="",
            instance_of="", distilled_on="", solver_key="", code_hash="", code_version="",
            config_hash=canonical_hash(grid), torch_version=torch.__version__, device="cpu", world_size=1,
            wall_time=0.0, created_at=now(), run_id=""))
    write_study(results_dir, name, grid, results, "bench run --grid " + name)
    print(f"perf: stored {len(results)} measurements; render them with `python -m bench report --grid {name}`")


def _learned(name: str) -> bool:
    import solvers
    return name in solvers.names() and solvers.solver_class(name).learned
