"""`python -m bench instance-bench`: per-sample (instance-aware) grids against the best global learned schedules.

One protocol for every row of a model and NFE: the polynomial (rho 7) grid of N = NFE + 2 points with AFS, one
base solver (UniPC bh1, order 3), one teacher (UniPC bh1 order 3 on `--teacher-steps` intervals, no final denoise)
and one set of teacher pairs (1024 training + 256 held-out seeds, the same for every learned row), held-out
evaluation seeds 0 .. E-1, and the exact PF-ODE solution (GaussianMixture.reference_solution) as ground truth.

rows          (GITS searches the trajectories of a one-call-per-point teacher: iPNDM on the same number of steps)
              UniPC on the logSNR-uniform grid (what LD3 and the instance-aware solver start from) and on the
              polynomial grid; LD3 (global steps and model times); GITS (its grid search, same base, over iPNDM teacher trajectories);
              "instance-aware": the per-sample grids, started from the better of LD3 and GITS on the held-out
              teacher pairs (solvers/instance_aware.py `init`), the network alone trained; "global fine-tune":
              the control, the same start, data, teacher, batch and steps with only the global schedule trained
              (per_sample=False), so the ratio to it is what predicting per sample adds; "fine-tune +
              per-sample": the network alone trained (same steps) on top of that fine-tuned global schedule, the
              per-sample grids' gain over the best global schedule this protocol finds; on a mixture with
              instance classes (`component_of`)
              also "per-class best": for each class, LD3 and GITS trained on that class's training seeds, the
              better on its held-out teacher pairs applied to the samples that end in it (the issue's "global
              optimal schedule per instance class", as far as these two learners find it: it knows each sample's
              class, which the instance-aware predictor has to infer from the noise).
figures       mean relative endpoint error with its bootstrap 95 % interval; the ratio of the instance-aware
              error to the best global learned row (LD3, GITS) with the paired bootstrap interval of
              that ratio (the same seeds: `bench.stats.paired_ratio`), "wins" when its upper end is below 1;
              likewise "fine-tune + per-sample" over the best global learned row and over "global fine-tune";
              per class: the error of each row on the samples ending in each component; the per-sample grids'
              spread (the standard deviation of log sigma_k across samples, averaged over the interior points);
              cost: the network's parameters, and its inference overhead as the wall time of predicting the grids
              of the E noises over the time of one denoiser call on them (median of repeats).
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from solvers.errors import InputError

HELP = "measure instance-aware (per-sample) grids against the best global learned schedules on the analytic models"

BASE = {"base": "unipc", "base_options": {"order": 3, "variant": "bh1"}}
ON_TUNED = "fine-tune + per-sample"      # the row: the network trained on top of the global fine-tune's schedule
WIDTH = len(ON_TUNED)


def add_arguments(parser) -> None:
    parser.add_argument("--models", default="gmm_scales,gmm2d,gmm64",
                        help="comma-separated analytic models (default: gmm_scales,gmm2d,gmm64)")
    parser.add_argument("--nfe", default="3,5", help="comma-separated budgets (default: 3,5)")
    parser.add_argument("--seed", type=int, default=0, help="distillation seed (default 0)")
    parser.add_argument("--eval-samples", type=int, default=2000,
                        help="held-out noise seeds 0..E-1 for the endpoint errors (default 2000)")
    parser.add_argument("--teacher-steps", type=int, default=60,
                        help="intervals of the shared UniPC teacher (default 60; LD3's official 20 is far from the "
                             "exact solution on these mixtures, see its printed error)")
    parser.add_argument("--ld3-steps", type=int, default=400, help="LD3's optimiser steps (default 400)")
    parser.add_argument("--steps", type=int, default=800,
                        help="the instance-aware solver's steps, both phases (default 800)")
    parser.add_argument("--regularizer", type=float, default=None,
                        help="the instance-aware regulariser weight (default: the solver's)")
    parser.add_argument("--no-oracle", action="store_true", help="skip the per-class global schedules")
    parser.add_argument("--cache-dir", type=Path, default=None, help="teacher cache (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")


def _list(text: str, what: str, cast=str):
    try:
        out = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out:
        raise InputError(f"--{what} must be a comma-separated list, got {text!r}")
    return out


def main(args) -> int:
    import torch

    from bench import models
    from bench.cli import UsageError

    names, nfes = _list(args.models, "models"), _list(args.nfe, "nfe", int)
    for n in names:
        if not hasattr(models.get(n), "reference_solution"):
            raise UsageError(f"model {n!r} has no exact reference solution; instance-bench needs an analytic model "
                             "(gmm_scales, gmm2d, gmm64)")
    for flag, values, low in (("nfe", nfes, 2), ("eval-samples", [args.eval_samples], 2),
                              ("teacher-steps", [args.teacher_steps], 2), ("ld3-steps", [args.ld3_steps], 1),
                              ("steps", [args.steps], 2)):
        if any(v < low for v in values):
            raise UsageError(f"--{flag} must be >= {low}, got {values if len(values) > 1 else values[0]}")
    torch.set_num_threads(args.threads)
    tmp = None if args.cache_dir is not None else tempfile.TemporaryDirectory(prefix="instance-bench-")
    cache_dir = args.cache_dir if tmp is None else Path(tmp.name)
    report = {"threads": args.threads, "seed": args.seed, "eval_seeds": f"0-{args.eval_samples - 1}",
              "teacher": f"unipc bh1 order 3, {args.teacher_steps} steps, no final denoise", "models": {}}
    try:
        for name in names:
            report["models"][name] = bench_model(models.get(name), nfes, args, cache_dir)
    finally:
        if tmp is not None:
            tmp.cleanup()
    summary(report, nfes)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    return 0


def _shared(args) -> dict:
    """The distillation options every learned row shares: teacher, pairs, best held-out checkpoint."""
    return {"teacher": "unipc", "teacher_steps": args.teacher_steps, "teacher_options": {"order": 3, "variant": "bh1"},
            "teacher_denoise": False, "num_samples": 1024, "eval_samples": 256, "keep_best": True}


def bench_model(model, nfes, args, cache_dir) -> dict:
    import torch

    import solvers
    from bench.distill import distill
    from bench.metrics.analytic import relative_l2
    from bench.stats import bootstrap_mean, paired_ratio
    from solvers import schedules

    E = args.eval_samples
    print(f"\n== {model.name}: held-out seeds 0-{E - 1}, exact reference ODE solution ==", flush=True)
    den = model.denoiser()
    x_T = model.noise(range(E))
    ref = model.reference_solution(x_T, model.sigma_max, model.sigma_min)
    classed = hasattr(model, "component_of")
    cls_eval = model.component_of(ref) if classed else None
    shared = _shared(args)

    def errors(solver, grid) -> torch.Tensor:
        with torch.no_grad():
            return relative_l2(solver.sample(den, x_T, grid, afs=True).double(), ref)

    teacher = solvers.get("unipc", order=3, variant="bh1")
    tg = schedules.polynomial(args.teacher_steps + 1, model.sigma_min, model.sigma_max)
    with torch.no_grad():
        teacher_error = float(relative_l2(teacher.sample(den, x_T, tg).double(), ref).mean())
    print(f"teacher UniPC-{args.teacher_steps} (bh1, order 3): mean relative error vs exact {teacher_error:.5f}")
    out = {"teacher_error": teacher_error, "nfe": {}}
    # held-out teacher pairs (the distillation's validation seeds): where a schedule is chosen, never on 0 .. E-1
    val_x = model.noise(range(2_000_000_000, 2_000_000_000 + shared["eval_samples"]))
    with torch.no_grad():
        val_ref = teacher.sample(den, val_x, tg).double()
    for nfe in nfes:
        grid = model.grid(nfe + 2)
        rows: dict[str, torch.Tensor] = {}
        picked = None
        seconds: dict[str, float] = {}
        base = solvers.get("unipc", order=3, variant="bh1")
        rows["UniPC logSNR"] = errors(base, schedules.get("logsnr", nfe + 2, model.sigma_min, model.sigma_max))
        rows["UniPC polynomial"] = errors(base, grid)

        trained, held_out = {}, {}

        def learned(label, kind, **options):
            t0 = time.perf_counter()
            s = distill(kind, model, grid, afs=True, seed=args.seed, cache_dir=cache_dir, **options)
            seconds[label] = time.perf_counter() - t0
            rows[label], trained[label] = errors(s, grid), s
            with torch.no_grad():
                held_out[label] = float(relative_l2(s.sample(den, val_x, grid, afs=True).double(), val_ref).mean())
            return s

        learned("LD3", "ld3", **shared, **BASE, steps=args.ld3_steps, lr=2e-2, batch_size=16)
        learned("GITS", "gits", teacher_steps=args.teacher_steps, **BASE)   # a trajectory teacher: iPNDM
        # the instance-aware solver starts from the better global schedule on the held-out teacher pairs
        start = min(("LD3", "GITS"), key=lambda k: held_out[k])
        ia_options = dict(shared, steps=args.steps, init=_schedule(trained[start].options()))
        if args.regularizer is not None:
            ia_options["regularizer"] = args.regularizer
        ia = learned("instance-aware", "instance_aware", **ia_options)
        tuned = learned("global fine-tune", "instance_aware", **ia_options, per_sample=False)
        # the per-sample network on top of that fine-tuned global optimum (its p1, p2 as the start)
        learned(ON_TUNED, "instance_aware", **{**ia_options, "init": tuned.options()})
        if classed and not args.no_oracle:
            rows["per-class best"], picked = oracle(model, grid, args, cache_dir, cls_eval, errors, seconds,
                                                    shared, teacher, tg)

        est = {k: bootstrap_mean(v) for k, v in rows.items()}
        glob = min(("LD3", "GITS"), key=lambda k: est[k].value)
        ratio = paired_ratio(rows["instance-aware"], rows[glob])
        own = paired_ratio(rows["instance-aware"], rows["global fine-tune"])
        on_tuned = paired_ratio(rows[ON_TUNED], rows["global fine-tune"])
        tuned_ratio = paired_ratio(rows[ON_TUNED], rows[glob])
        cost = overhead(ia, den, x_T, model)
        spread = _spread(ia, x_T, model)
        res = {"error": {k: [e.value, e.low, e.high] for k, e in est.items()}, "best_global": glob,
               "init": start, "held_out_teacher_error": held_out,
               "ratio": [ratio.value, ratio.low, ratio.high], "wins": ratio.high < 1,
               "ratio_to_fine_tune": [own.value, own.low, own.high],
               "fine_tune_start_ratio": [on_tuned.value, on_tuned.low, on_tuned.high],
               "fine_tune_start_vs_best_global": [tuned_ratio.value, tuned_ratio.low, tuned_ratio.high],
               "seconds": seconds,
               "kept_step": ia.metadata["training"].get("kept_step"),
               "spread_log_sigma": spread, **cost}
        print(f"\nNFE {nfe} (N = {nfe + 2} points, AFS, base UniPC bh1-3): mean relative endpoint error, 95 % "
              "bootstrap interval")
        for k, e in est.items():
            t = f"   distilled in {seconds[k]:.1f} s" if k in seconds else ""
            print(f"  {k:<{WIDTH}} {e.value:.4f}  [{e.low:.4f}, {e.high:.4f}]{t}")
        verdict = "wins" if res["wins"] else ("LOSES" if ratio.low > 1 else "no separable difference")
        print(f"  instance-aware / best global learned ({glob}): {ratio.value:.3f} [{ratio.low:.3f}, "
              f"{ratio.high:.3f}] (paired bootstrap) -> {verdict}")
        print(f"  instance-aware / global fine-tune (same start, data, teacher and steps; what the per-sample "
              f"grids add over training one grid further): {own.value:.3f} [{own.low:.3f}, {own.high:.3f}]")
        print(f"  {ON_TUNED} / global fine-tune (the per-sample grids on top of the fine-tuned global "
              f"optimum): {on_tuned.value:.3f} [{on_tuned.low:.3f}, {on_tuned.high:.3f}]; / best global learned "
              f"({glob}): {tuned_ratio.value:.3f} [{tuned_ratio.low:.3f}, {tuned_ratio.high:.3f}]")
        print(f"  instance-aware started from {start}'s schedule (the better on the held-out teacher pairs: "
              + ", ".join(f"{k} {v:.4f}" for k, v in held_out.items() if k in ("LD3", "GITS")) + ")")
        print(f"  kept the step-{res['kept_step']} parameters (lowest held-out error; phase two starts at "
              f"step {round(ia.global_fraction * args.steps)})")
        print(f"  per-sample grids: std of log sigma across samples {spread:.4f} (mean over interior points); "
              f"network {cost['parameters']} parameters, overhead {cost['overhead']:.2f} denoiser calls "
              f"({cost['predict_ms']:.3f} ms to predict {E} grids, {cost['denoiser_ms']:.3f} ms per call)")
        if classed:
            res["per_class"] = {**per_class(rows, cls_eval, model), "picked": picked}
            if picked:
                print(f"  per-class best: {', '.join(f'class {k} {n}' for k, n in enumerate(picked))} (the better "
                      "on each class's held-out teacher pairs)")
        out["nfe"][nfe] = res
    return out


def oracle(model, grid, args, cache_dir, cls_eval, errors, seconds, shared, teacher, tg):
    """Per-class global schedules: for each component c, LD3 and GITS trained on the training seeds whose exact
    endpoint lies in c; the one with the lower error against the teacher on the held-out seeds of class c is
    applied to the evaluation samples of class c. Their per-sample errors, merged (and which won, per class)."""
    import torch

    from bench.distill import distill
    from bench.metrics.analytic import relative_l2

    pools = {"train_seeds": range(1_000_000_000, 1_000_000_000 + 4 * shared["num_samples"]),
             "eval_seeds": range(2_000_000_000, 2_000_000_000 + 4 * shared["eval_samples"])}
    classes = {}
    for key, seeds in pools.items():
        seeds = list(seeds)
        x = model.noise(seeds)
        classes[key] = (seeds, model.component_of(model.reference_solution(x, model.sigma_max, model.sigma_min)))
    merged = torch.full((cls_eval.numel(),), math.nan, dtype=torch.float64)
    den, picked = model.denoiser(), []
    t0 = time.perf_counter()
    for k in range(len(model.pi)):
        opts = {key: [s for s, c in zip(seeds, cl.tolist()) if c == k][:shared[size]]
                for (key, (seeds, cl)), size in zip(classes.items(), ("num_samples", "eval_samples"))}
        if not opts["train_seeds"] or not opts["eval_seeds"]:
            raise InputError(f"{model.name}: component {k} has no training or held-out seeds for the per-class "
                             "schedules; use --no-oracle")
        rest = {k2: v for k2, v in shared.items() if k2 not in ("num_samples", "eval_samples")}
        candidates = {
            "LD3": distill("ld3", model, grid, afs=True, seed=args.seed, cache_dir=cache_dir, **rest, **BASE,
                           **opts, steps=args.ld3_steps, lr=2e-2, batch_size=16),
            "GITS": distill("gits", model, grid, afs=True, seed=args.seed, cache_dir=cache_dir,
                            teacher_steps=args.teacher_steps, train_seeds=opts["train_seeds"][:256], **BASE)}
        val_x = model.noise(opts["eval_seeds"])
        with torch.no_grad():
            val_ref = teacher.sample(den, val_x, tg).double()
            held = {n: float(relative_l2(c.sample(den, val_x, grid, afs=True).double(), val_ref).mean())
                    for n, c in candidates.items()}
        best = min(held, key=held.get)
        picked.append(best)
        mask = cls_eval == k
        merged[mask] = errors(candidates[best], grid)[mask]
    seconds["per-class best"] = time.perf_counter() - t0
    return merged, picked


def per_class(rows, cls_eval, model) -> dict:
    """Each row's mean error on the evaluation samples ending in each component (printed and returned)."""
    counts = [int((cls_eval == k).sum()) for k in range(len(model.pi))]
    print("  per class (mean error on the samples ending in each component; its sample count):")
    print(f"  {'':<{WIDTH}}" + "".join(f"{f'class {k} (n={n})':>16}" for k, n in enumerate(counts)))
    table = {}
    for label, e in rows.items():
        vals = [float(e[cls_eval == k].mean()) if counts[k] else math.nan for k in range(len(counts))]
        table[label] = vals
        print(f"  {label:<{WIDTH}}" + "".join(f"{v:16.4f}" for v in vals))
    return {"counts": counts, "error": table}


