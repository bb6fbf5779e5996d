"""`python -m bench perf`: solver overhead and a diffusers comparison, measured in one run and printed as ratios.

overhead = wall time of solver.sample / (NFE × the time of one denoiser call), on a small CPU conv network
(`--width` sizes it), for every registered solver at NFE 5 and 10 (target <= 1.05). The pure-call time is measured
as a loop of exactly the solver's NFE denoiser calls on the same batch, run back to back with the solver run in every
repeat; the overhead is the median of those paired ratios (a slow moment of a shared machine then slows both halves
of a pair), printed with their quartiles to show how much the machine's noise moves it. The "implied" column adds
the solver's own time per call (sample() with an identity denoiser) to one network call: 1 + solver ms/call / call
ms, which a busy machine disturbs less than the direct ratio.

The direct ratio is larger than the implied one because the network and the solver's updates, run in turn, cost
more than each run alone. The second table measures where that goes, from runs of sample() whose network calls are
timed one by one: a network call costs the same inside sample() as alone (ratio 0.99-1.04 in a run on this project's
2-core VM), while the solver's work between two calls takes about twice its time alone (1.7-2.4x). Measured ad hoc on the
same VM, every small tensor operation right after a network call is 3-5x slower than in a loop of its own, even
torch.full of 8 values, which touches no tensor data. That points at caches: the network most likely evicts the
interpreter's and torch's own working data, and each of the solver's few operations per call pays to bring it back. A network of real
size makes that negligible (`--width 64`). Moving the wrapper's two operations per call (the sigma tensor, the
finiteness reduction) out of the loop did not help when measured A/B in one process: a table of the grid's sigmas
costs more to build than it saves, and holding every output for a check after sampling defeats the allocator's reuse
of their memory. With glibc's default malloc a call also page-faults ~1300 times (about half of its time here,
measured ad hoc); the solver's live tensors move that count by a few hundred per run, so single rows come out
several percent off, in either direction.

diffusers: the same sampling loop through DPMSolverMultistepScheduler / UniPCMultistepScheduler, on the same
denoiser and the same grid (their `sigmas` replaced by ours, run in VP scaling x_VP = x / sqrt(1 + sigma^2),
data prediction), reported as diffusers' wall time / ours, with the largest relative difference of the outputs
(it shows that both loops compute the same thing).

Per-sample grids: every solver that integrates (B, N) grids (`per_sample_grids`), at each NFE, on the 1-D grid and
on a (B, N) grid of distinct rows (the polynomial grid with rho spread over 5..9 across the rows), with the same
network: wall time of each, their ratio, and the solver's own work per call in each (identity network). The 1-D
path is the one the tables above time; the per-sample path's extra cost is its (B,) coefficient tensors.

--quick also times the `quick` grid end to end in a fresh results directory.
"""
from __future__ import annotations

import math
import statistics
import tempfile
import time
import warnings

import torch

HELP = "measure solver overhead vs pure network time, diffusers' loop for comparison, and the quick grid's wall time"

SIGMA_DATA = 0.5


def add_arguments(parser) -> None:
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10], help="budgets to measure (default 5 10)")
    parser.add_argument("--repeats", type=int, default=51, help="interleaved repeats per measurement (median)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the conv network's input")
    parser.add_argument("--width", type=int, default=32,
                        help="channels of the conv network's hidden layers (default 32; its cost grows ~ width^2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    parser.add_argument("--quick", action="store_true", help="also run the quick grid end to end and time it")


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


def _identity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x


def _plan(name: str, nfe: int):
    """(solver, afs, num_points) for a budget: AFS when the solver can spend exactly nfe with it, else without."""
    import solvers
    cls = solvers.solver_class(name)
    solver = cls.budget_probe() if cls.learned else solvers.get(name)
    for afs in (True, False):
        try:
            n = solver.num_points(nfe, afs=afs)
        except ValueError:
            continue
        if cls.learned:                                   # its official initialisation on this grid
            solver = cls.untrained(n, afs)
        return solver, afs, n
    return None


def _median_times(fns: list, repeats: int) -> list[float]:
    """Median wall time of each function over `repeats` interleaved rounds."""
    return [statistics.median(t) for t in _times(fns, repeats)]


def _times(fns: list, repeats: int) -> list[list[float]]:
    """Wall times of each function over `repeats` interleaved rounds (fns[0], fns[1], ..., fns[0], ...)."""
    times = [[] for _ in fns]
    for f in fns:                                  # warm-up
        f()
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t0)
    return times


