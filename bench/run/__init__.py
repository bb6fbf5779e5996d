"""Running a grid: `run(grid, results_dir)` and `dry_run(grid, results_dir)`.

The package's rooms: runner (the loop, threads, summary), build (solvers for cells; distillation on rank 0; saved
solvers read as data), sample (one cell: batches, metrics, estimates, stored rows), progress (the bars), dryrun
(the plan without running), summary (the closing table), dist (processes under torchrun).
"""
from __future__ import annotations

from .build import Builder
from .dist import Dist, RankFailed
from .dist import init as init_distributed
from .dryrun import dry_run, model_line
from .runner import (
                     Summary,
                     build_metrics,
                     check_requirements,
                     choose_threads,
                     code_version,
                     pending,
                     release_others,
                     requirements,
                     run,
)
from .sample import BudgetError, run_cell, sample_batches

__all__ = ["Builder", "run", "dry_run", "pending", "requirements", "check_requirements", "code_version", "Summary",
           "build_metrics", "release_others", "choose_threads", "model_line", "init_distributed", "Dist",
           "RankFailed", "run_cell", "sample_batches", "BudgetError"]
