"""`python -m bench check --baseline FILE`: did any solver get worse than the stored baseline?

How a solver author uses it (README, "Checking a change against the baseline"):
    python -m bench run --grid quick --results-dir /tmp/new             # fresh results
    python -m bench check --baseline results/baselines/quick.csv --results-dir /tmp/new
    python -m bench check --baseline results/baselines/quick.csv --results-dir /tmp/new --update   # accept them
The fresh side is each grid's latest run (or `--run`), one cell per table slot (bench.store.select). The check fails
(exit 1) on a cell that got worse beyond the noise, a cell that failed, a baseline value it cannot use, a missing
cell (unless --allow-missing), and whenever it compared no cell at all; it lists new and uncompared cells.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tabulate import tabulate

from solvers.errors import InputError

HELP = "compare fresh results with a stored baseline; exit 1 listing the cells where a solver got worse"
COLS = ["grid", "model", "label", "nfe", "metric", "baseline", "fresh", "change", "rule", "verdict"]


def add_arguments(parser) -> None:
    parser.add_argument("--baseline", required=True, type=Path, help="baseline CSV (e.g. results/baselines/quick.csv)")
    parser.add_argument("--results-dir", default="results", type=Path, help="fresh results (default: results)")
    parser.add_argument("--run", help="compare this run (an id, a unique prefix, or -2 for each grid's previous run); "
                                      "default: each grid's latest run")
    parser.add_argument("--tolerance", action="append", metavar="RTOL|METRIC=RTOL",
                        help="an explicit allowed relative worsening instead of the intervals (default: a cell "
                             "regressed when it got worse and its 95%% interval is disjoint from the baseline's; "
                             "cells without intervals use 0.02); repeat as METRIC=RTOL per metric")
    parser.add_argument("--abs-tolerance", type=float, default=1e-12, help="allowed absolute worsening added to it")
    parser.add_argument("--grid", action="append", help="only these grids of the baseline (default: all)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="do not fail on baseline cells absent from the fresh results")
    parser.add_argument("--update", action="store_true",
                        help="write the fresh results (of --grid, if given) as the new baseline instead of comparing")


def main(args) -> int:
    from bench.report import regression
    from bench.store.select import select

    rtol, per_metric = regression.parse_tolerances(args.tolerance)
    if not args.results_dir.is_dir():
        raise FileNotFoundError(f"no results directory {args.results_dir}")
    if args.update:
        if args.grid and len(args.grid) > 1:
            raise InputError("--update takes at most one --grid")
        fresh = select(args.results_dir, args.grid, args.run).rows
        n = regression.write_baseline(fresh, args.baseline, args.grid[0] if args.grid else None)
        print(f"wrote {n} baseline cells to {args.baseline}")
        return 0
    baseline = regression.read_baseline(args.baseline)
    grids = args.grid or sorted(set(baseline.grid))
    unknown = [g for g in grids if g not in set(baseline.grid)]
    if unknown:
        raise InputError(f"the baseline {args.baseline} holds no grid {', '.join(map(repr, unknown))}; it holds "
                         f"{', '.join(sorted(set(baseline.grid)))}")
    sel = select(args.results_dir, run=args.run)
    cmp = regression.compare(baseline, sel.rows, rtol, args.abs_tolerance, per_metric, grids)
    return report(cmp, args, sel)


def report(cmp, args, sel) -> int:
    counts = ", ".join(f"{v}: {n}" for v, n in cmp.verdict.value_counts().items())
    compared = int(cmp.verdict.isin(["ok", "regressed", "improved", "failed"]).sum())
    runs = ", ".join(f"{g} run {r['run_id']}" for g, r in sel.runs.items())
    print(f"compared {compared} of {int((cmp.verdict != 'new').sum())} baseline cells of {args.baseline} with "
          f"{args.results_dir} ({runs or 'no run'}; {counts or 'nothing'})")
    for verdict, title in (("improved", "improved beyond the noise (refresh the baseline with --update when "
                                        "intended):"), ("new", "new cells (not in the baseline):")):
        part = cmp[cmp.verdict == verdict]
        if len(part):
            print(f"\n{title}\n" + tabulate(part[COLS], headers="keys", showindex=False, floatfmt=".4g"))
    bad = {"regressed", "failed", "unusable"} | (set() if args.allow_missing else {"missing"})
    worse = cmp[cmp.verdict.isin(bad)]
    if len(worse):
        print("\nworse than the baseline, failed, missing or not comparable:\n"
              + tabulate(worse[COLS], headers="keys", showindex=False, floatfmt=".4g"), file=sys.stderr)
    if compared == 0:
        print("error: no baseline cell was compared (no fresh cell matches the baseline's); the check cannot pass",
              file=sys.stderr)
        return 1
    if len(worse):
        return 1
    print("no regressions")
    return 0