def solver_overheads(den, x_T, nfe_list, repeats, out=print) -> list[dict]:
    import solvers
    from solvers import schedules
    rows = []
    out(f"{'solver':<16} {'NFE':>4} {'AFS':>4} {'calls':>6} {'sample ms':>10} {'NFE x call ms':>14} {'overhead':>9}"
        f" {'(quartiles)':>13} {'solver ms/call':>15} {'implied':>8}")
    for nfe in nfe_list:
        for name in solvers.names():
            plan = _plan(name, nfe)
            if plan is None:
                out(f"{name:<16} {nfe:>4}  cannot spend exactly this NFE")
                continue
            solver, afs, n = plan
            sigmas = schedules.polynomial(n, 0.002, 80.0)
            counter = solvers.CountingDenoiser(den)
            with torch.no_grad():
                solver.sample(counter, x_T, sigmas, afs=afs)
            calls = counter.calls
            s_batch = [torch.full((x_T.shape[0],), float(s)) for s in sigmas]

            def pure():
                x = x_T
                for i in range(calls):
                    x = den(x, s_batch[i % len(s_batch)])

            def run():
                solver.sample(den, x_T, sigmas, afs=afs)

            def bare():                                 # the solver's own work: an identity "network"
                solver.sample(_identity, x_T, sigmas, afs=afs)

            net_inside = []                              # per traced run: the time of each of its network calls

            def traced():
                calls_here = []
                net_inside.append(calls_here)

                def timed(x, s):
                    t0 = time.perf_counter()
                    out = den(x, s)
                    calls_here.append(time.perf_counter() - t0)
                    return out
                solver.sample(timed, x_T, sigmas, afs=afs)

            with torch.no_grad():
                pures, samples, bares, traceds = _times([pure, run, bare, traced], repeats)
            t_pure, t_sample, t_bare = (statistics.median(v) for v in (pures, samples, bares))
            ratios = [a / b for a, b in zip(samples, pures)]
            overhead = statistics.median(ratios)
            q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [overhead] * 3
            implied = 1 + t_bare / t_pure
            # the traced runs split sample() into its network calls and the solver's work between them (per call;
            # net_inside[0] is the warm-up run, which _times does not time)
            net_in = statistics.median(sum(c) / calls for c in net_inside[1:])
            between = statistics.median((t - sum(c)) / calls for t, c in zip(traceds, net_inside[1:]))
            rows.append({"solver": name, "nfe": nfe, "afs": afs, "calls": calls, "sample": t_sample,
                         "pure": t_pure, "overhead": overhead, "overhead_quartiles": (q1, q3),
                         "solver_per_call": t_bare / calls, "implied": implied,
                         "net_in_sample": net_in, "net_alone": t_pure / calls, "solver_between_calls": between})
            flag = "" if max(overhead, implied) <= 1.05 else "  > 1.05"
            out(f"{name:<16} {nfe:>4} {'yes' if afs else 'no':>4} {calls:>6} {1e3 * t_sample:>10.2f} "
                f"{1e3 * t_pure:>14.2f} {overhead:>9.3f} {q1:>6.3f}-{q3:<6.3f} {1e3 * t_bare / calls:>15.3f} "
                f"{implied:>8.3f}{flag}")
    out("\nwhere the direct gap goes, per network call: the call inside sample() vs alone, and the solver's work "
        "between calls vs alone (identity network)")
    out(f"{'solver':<16} {'NFE':>4} {'net in sample ms':>17} {'net alone ms':>13} {'ratio':>6} "
        f"{'solver between ms':>18} {'solver alone ms':>16} {'ratio':>6}")
    for r in rows:
        out(f"{r['solver']:<16} {r['nfe']:>4} {1e3 * r['net_in_sample']:>17.3f} {1e3 * r['net_alone']:>13.3f} "
            f"{r['net_in_sample'] / r['net_alone']:>6.3f} {1e3 * r['solver_between_calls']:>18.3f} "
            f"{1e3 * r['solver_per_call']:>16.3f} {r['solver_between_calls'] / r['solver_per_call']:>6.2f}")
    return rows


