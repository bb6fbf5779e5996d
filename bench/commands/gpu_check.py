"""`python -m bench gpu-check`: a miniature `paper_table1` on random-weight stand-ins of the real architectures
(bench/standins.py), end to end, before the real checkpoints are downloaded.

What it runs, with no file from the internet:
  1. the paper grid's structure on five stand-ins: EDM pixel models (unconditional and class-conditional, AFS), the
     LSUN LDM (VQ latents), Stable Diffusion (classifier-free guidance, 2 evaluations per step) and FLUX (flow time,
     bfloat16); handcrafted solvers, DyWeight distilled per (model, NFE) with the paper's Inception loss on decoded
     images (the FLUX recipe of dyweight_flux/ on FLUX), AMED-Solver reading the U-Net bottleneck by a forward hook
     (EDM, LDM and SD stand-ins), and the released coefficients on the EDM and FLUX stand-ins;
     FID on every cell, computed with a random TorchScript stand-in of TF-Inception and reference statistics made
     here (they exercise the FID code, their values mean nothing);
  2. one model at a time in this process, printing its wall time, the time its network alone takes for the same
     calls (timed separately at the cell's batch size) and their ratio, the distillation time and the peak GPU
     memory;
  3. the whole grid again under torchrun (NCCL on CUDA, one process per GPU up to --nproc, at least 2; gloo with 2
     processes on the CPU), distilling every learned solver data-parallel over the ranks; both passes sample the
     same batches, and the stored values must agree within TOLERANCE;
  4. on CUDA, paper_table1's DyWeight distillation at its real batch plan on the real architectures at full size
     with random weights (EDM's CIFAR-10 DDPM++ at NFE 9, SD v1.5's UNet at NFE 20): the memory plan the run would
     make (bench.distill.memory), two optimiser steps, and the measured peak against the planned one.

On CUDA the reference precisions are the defaults: fp16 autocast for the LDM and SD stand-ins, bfloat16 for FLUX.
Without CUDA it runs the same on the CPU and says what it could not check. Exit code 0 when every cell is stored
as ok and torchrun agrees; 1 otherwise.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.cli import UsageError
from solvers.errors import one_line

HELP = "check a (GPU) machine: a miniature paper_table1 on random-weight stand-ins, torchrun included"

# The largest relative difference allowed between the single process and torchrun, per (row kind, CUDA). Both
# passes sample the same batches, so a fixed solver's values differ by rounding alone (none on the CPU; kernels'
# nondeterminism and fp16/bf16 on a GPU). A distilled solver is trained data-parallel under torchrun: its gradients
# are summed over ranks in another order and the teacher's pairs made in shards, and Adam's normalised steps carry
# those float32 rounding differences (~1e-7) into coefficients differing by ~1e-4 after a few steps, which an FD
# of a few samples magnifies (measured on the CPU stand-ins: up to 2e-3); a wrong shard or seed moves it by O(1).
TOLERANCE = {("fixed", False): 1e-6, ("fixed", True): 1e-3, ("distilled", False): 2e-2, ("distilled", True): 5e-2}

MODELS = {  # stand-in -> (NFEs, AFS for the pixel/LDM rows, the paper model it stands for)
    "standin_edm": ([3, 5], True, "cifar10 / ffhq / afhqv2"),
    "standin_edm_cond": ([3], True, "imagenet64"),
    "standin_lsun": ([3], True, "lsun_bedroom"),
    "standin_sd": ([4], False, "sd15"),
    "standin_flux": ([3], False, "flux"),
}
NEEDS = {"standin_lsun": ("diffusers",), "standin_sd": ("diffusers", "transformers"),   # Python packages beyond
         "standin_flux": ("diffusers", "transformers")}                                # the base install


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, help="working folder (default: a temporary folder, removed at the end)")
    parser.add_argument("--size", default=None, help="stand-in size: tiny or small (default: small on CUDA, "
                                                     "tiny on the CPU)")
    parser.add_argument("--num-samples", type=int, default=None, help="samples per cell (default 64 on CUDA, 8 on "
                                                                      "the CPU)")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes at most (default 2)")
    parser.add_argument("--no-torchrun", action="store_true", help="skip the torchrun part")
    parser.add_argument("--no-full-width", action="store_true", help="skip the full-size memory-plan check (CUDA)")
    parser.add_argument("--models", nargs="+", default=None, help=f"stand-ins (default: all of "
                                                                  f"{', '.join(MODELS)} whose packages are installed)")


def grid_dict(name: str, models: list[str], size: str, num_samples: int, batch_size: int, inception: Path,
              reference: Path, steps: int) -> dict:
    """The miniature paper grid as a grid table (bench.grid.from_dict): the paper's rows per model kind,
    distillation settings scaled down."""
    fid = {"fid": {"inception": str(inception), "reference": str(reference), "num_samples": num_samples}}
    raw = {"name": name, "description": "bench gpu-check: a miniature paper_table1 on stand-ins",
           "num_samples": num_samples, "batch_size": batch_size, "seed_start": 0, "nfe": [3], "solvers": [],
           "models": [{"name": m, "options": {"size": size}, "nfe": MODELS[m][0], "metrics": ["fid"],
                       "metric_options": fid} for m in models]}

    def small(batch: int) -> dict:
        return {"num_samples": 2 * batch_size, "eval_samples": batch_size, "batch_size": batch, "steps": steps,
                "teacher_steps": 8}

    def entry(label: str, name: str, group: list, **table) -> None:
        if group:
            raw["solvers"].append({"name": name, "label": label, "models": group, **table})

    pixel = [m for m in models if MODELS[m][1]]
    guided = [m for m in models if m == "standin_sd"]
    flux = [m for m in models if m == "standin_flux"]
    batch = min(batch_size, 8)
    entry("iPNDM", "ipndm", pixel, afs=True)
    entry("DPM-Solver++(3M)", "dpm_solver_pp", pixel, options={"order": 3}, afs=True)
    entry("DyWeight", "dyweight", pixel, afs=True, distill={"loss": "inception", **small(batch)})
    entry("AMED-Solver", "amed", pixel, afs=True,               # reads the U-Net bottleneck by a forward hook
          distill={"features": "bottleneck", **small(batch)})
    entry("DyWeight (released)", "dyweight", [m for m in pixel if m == "standin_edm"], afs=True, released=True)
    entry("iPNDM", "ipndm", guided, options={"max_order": 2})
    entry("DPM-Solver++(2M)", "dpm_solver_pp", guided, options={"order": 2})
    entry("DyWeight", "dyweight", guided, distill={"history": 2, "loss": "inception", **small(batch)})
    entry("AMED-Solver", "amed", guided,                         # the conditional half of the guided pass
          distill={"features": "bottleneck", **small(batch)})
    entry("iPNDM", "ipndm", flux, options={"max_order": 2}, time="flow")
    entry("DPM-Solver++(2M)", "dpm_solver_pp", flux, options={"order": 2}, time="flow")
    recipe = {"teacher": "euler", "teacher_denoise": False, "loss": "mse", "history": 2, "init": "euler",
              "divisor": "scaled", "time_scale_bounds": [0.5, 1.5], "optimizer": "adamw", "weight_decay": 5e-2,
              "lr": 1e-3, "warmup": 0.0, "lr_final": 0.0, "accumulate": 2, "checkpoint": True, **small(1)}
    entry("DyWeight", "dyweight", flux, time="flow", distill=recipe)
    entry("DyWeight (released)", "dyweight", flux, time="flow", released=True)
    return raw


def single_pass(models: list[str], table, out: Path, batch: int, device, cuda: bool) -> list[str]:
    """Each stand-in's grid in this process, one at a time: print its wall, network and distillation time and peak
    memory; return the problems (a crash, a failed cell)."""
    from bench import grid as grids
    from bench import run as runner
    from bench import store as results
    problems = []
    print(f"\n{'stand-in for':<24} {'cells':>5} {'wall s':>8} {'network s':>9} {'ratio':>6} {'distil s':>8} "
          f"{'peak GPU':>9}")
    for m in models:
        g = grids.from_dict(table("gpu_check", [m]))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            # one torch thread on the CPU, as each torchrun rank has: float sums in the same order in both passes
            summary = runner.run(g, out, progress=False, out=lambda s: None, threads=None if cuda else 1)
        except Exception as err:                     # a crash is the finding: report it and check the rest
            problems.append(f"{m}: {type(err).__name__}: {one_line(err)}")
            print(f"{MODELS[m][2]:<24} CRASHED: {problems[-1]}")
            continue
        wall = time.perf_counter() - t0
        rows = results.load(out)
        rows = rows[rows.model == m]
        sampled = float(rows.drop_duplicates("cell_key").wall_time.sum())
        net = network_seconds(g.models[m], g.cells, batch, device)
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else "-"
        print(f"{MODELS[m][2]:<24} {len(g.cells):>5} {wall:>8.1f} {net:>9.2f} {sampled / max(net, 1e-9):>6.1f} "
              f"{summary.distill_seconds:>8.1f} {peak:>9}")
        problems += [f"{m} / {r.label} / NFE {r.nfe}: {r.error}" for r in rows[rows.status != "ok"].itertuples()]
        g.models[m].release()
    print("(ratio: the cells' wall time over their network time; distillation is not in either)")
    return problems


def torchrun_pass(table: dict, work: Path, nproc: int, cuda: bool) -> list[str]:
    """The whole grid again under torchrun with `nproc` processes, every distillation data-parallel; its values
    against the single pass's (compare_runs)."""
    import json

    from bench import store as results
    path = work / "combined.json"
    path.write_text(json.dumps(table, indent=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "bench", "run", "--grid", str(path), "--results-dir", str(work / "torchrun"), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - t0
    backend = "nccl" if cuda else "gloo"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return [f"torchrun ({backend}, {nproc} processes) exited {proc.returncode}: " + " | ".join(tail)]
    found, problems = compare_runs(results.load(work / "single"), results.load(work / "torchrun"), cuda)
    print(f"\ntorchrun ({backend}, {nproc} processes, every distillation data-parallel over them) in {wall:.1f} s; "
          "largest relative difference to the single process: "
          + "; ".join(f"{g} solvers {d:.1e} over {k} values (tolerance {TOLERANCE[g, cuda]:.0e})"
                      for g, (d, k) in found.items()))
    return problems


def network_seconds(model, cells, batch_size: int, device: str) -> float:
    """The time the model's network alone takes for every denoiser call of `cells` (timed at the batch size)."""
    total = 0.0
    for c in cells:
        problem = model.view(c.plan.time)
        seeds = list(range(batch_size))
        den = problem.denoiser(problem.conditions(seeds))
        x = problem.noise(seeds)
        sigma = torch.full((batch_size,), float(c.plan.sigmas[1]), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            den(x, sigma)                                             # warm-up
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(3):
                den(x, sigma)
            _sync(device)
        per_call = (time.perf_counter() - t0) / 3
        total += per_call * c.plan.calls * -(-c.num_samples // batch_size)
    return total


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _shape(args, cuda: bool) -> tuple[str, int, int, int]:
    """The check's stand-in size, samples per cell, torchrun ranks (0: none) and sampling batch, from the command
    line and the device."""
    from bench import standins
    unknown = [m for m in args.models or [] if m not in MODELS]
    if unknown:
        raise UsageError(f"unknown stand-in {unknown[0]!r}; accepted: {', '.join(MODELS)}")
    for m in args.models or []:
        missing = [pkg for pkg in NEEDS.get(m, ()) if not _has_module(pkg)]
        if missing:
            raise UsageError(f"stand-in {m} needs {', '.join(missing)}: pip install -e '.[models]'")
    size = args.size or ("small" if cuda else "tiny")
    if size not in standins.SIZES:
        raise UsageError(f"unknown --size {size!r}; accepted: {', '.join(standins.SIZES)}")
    n = args.num_samples or (64 if cuda else 8)
    if n < 4:
        raise UsageError(f"--num-samples must be at least 4, got {n}")
    nproc = 0 if args.no_torchrun else (2 if not cuda else max(1, min(args.nproc, torch.cuda.device_count())))
    # Both passes sample the same batches: a rank's shard of a cell's seeds is one contiguous block of
    # ceil(n / nproc) seeds (Dist.shard), so batches of a divisor of that size hold the same samples in both.
    per = -(-n // nproc) if nproc >= 2 else n
    batch = max(d for d in range(1, min(16, per) + 1) if per % d == 0)
    return size, n, nproc, batch


def main(args) -> int:
    from bench import standins
    from bench.metrics.fid import write_reference
    from bench.models import devices
    cuda = torch.cuda.is_available()
    device = devices.device(None)
    size, n, nproc, batch = _shape(args, cuda)
    models = args.models or [m for m in MODELS if all(_has_module(pkg) for pkg in NEEDS.get(m, ()))]
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = [f"{m} ({', '.join(p for p in NEEDS[m] if not _has_module(p))} not installed: "
                          "pip install -e '.[models]')" for m in MODELS if m not in models and args.models is None]
    problems: list[str] = []
    checked: list[str] = []
    print(f"torch {torch.__version__}; device {device}"
          + (f" ({torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB,"
             f" {torch.cuda.device_count()} visible, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'})"
             if cuda else "") + f"; stand-ins {size}, {n} samples per cell; folder {work}")
    if not cuda:
        skipped += ["CUDA device placement", "fp16 autocast of the LDM/SD stand-ins (CUDA only)",
                    "bfloat16 on a GPU", "peak GPU memory", "NCCL"]

    # ---- files a real run downloads: stand-ins made here ------------------------------------------------------
    inception = standins.write_inception(work / "inception-standin.pt")
    os.environ["FEWSTEP_INCEPTION"] = str(inception)              # the distillation's Inception loss reads it
    g = torch.Generator().manual_seed(0)
    reference = write_reference(torch.rand(256, 3, 32, 32, generator=g) * 2 - 1, work / "fid-ref-standin.npz",
                                inception=inception)
    steps = 20 if cuda else 4

    # ---- 2. one model at a time, in this process; 3. the whole grid under torchrun ---------------------------
    table = functools.partial(grid_dict, size=size, num_samples=n, batch_size=batch, inception=inception,
                              reference=reference, steps=steps)
    problems += single_pass(models, table, work / "single", batch, device, cuda)
    if args.no_torchrun:
        skipped.append("torchrun (--no-torchrun)")
    elif shutil.which("torchrun") is None and not _has_module("torch.distributed.run"):
        skipped.append("torchrun (not installed)")
    elif nproc < 2:
        skipped.append("torchrun and NCCL (one GPU visible; data parallelism needs 2)")
    else:
        problems += torchrun_pass(table("gpu_check", models), work, nproc, cuda)
        checked.append("torchrun agrees")
    # ---- 4. full-size distillations against their memory plans -----------------------------------------------
    if not cuda:
        skipped.append("full-size distillation memory plans (CUDA only)")
    elif args.no_full_width:
        skipped.append("full-size distillation memory plans (--no-full-width)")
    else:
        full = [(m, b) for m, b in FULL_WIDTH if b != "full_sd" or _has_module("diffusers")]
        skipped += [f"full-size {b} (diffusers not installed)" for m, b in FULL_WIDTH if (m, b) not in full]
        problems += full_width(device, builders=full)
        checked.append("full-size peaks within their plans")
    if skipped:
        print("\nnot checked here: " + "; ".join(skipped))
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
    else:
        print("\n" + ", ".join(["all cells ok", *checked]))
    if args.out is None and not problems:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


FULL_WIDTH = (("cifar10", "full_edm"), ("sd15", "full_sd"))   # paper model -> bench.standins full-size builder
PLAN_SLACK = 1.25        # a measured peak above the planned one by more than this is a finding


def full_width(device, steps: int = 2, builders=None) -> list[str]:
    """Distil paper_table1's DyWeight row at its largest NFE for each FULL_WIDTH model, on the real architecture at
    full size, with the row's settings (its batch, loss, teacher) but `steps` optimiser steps on one batch of
    pairs; print the plan and the peak; return problems (an out-of-memory, or a peak over the plan's)."""
    from bench import grid as grids
    from bench import standins
    from bench.distill import distill, validate
    from bench.distill.memory import GiB, budget_of
    from bench.grid.expand import distill_options
    grid = grids.load("paper_table1")
    problems = []
    print(f"\nfull-size distillations (paper_table1's recipe, {steps} steps; random weights):")
    for paper_model, builder in builders if builders is not None else FULL_WIDTH:
        cell = max((c for c in grid.cells if c.model == paper_model and c.row.name == "dyweight" and c.row.distill),
                   key=lambda c: c.nfe)
        model = getattr(standins, builder)(device=str(device))
        source = model.view(cell.plan.time)
        options = distill_options(cell.row.distill, cell.row.label)
        sigmas = list(cell.plan.source_sigmas)
        batch = validate(cell.row.name, sigmas, cell.row.afs, source, **options)[1].batch_size
        options.update(steps=steps, num_samples=batch, eval_samples=0)
        what = f"{paper_model} ({builder}), NFE {cell.nfe}, batch {batch}"
        model.preflight()                                      # the networks on the device before measuring
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start, budget = torch.cuda.memory_allocated(), budget_of(device)
        t0 = time.perf_counter()
        try:
            solver = distill(cell.row.name, source, sigmas, afs=cell.row.afs, cache_dir=False, memory="auto",
                             **options)
        except torch.cuda.OutOfMemoryError as err:
            problems.append(f"{what}: out of device memory despite the plan: {one_line(err)}")
            print(f"  {what}: OUT OF MEMORY")
            continue
        except (ValueError, RuntimeError) as err:          # the plan refused it, or the distillation broke
            problems.append(f"{what}: {type(err).__name__}: {one_line(err)}")
            print(f"  {what}: FAILED ({problems[-1]})")
            continue
        finally:
            model.release()
        peak, record = torch.cuda.max_memory_allocated() - start, solver.metadata["training"]
        planned = record.get("memory_peak")
        print(f"  {what}: {record.get('memory', 'no plan')}\n    measured peak {peak / GiB:.1f} GiB above the "
              f"loaded weights (free at start {budget / GiB:.0f} GiB), {time.perf_counter() - t0:.0f} s")
        if planned is not None and peak > PLAN_SLACK * planned:
            problems.append(f"{what}: measured peak {peak / GiB:.1f} GiB exceeds the plan's {planned / GiB:.1f} GiB "
                            f"by more than {PLAN_SLACK - 1:.0%}")
    return problems


def compare_runs(single, parallel, cuda: bool) -> tuple[dict, list[str]]:
    """Per row group (fixed solvers, distilled ones): (largest relative difference, values compared), and the
    problems: a value missing from either run, or a difference over the group's TOLERANCE."""
    key = ["model", "label", "nfe", "metric"]
    out, problems = {}, []
    for group, mask in (("fixed", lambda d: d.kind != "distilled"), ("distilled", lambda d: d.kind == "distilled")):
        a = single[(single.status == "ok") & mask(single)].set_index(key).value
        b = parallel[(parallel.status == "ok") & mask(parallel)].set_index(key).value
        common = a.index.intersection(b.index)
        if len(common) != len(a) or len(common) != len(b):
            problems.append(f"torchrun stored {len(b)} {group} values, the single process {len(a)}, "
                            f"{len(common)} in common")
        if not len(common):
            continue
        rel = (a[common] - b[common]).abs() / a[common].abs().clip(lower=1e-12)
        worst = rel.idxmax()
        out[group] = (float(rel.max()), len(common))
        if not rel.max() <= TOLERANCE[group, cuda]:
            problems.append(f"torchrun's {group} values differ from the single process: {' / '.join(map(str, worst))}"
                            f" by {rel.max():.2e} (tolerance {TOLERANCE[group, cuda]:.0e})")
    return out, problems


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None
