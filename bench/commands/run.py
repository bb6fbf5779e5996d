"""`python -m bench run --grid NAME`: evaluate every cell of a grid, resumably (bench.run)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from solvers.errors import InputError

HELP = "run a grid (models × solvers × NFEs × metrics); rerunning resumes where it stopped"


def add_arguments(parser) -> None:
    parser.add_argument("--grid", required=True,
                        help="a shipped grid name (see `python -m bench list`) or a .toml path")
    parser.add_argument("--results-dir", default="results", type=Path,
                        help="where results are stored (default: results)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the cells, the files they need and their cost in network evaluations; run nothing")
    parser.add_argument("--num-samples", type=int, help="override the grid's samples per cell (e.g. a fast check)")
    parser.add_argument("--seeds", metavar="A-B", help="the seeds of every cell, EDM's syntax (e.g. 0-49999): sets "
                                                       "seed_start = A and num_samples = B - A + 1")
    parser.add_argument("--batch-size", type=int, help="override the grid's batch size (results do not depend on it)")
    parser.add_argument("--nfe", type=int, nargs="+", help="override the grid's NFE list")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any grid value, e.g. --set num_samples=200 or "
                             "--set 'solvers[DyWeight].distill.steps=50' (repeatable; values are TOML)")
    parser.add_argument("--solver", action="append", default=[], metavar="FILE.py:CLASS",
                        help="add a user's solver as a row of the grid (path/to/file.py:Class or module:Class; "
                             "repeatable)")
    parser.add_argument("--distill", action="store_true",
                        help="distil the --solver rows (learned solvers) per model and NFE with the defaults")
    parser.add_argument("--threads", type=int, help="torch threads (default: from the work, 1 for the embedded "
                                                    "models; torch's default for real networks)")
    parser.add_argument("--save-samples", type=Path, metavar="DIR",
                        help="also save every cell's samples: one PNG per seed for images (EDM's layout, for other "
                             "FID tools), an .npz per cell otherwise")
    parser.add_argument("--device-memory", metavar="SIZE",
                        help="with --dry-run: plan every distillation for a device of this memory (e.g. 80GiB; "
                             "default: the CUDA device's)")
    parser.add_argument("--ranks", type=int, default=1,
                        help="with --dry-run: plan for this many data-parallel processes (torchrun's nproc)")
    parser.add_argument("--retry-failed", action="store_true", help="recompute cells stored as failed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def overrides(args) -> dict:
    from bench.grid import parse_assignment, parse_seeds
    out = {}
    for key in ("num_samples", "batch_size", "nfe"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    if getattr(args, "seeds", None):
        if getattr(args, "num_samples", None) is not None:
            raise InputError("give --seeds A-B or --num-samples, not both (--seeds sets the sample count)")
        out["seed_start"], out["num_samples"] = parse_seeds(args.seeds)
    for text in getattr(args, "set", None) or []:
        key, value = parse_assignment(text)
        out[key] = value
    return out


def main(args) -> int:
    from bench import grid as grids
    from bench import run as runner
    for key in ("num_samples", "batch_size", "threads"):
        if getattr(args, key) is not None and getattr(args, key) <= 0:
            raise InputError(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
    if args.distill and not args.solver:
        raise InputError("--distill applies to --solver rows; name one with --solver FILE.py:CLASS")
    grid = grids.load(args.grid, overrides(args), [(spec, args.distill) for spec in args.solver])
    if args.dry_run:
        from bench.distill.memory import parse_size
        size = parse_size(args.device_memory) if args.device_memory else None
        if args.ranks < 1:
            raise InputError(f"--ranks must be a positive integer, got {args.ranks}")
        return runner.dry_run(grid, args.results_dir, device_memory=size, ranks=args.ranks)
    summary = runner.run(grid, args.results_dir, progress=not args.no_progress, retry_failed=args.retry_failed,
                         threads=args.threads, save_samples=args.save_samples,
                         command="python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    return summary.exit_code
