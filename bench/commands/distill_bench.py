"""`python -m bench distill-bench`: measure the distillation targets and print them.

`--solvers dyweight` (the default) measures DyWeight with `distill`'s defaults and its ablations (below).
`--solvers all` (or a comma-separated list of learned solver names) measures every learned row of the
`learned_quick` grid for these models, with that grid's settings (its labels, structure and distillation options,
and its NFE plan): the ratio of each row's endpoint error to the best handcrafted solver at that NFE (target < 1
at NFE 3 and 5) and the wall time of distilling all its NFEs with a cold teacher cache of its own (target 60 s).

On the analytic mixtures, with the exact PF-ODE solution (GaussianMixture.reference_solution) as ground truth and
held-out noise seeds (0 .. eval_samples-1; distillation uses seeds >= 1e9):
- for every NFE, the best handcrafted solver (Euler, Heun, iPNDM, iPNDM-v, DPM-Solver++ 2M/3M, UniPC; with and
  without AFS; polynomial or logsnr grid) and the distilled DyWeight (polynomial grid, AFS, `distill`'s default
  settings, only the seed given) -> the ratio of mean relative endpoint errors (target <= 1/3);
- the wall and CPU time of distilling all the NFEs one after another, teacher included (cold teacher cache;
  target <= 60 s);
- the same ratio for each ablation switch (time shifting off, time scaling off, both, history K, path
  supervision, other teachers, fewer/more teacher samples, a larger batch, Euler/uniform init, the relative-L2
  distance instead of MSE), reusing the teacher cache.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from solvers.errors import InputError

HELP = "measure learned solvers' distillation against the best handcrafted solver on the analytic models"

HANDCRAFTED = [("Euler", "euler", {}), ("Heun", "heun", {}), ("iPNDM", "ipndm", {}), ("iPNDM-v", "ipndm_v", {}),
               ("DPM-Solver++(2M)", "dpm_solver_pp", {"order": 2}),
               ("DPM-Solver++(3M)", "dpm_solver_pp", {"order": 3}), ("UniPC", "unipc", {})]

ABLATIONS = {
    "time_shift_off": {"time_shift": False},
    "time_scaling_off": {"time_scaling": False},
    "shift_and_scaling_off": {"time_shift": False, "time_scaling": False},
    "history_1": {"history": 1},
    "history_2": {"history": 2},
    "history_4": {"history": 4},
    "history_all": {"history": "all"},
    "path_supervision": {"supervision": "path"},
    "init_euler": {"init": "euler"},
    "init_uniform": {"init": "uniform"},
    "teacher_ipndm_18": {"teacher_steps": 18},
    "teacher_ipndm_50": {"teacher_steps": 50},
    "teacher_heun_35": {"teacher": "heun", "teacher_steps": 35},
    "teacher_dpm2m_35": {"teacher": "dpm_solver_pp", "teacher_options": {"order": 2}},
    "samples_1k": {"num_samples": 1000},
    "samples_10k": {"num_samples": 10000},
    "batch_256": {"batch_size": 256},
    "loss_relative_l2": {"loss": "relative_l2"},
}


def add_arguments(parser) -> None:
    parser.add_argument("--models", default="gmm64,gmm2d", help="comma-separated analytic models (default: gmm64,gmm2d)")
    parser.add_argument("--nfe", default="3,5,7,9", help="comma-separated budgets (default: 3,5,7,9)")
    parser.add_argument("--solvers", default="dyweight",
                        help="'dyweight' (default: DyWeight with distill's defaults, and its ablations), 'all' (every "
                             "learned row of the learned_quick grid) or a comma-separated list of learned solver names")
    parser.add_argument("--seed", type=int, default=0, help="distillation seed (default 0)")
    parser.add_argument("--eval-samples", type=int, default=1000,
                        help="held-out noise seeds 0..N-1 for the endpoint errors (default 1000)")
    parser.add_argument("--ablations", default="all",
                        help=f"'all', 'none' or a comma-separated subset of: {', '.join(ABLATIONS)}")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="teacher cache (default: a fresh temporary directory, so the timing includes the teacher)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: the problems are tiny)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")


def _list(text: str, what: str, cast=str):
    try:
        return [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--{what} must be a comma-separated list, got {text!r}") from None


def main(args) -> int:
    import torch

    from bench import models
    from bench.cli import UsageError

    names = _list(args.models, "models")
    nfes = _list(args.nfe, "nfe", int)
    for n in names:
        m = models.get(n)
        if not hasattr(m, "reference_solution"):
            raise UsageError(f"model {n!r} has no exact reference solution; distill-bench needs an analytic model "
                             "(gmm2d, gmm64)")
    if any(n < 1 for n in nfes):
        raise UsageError(f"--nfe values must be >= 1, got {nfes}")
    if args.ablations == "all":
        ablations = list(ABLATIONS)
    elif args.ablations == "none":
        ablations = []
    else:
        ablations = _list(args.ablations, "ablations")
        bad = [a for a in ablations if a not in ABLATIONS]
        if bad:
            raise UsageError(f"unknown ablation {', '.join(bad)}; accepted: all, none, {', '.join(ABLATIONS)}")
    if args.eval_samples < 1:
        raise UsageError("--eval-samples must be >= 1")
    import solvers
    chosen = None if args.solvers == "dyweight" else (
        solvers.learned_names() if args.solvers == "all" else _list(args.solvers, "solvers"))
    if chosen is not None:
        bad = [c for c in chosen if c not in solvers.learned_names()]
        if bad:
            raise UsageError(f"unknown learned solver {', '.join(bad)}; accepted: dyweight, all, or names among "
                             f"{', '.join(solvers.learned_names())}")
        if args.ablations != "all":
            print("note: --ablations applies to --solvers dyweight only")
        ablations = []
    torch.set_num_threads(args.threads)
    tmp = None
    cache_dir = args.cache_dir
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="distill-bench-")
        cache_dir = Path(tmp.name)
    report = {"threads": args.threads, "seed": args.seed, "eval_seeds": f"0-{args.eval_samples - 1}", "models": {}}
    try:
        for name in names:
            report["models"][name] = bench_model(models.get(name), nfes, args, ablations, cache_dir, chosen)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    return 0


def bench_model(model, nfes, args, ablations, cache_dir, chosen=None) -> dict:
    import torch

    import solvers
    from bench.distill import distill
    from bench.metrics.analytic import relative_l2
    from solvers import schedules

    print(f"\n== {model.name}: held-out seeds 0-{args.eval_samples - 1}, exact reference ODE solution ==", flush=True)
    den = model.denoiser()
    x_T = model.noise(range(args.eval_samples))
    ref = model.reference_solution(x_T, model.sigma_max, model.sigma_min)

    def err(x) -> float:
        x = x.detach().double()
        return float(relative_l2(x, ref).mean())

    # the teacher itself against the exact solution
    out = {"teacher_error": {}}
    for label, solver, steps in (("iPNDM-35 + final denoise (default teacher)", "ipndm", 35),
                                 ("iPNDM-50 + final denoise", "ipndm", 50)):
        g = schedules.polynomial(steps + 1, model.sigma_min, model.sigma_max)
        with torch.no_grad():
            e = err(solvers.get(solver).sample(den, x_T, g, denoise_to_zero=True))
        out["teacher_error"][label] = e
        print(f"teacher {label}: mean relative error vs exact {e:.5f}")

    # the best handcrafted solver per NFE
    best = {}
    for nfe in nfes:
        cands = []
        for label, name, opts in HANDCRAFTED:
            s = solvers.get(name, **opts)
            for afs in (False, True):
                for kind in ("polynomial", "logsnr"):
                    try:
                        n = s.num_points(nfe, afs=afs)
                    except ValueError:
                        continue                       # e.g. Heun cannot spend an odd budget
                    g = schedules.get(kind, n, model.sigma_min, model.sigma_max)
                    try:
                        with torch.no_grad():
                            e = err(s.sample(den, x_T, g, afs=afs))
                    except solvers.NonFiniteError:
                        continue
                    cands.append((e, f"{label}{' +AFS' if afs else ''} {kind}"))
        best[nfe] = min(cands)

    def run_all(options, tag) -> dict:
        res = {"error": {}, "ratio": {}}
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for nfe in nfes:
            g = model.grid(nfe + 2)                    # polynomial (rho 7) grid with AFS: N = NFE + 2
            opts = dict(options)
            if opts.get("history") == "all":
                opts["history"] = len(g) - 1
            s = distill("dyweight", model, g, afs=True, seed=args.seed, cache_dir=cache_dir, **opts)
            with torch.no_grad():
                e = err(s.sample(den, x_T, g, afs=True))
            res["error"][nfe] = e
            res["ratio"][nfe] = e / best[nfe][0]
        res["wall_seconds"] = time.perf_counter() - wall0
        res["cpu_seconds"] = time.process_time() - cpu0
        return res

    out["best_handcrafted"] = {nfe: {"error": best[nfe][0], "solver": best[nfe][1]} for nfe in nfes}
    if chosen is not None:
        out["learned"] = compare_learned(model, nfes, chosen, best, err, den, x_T, args, cache_dir)
        return out
    main = run_all({}, "default")
    out["dyweight"] = main
    print(f"\nDyWeight (distill defaults, seed {args.seed}, polynomial grid + AFS) vs the best handcrafted solver:")
    print(f"{'NFE':>4}  {'best handcrafted':<34} {'error':>8}  {'DyWeight':>8}  {'ratio':>6}  target <= 0.333")
    for nfe in nfes:
        r = main["ratio"][nfe]
        print(f"{nfe:>4}  {best[nfe][1]:<34} {best[nfe][0]:8.4f}  {main['error'][nfe]:8.4f}  {r:6.3f}  "
              f"{'met' if r <= 1 / 3 else 'MISSED'}")
    print(f"distilling NFE {','.join(map(str, nfes))} (teacher included, cold cache): wall {main['wall_seconds']:.1f} s, "
          f"CPU {main['cpu_seconds']:.1f} s on {args.threads} thread(s)  (target: wall <= 60 s) "
          f"{'met' if main['wall_seconds'] <= 60 else 'MISSED'}", flush=True)

    if ablations:
        out["ablations"] = {}
        default = " ".join(f"{main['ratio'][n]:.3f}" for n in nfes)
        print(f"\nablations: ratio to the best handcrafted solver per NFE (default: {default})")
        print(f"{'ablation':<24}" + "".join(f"{'NFE ' + str(n):>10}" for n in nfes) + f"{'CPU s':>9}")
        for a in ablations:
            res = run_all(ABLATIONS[a], a)
            out["ablations"][a] = {**res, "options": ABLATIONS[a]}
            print(f"{a:<24}" + "".join(f"{res['ratio'][n]:10.3f}" for n in nfes) + f"{res['cpu_seconds']:9.1f}",
                  flush=True)
    return out


def compare_learned(model, nfes, chosen, best, err, den, x_T, args, cache_dir) -> dict:
    """Every learned row of `learned_quick` for this model whose solver is in `chosen`: distilled per NFE on the
    grid's plan with the grid's options, each row with a cold teacher cache of its own."""
    import torch

    from bench import grid as grids
    from bench.distill import distill

    g = grids.load("learned_quick", {"nfe": nfes})
    rows: dict[str, dict] = {}
    for c in g.cells:
        if c.model != model.name or not c.entry.learned or c.entry.name not in chosen:
            continue
        row = rows.setdefault(c.entry.label, {"solver": c.entry.name, "error": {}, "ratio": {}, "seconds": 0.0})
        options = dict(c.entry.distill)
        seed = options.pop("seed", args.seed)
        t0 = time.perf_counter()
        s = distill(c.entry.name, model, list(c.plan.source_sigmas), afs=c.entry.afs, seed=seed,
                    cache_dir=Path(cache_dir) / f"{model.name}-{c.entry.label}", **options)
        row["seconds"] += time.perf_counter() - t0
        with torch.no_grad():
            e = err(s.sample(den, x_T, list(c.plan.sigmas), afs=c.entry.afs))
        row["error"][c.nfe], row["ratio"][c.nfe] = e, e / best[c.nfe][0]
    skipped = [(label, nfe) for m, label, nfe, _ in g.skipped if m == model.name]
    print(f"\nlearned_quick's learned rows for {model.name} (its options; cold teacher cache per row): endpoint error "
          "/ the best handcrafted solver's at that NFE (target < 1)")
    print(f"{'row':<16}" + "".join(f"{'NFE ' + str(n):>16}" for n in nfes) + f"{'wall s':>9}  (target 60 s)")
    print(f"{'best handcrafted':<16}" + "".join(f"{best[n][0]:16.4f}" for n in nfes))
    for label, row in rows.items():
        cells = [f"{row['error'][n]:.4f} {row['ratio'][n]:5.2f}x" if n in row["ratio"] else "unreachable"
                 for n in nfes]
        print(f"{label:<16}" + "".join(f"{v:>16}" for v in cells) + f"{row['seconds']:9.1f}  "
              f"{'met' if row['seconds'] <= 60 else 'MISSED'}")
        missed = [f"NFE {n} by {100 * (row['ratio'][n] - 1):.0f} %" for n in nfes
                  if n in (3, 5) and row["ratio"].get(n, 0) >= 1]
        if missed:
            print(f"{'':<16}not below the best handcrafted solver at {', '.join(missed)}")
    if skipped:
        print("unreachable budgets (skipped by the grid): " + ", ".join(f"{l} NFE {n}" for l, n in skipped))
    return rows
