"""`python -m bench digits-check`: the quality figures of the shipped digits model, printed, plus a sample grid PNG.

1. how the weights were made (from the records beside them) and the classifier's held-out accuracy;
2. the floors of FD-digits / FD-pixels: real vs real (1,297 training digits vs the 500 held-out) and noise;
3. the 35-step teacher (iPNDM, no AFS, final D(x, sigma_min)) and the handcrafted solvers of the `quick` grid
   (Euler, iPNDM, DPM-Solver++(3M), UniPC, all with AFS) at NFE 3 and 5, on the same seeds;
4. DyWeight distilled from the teacher at NFE 3 and 5 (bench.distill; --no-distill skips it);
5. verdicts: teacher far below Euler at NFE 3; DyWeight below the best handcrafted solver at each NFE.
FD-digits is a miniature analogue of FID in a small classifier's feature space, never Inception FID.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from solvers.errors import InputError

HELP = "print the digits model's quality figures (FD-digits, FD-pixels; teacher, solvers, DyWeight) and save a PNG"

HANDCRAFTED = [("euler", "Euler", {}), ("ipndm", "iPNDM", {}), ("dpm_solver_pp", "DPM-Solver++(3M)", {"order": 3}),
               ("unipc", "UniPC", {"order": 3, "variant": "bh2"})]


def add_arguments(p) -> None:
    p.add_argument("--samples", type=int, default=500, help="samples per row, seeds 0..N-1 (default 500)")
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 5], help="NFE budgets (default 3 5)")
    p.add_argument("--no-distill", action="store_true", help="skip the DyWeight distillation")
    p.add_argument("--distill-samples", type=int, default=1024,
                   help="teacher pairs for the distillation (default 1024, a quarter of bench.distill's default: "
                        "~10 CPU-minutes for NFE 3 and 5)")
    p.add_argument("--distill-steps", type=int, default=None, help="distillation steps (default: bench.distill's)")
    p.add_argument("--cache-dir", default=None, help="teacher cache (default: bench.distill's cache dir)")
    p.add_argument("--png", default="reports/digits_samples.png", help="sample grid (default reports/digits_samples.png)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def _sample(model, solver_name, options, nfe, afs, seeds, denoise=False, num_points=None):
    import solvers
    solver = solvers.get(solver_name, **options)
    n = num_points or solver.num_points(nfe, afs=afs)
    sigmas = model.grid(n)
    with torch.no_grad():
        x = solver.sample(model.denoiser(), model.noise(seeds), sigmas, afs=afs, denoise_to_zero=denoise)
    return model.decode(x)


def main(args) -> int:
    from bench import models
    from bench.metrics import digits as M
    from bench.models.digits import load_classifier, weights_dir
    from bench.nets import data
    from bench.nets.train import accuracy

    if args.samples < 10:
        raise InputError("--samples must be at least 10")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = models.get("digits")
    model.check_available()
    rows, out = [], {"samples": args.samples}

    def row(name, nfe, afs, x, seconds):
        r = {"solver": name, "nfe": nfe, "afs": afs, "fd_digits": M.fd_features(x), "fd_pixels": M.fd_pixel_space(x),
             "seconds": round(seconds, 1)}
        rows.append(r)
        print(f"  {name:<22} NFE {str(nfe):>3}  AFS {'yes' if afs else 'no ':<3}  FD-digits {r['fd_digits']:9.2f}"
              f"  FD-pixels {r['fd_pixels']:7.3f}  ({seconds:.1f} s)", flush=True)
        return r

    # 1. records
    wdir = weights_dir()
    for name in ("unet", "classifier"):
        rec_path = wdir / f"{name}.json"
        if rec_path.exists():
            rec = json.loads(rec_path.read_text())
            extra = (f"final train loss {rec.get('final_train_loss', float('nan')):.4f}, held-out EMA loss "
                     f"{rec.get('final_heldout_loss_ema', float('nan')):.4f}" if name == "unet"
                     else f"held-out accuracy (at training) {rec.get('heldout_accuracy', float('nan')):.4f}")
            print(f"{name}: {rec['parameters']:,} parameters, {rec['steps']} steps x batch {rec['batch_size']}, "
                  f"seed {rec['seed']}, {rec['wall_time'] / 60:.1f} min; {extra}")
    x_held, y_held = data.digits("heldout")
    x_train, _ = data.digits("train")
    out["classifier_heldout_accuracy"] = accuracy(load_classifier(), x_held, y_held)
    print(f"classifier accuracy on the {len(x_held)} held-out digits: {out['classifier_heldout_accuracy']:.4f}")

    # 2. floors
    noise = model.decode(model.noise(range(args.samples)))
    print(f"\nFD-digits (miniature FID analogue: 64-d classifier features) and FD-pixels (16x16) vs the "
          f"{len(x_held)} held-out digits; {args.samples} generated samples (seeds 0-{args.samples - 1}) per row")
    out["real_vs_real"] = row(f"real ({len(x_train)} train)", "-", False, x_train, 0.0)
    out["real500_vs_real"] = row("real (500 train)", "-", False, x_train[:500], 0.0)
    out["noise"] = row("noise (x_T, clamped)", "-", False, noise[:args.samples], 0.0)

    # 3. teacher and handcrafted solvers
    seeds = range(args.samples)
    t0 = time.perf_counter()
    teacher = _sample(model, "ipndm", {}, None, False, seeds, denoise=True, num_points=36)
    out["teacher"] = row("teacher iPNDM 35 steps", 35, False, teacher, time.perf_counter() - t0)
    grids = {"teacher": teacher}
    for nfe in args.nfe:
        for name, label, opts in HANDCRAFTED:
            t0 = time.perf_counter()
            x = _sample(model, name, opts, nfe, True, seeds)
            row(label, nfe, True, x, time.perf_counter() - t0)
            grids[f"{label} NFE {nfe}"] = x

    # 4. DyWeight
    if not args.no_distill:
        from bench.distill import distill
        options = {"num_samples": args.distill_samples}
        if args.distill_steps:
            options["steps"] = args.distill_steps
        for nfe in args.nfe:
            import solvers
            t0 = time.perf_counter()
            sigmas = model.grid(solvers.solver_class("dyweight").budget_probe().num_points(nfe, afs=True))
            student = distill("dyweight", model, sigmas, afs=True, seed=0, cache_dir=args.cache_dir, **options)
            t_distill = time.perf_counter() - t0
            with torch.no_grad():
                x = model.decode(student.sample(model.denoiser(), model.noise(seeds), sigmas, afs=True))
            r = row("DyWeight (distilled)", nfe, True, x, time.perf_counter() - t0)
            r["distill_seconds"] = round(t_distill, 1)
            grids[f"DyWeight NFE {nfe}"] = x

    # 5. verdicts
    print()
    teacher_fd = out["teacher"]["fd_digits"]
    for nfe in args.nfe:
        hand = [r for r in rows if r["nfe"] == nfe and r["solver"] in [h[1] for h in HANDCRAFTED]]
        best = min(hand, key=lambda r: r["fd_digits"])
        euler = next(r for r in hand if r["solver"] == "Euler")
        print(f"NFE {nfe}: teacher FD-digits {teacher_fd:.2f} vs Euler {euler['fd_digits']:.2f} "
              f"({euler['fd_digits'] / teacher_fd:.1f}x); best handcrafted {best['solver']} {best['fd_digits']:.2f}")
        dy = [r for r in rows if r["nfe"] == nfe and r["solver"].startswith("DyWeight")]
        if dy:
            d = dy[0]["fd_digits"]
            print(f"        DyWeight {d:.2f} -> {'IMPROVES on' if d < best['fd_digits'] else 'does NOT improve on'} "
                  f"the best handcrafted solver ({(best['fd_digits'] - d) / best['fd_digits'] * 100:+.0f}%)")
    out["rows"] = rows
    if args.png:
        _save_png(Path(args.png), x_held, grids)
        print(f"\nsample grid: {args.png}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _save_png(path: Path, real: torch.Tensor, grids: dict, per_row: int = 16) -> None:
    """One panel per sampler (two rows of `per_row` samples, seeds 0..2*per_row-1), real digits on top."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"real (held-out)": real, **grids}
    fig, axes = plt.subplots(len(panels), 1, figsize=(per_row * 0.5, len(panels) * 1.25))
    for ax, (title, x) in zip(axes, panels.items()):
        imgs = x[:2 * per_row, 0].clamp(-1, 1)
        tiles = torch.cat([torch.cat(list(imgs[r * per_row:(r + 1) * per_row]), dim=1) for r in range(2)], dim=0)
        ax.imshow(tiles.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