def per_sample_overheads(den, x_T, nfe_list, repeats, out=print) -> list[dict]:
    """Each per-sample-capable solver on a 1-D grid and on a (B, N) grid of distinct rows (module docstring)."""
    import solvers
    from solvers import schedules
    rows = []
    B = x_T.shape[0]
    out(f"{'solver':<16} {'NFE':>4} {'1-D ms':>8} {'(B, N) ms':>10} {'ratio':>6} {'solver ms/call 1-D':>19} "
        f"{'(B, N)':>7}")
    for nfe in nfe_list:
        for name in solvers.names():
            plan = _plan(name, nfe)
            if plan is None or not plan[0].per_sample_grids:
                continue
            solver, afs, n = plan
            one = schedules.polynomial(n, 0.002, 80.0)
            per = torch.stack([schedules.polynomial(n, 0.002, 80.0, rho=5.0 + 4.0 * b / max(1, B - 1))
                               for b in range(B)])
            calls = solver.calls(n, afs)
            with torch.no_grad():
                t1, tb, b1, bb = _median_times([lambda: solver.sample(den, x_T, one, afs=afs),
                                                lambda: solver.sample(den, x_T, per, afs=afs),
                                                lambda: solver.sample(_identity, x_T, one, afs=afs),
                                                lambda: solver.sample(_identity, x_T, per, afs=afs)], repeats)
            rows.append({"solver": name, "nfe": nfe, "one_d": t1, "per_sample": tb, "ratio": tb / t1,
                         "solver_per_call_one_d": b1 / calls, "solver_per_call_per_sample": bb / calls})
            out(f"{name:<16} {nfe:>4} {1e3 * t1:>8.2f} {1e3 * tb:>10.2f} {tb / t1:>6.3f} {1e3 * b1 / calls:>19.3f} "
                f"{1e3 * bb / calls:>7.3f}")
    return rows


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


def diffusers_comparison(den, x_T, nfe_list, repeats, out=print) -> list[dict]:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        out("diffusers is not installed: comparison skipped (pip install diffusers)")
        return []
    import solvers
    from solvers import schedules
    rows = []
    out(f"{'solver':<16} {'NFE':>4} {'ours ms':>9} {'diffusers ms':>13} {'diffusers/ours':>15} {'max rel diff':>13}")
    for nfe in nfe_list:
        n = nfe + 1                                   # no AFS on either side: one call per step
        t = schedules.polynomial(n, 0.002, 80.0)
        for kind, scheduler in (("dpm_solver_pp", "DPMSolverMultistep"), ("unipc", "UniPCMultistep")):
            ours = solvers.get(kind, order=3)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = ours.sample(den, x_T, t)
                b = _diffusers_loop(kind, den, x_T, t)
                t_ours, t_theirs = _median_times([lambda: ours.sample(den, x_T, t),
                                                  lambda: _diffusers_loop(kind, den, x_T, t)], repeats)
            diff = float((a - b).abs().max() / a.abs().max())
            rows.append({"solver": kind, "nfe": nfe, "ours": t_ours, "diffusers": t_theirs, "ratio": t_theirs / t_ours,
                         "max_rel_diff": diff})
            out(f"{kind + ' / ' + scheduler:<16.16} {nfe:>4} {1e3 * t_ours:>9.2f} {1e3 * t_theirs:>13.2f} "
                f"{t_theirs / t_ours:>15.3f} {diff:>13.2e}")
    return rows


def quick_wall_time(out=print) -> float:
    from bench import grid as grids
    from bench import run as runner
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        runner.run(grids.load("quick"), d, progress=True, out=lambda s: None)
        wall = time.perf_counter() - t0
    out(f"quick grid end to end (fresh results directory, {torch.get_num_threads()} threads): {wall:.1f} s "
        f"({wall / 60:.1f} min; budget 10 min)")
    return wall


def main(args) -> int:
    from bench.cli import UsageError
    torch.set_num_threads(args.threads)
    if args.width < 1 or args.batch < 1 or args.repeats < 1:
        raise UsageError("--width, --batch and --repeats must be positive integers")
    den = ConvDenoiser(width=args.width).eval()
    x_T = 80.0 * torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_call = _median_times([lambda: den(x_T, torch.full((args.batch,), 1.0))], args.repeats)[0]
    out = print
    out(f"denoiser: conv net 4->{args.width}->{args.width}->3 channels, batch {args.batch}x3x32x32, "
        f"{torch.get_num_threads()} thread(s): {1e3 * t_call:.2f} ms per call")
    out("\nsolver overhead = solver.sample / (NFE x one denoiser call), target <= 1.05")
    rows = solver_overheads(den, x_T, args.nfe, args.repeats, out)
    worst = max(rows, key=lambda r: r["overhead"])
    worst_implied = max(rows, key=lambda r: r["implied"])
    out(f"worst overhead: {worst['solver']} at NFE {worst['nfe']}: {worst['overhead']:.3f} measured directly; "
        f"{worst_implied['solver']} at NFE {worst_implied['nfe']}: {worst_implied['implied']:.3f} implied by the "
        "solver's own time per call (1 + solver ms/call / call ms; steadier on a busy machine)")
    out(f"\nper-sample grids: the same network on a 1-D grid and on a ({args.batch}, N) grid of distinct rows")
    per_sample_overheads(den, x_T, args.nfe, args.repeats, out)
    out("\ndiffusers' loop on the same denoiser and grid (no AFS), ratio > 1 means ours is faster")
    diffusers_comparison(den, x_T, args.nfe, args.repeats, out)
    if args.quick:
        out("")
        quick_wall_time(out)
    return 0