def overhead(ia, den, x_T, model) -> dict:
    """The network's parameters; the wall time of predicting the grids of x_T over one denoiser call on x_T."""
    import torch

    def timed(fn, repeats=21) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    sigma = torch.full((x_T.shape[0],), float(model.sigma_max), dtype=x_T.dtype)
    with torch.no_grad():
        p = timed(lambda: ia.predict(x_T, model.sigma_max, model.sigma_min))
        d = timed(lambda: den(x_T, sigma))
    return {"parameters": ia.learns()["network"], "predict_ms": 1e3 * p, "denoiser_ms": 1e3 * d, "overhead": p / d}


def _schedule(options: dict):
    """A trained global schedule as the instance-aware `init`: LD3's positions and offsets, or GITS's grid."""
    if "positions" in options:
        return {"positions": options["positions"], "offsets": options["offsets"]}
    return options["timesteps"]


def _spread(ia, x_T, model) -> float:
    xi = ia.grids(x_T, model.sigma_max, model.sigma_min)
    return float(xi[:, 1:-1].log().std(0).mean()) if xi.shape[1] > 2 else 0.0


def summary(report, nfes) -> None:
    print("\nsummary: paired 95 % intervals of endpoint-error ratios; the target is an upper end below 1 against the "
          "best global learned schedule (LD3, GITS)")
    columns = (("instance-aware / LD3, GITS", "ratio", True), ("/ fine-tune", "ratio_to_fine_tune", False),
               (f"{ON_TUNED} / LD3, GITS", "fine_tune_start_vs_best_global", True),
               ("/ fine-tune", "fine_tune_start_ratio", False))
    for n in nfes:
        print(f"NFE {n}\n{'model':<12}" + "".join(f"{title:>{36 if target else 22}}" for title, _, target in columns))
        for name, m in report["models"].items():
            c = m["nfe"][n]
            cells = []
            for _, key, target in columns:
                v = c[key]
                text = f"{v[0]:.3f} [{v[1]:.3f},{v[2]:.3f}]"
                if target:
                    text += f" {'met' if v[2] < 1 else 'MISSED':<6}"
                cells.append(text.rjust(36 if target else 22))
            print(f"{name:<12}" + "".join(cells))
