"""`python -m bench check --baseline FILE`: did any solver get worse than the stored baseline?

How a solver author uses it (see README, "Checking a change against the baseline"):
    python -m bench run --grid quick                                  # fresh results in results/
    python -m bench check --baseline results/baselines/quick.csv      # exit 1 + the cells that got worse
    python -m bench check --baseline results/baselines/quick.csv --update   # accept the new numbers
Run it on a results directory that only holds the new code's numbers (e.g. `--results-dir /tmp/new` for both
`run` and `check`), since `run` resumes stored cells rather than recomputing them.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tabulate import tabulate
from solvers.errors import InputError

HELP = "compare fresh results with a stored baseline; exit 1 listing the cells where a solver got worse"


def add_arguments(parser) -> None:
    parser.add_argument("--baseline", required=True, type=Path, help="baseline CSV (e.g. results/baselines/quick.csv)")
    parser.add_argument("--results-dir", default="results", type=Path, help="fresh results (default: results)")
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
    from bench import results
    from bench.report import regression

    rtol, per_metric = regression.parse_tolerances(args.tolerance)
    if not args.results_dir.exists():
        raise FileNotFoundError(f"no results directory {args.results_dir}")
    fresh = results.load(args.results_dir)
    if args.update:
        if args.grid and len(args.grid) > 1:
            raise InputError("--update takes at most one --grid")
        n = regression.write_baseline(fresh, args.baseline, args.grid[0] if args.grid else None)
        print(f"wrote {n} baseline cells to {args.baseline}")
        return 0
    baseline = regression.read_baseline(args.baseline)
    if fresh.empty:
        raise InputError(f"no results in {args.results_dir}; run the baseline's grid first "
                         f"(`python -m bench run --grid {', '.join(sorted(set(baseline.grid)))}`)")
    cmp = regression.compare(baseline, fresh, rtol, args.abs_tolerance, per_metric, args.grid)
    bad_verdicts = {"regressed", "failed"} | (set() if args.allow_missing else {"missing"})
    bad = cmp[cmp.verdict.isin(bad_verdicts)]
    better = cmp[cmp.verdict == "improved"]
    counts = ", ".join(f"{v}: {n}" for v, n in cmp.verdict.value_counts().items())
    print(f"compared {len(cmp)} baseline cells of {args.baseline} with {args.results_dir} ({counts})")
    cols = ["grid", "model", "label", "nfe", "metric", "baseline", "fresh", "change", "rule", "verdict"]
    if len(better):
        print("\nimproved beyond the noise (refresh the baseline with --update when intended):")
        print(tabulate(better[cols], headers="keys", showindex=False, floatfmt=".4g"))
    if len(bad):
        print("\nworse than the baseline:", file=sys.stderr)
        print(tabulate(bad[cols], headers="keys", showindex=False, floatfmt=".4g"), file=sys.stderr)
        return 1
    print("no regressions")
    return 0
