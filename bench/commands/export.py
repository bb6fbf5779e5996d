"""`python -m bench export`: the cells a report shows (one run per grid, bench.store.select) as a table file, and,
with --scores, every sample's score of the metrics that keep them (for paired tests elsewhere)."""
from __future__ import annotations

from pathlib import Path

from solvers.errors import InputError

HELP = "export the shown cells (and per-sample scores) of stored results as CSV or parquet"
FORMATS = ("csv", "parquet")


def add_arguments(parser) -> None:
    parser.add_argument("--results-dir", default="results", type=Path, help="stored results (default: results)")
    parser.add_argument("--out", required=True, type=Path, help="the file to write (.csv or .parquet)")
    parser.add_argument("--format", choices=FORMATS, help="default: from --out's suffix")
    parser.add_argument("--grid", action="append", help="only these grids")
    parser.add_argument("--run", help="a run id (or prefix, or -2); default: each grid's latest run")
    parser.add_argument("--scores", action="store_true",
                        help="one row per sample and metric instead: seed, score (metrics that are means of "
                             "per-sample scores: the endpoint error, CLIP score, HPSv2.1, ImageReward)")


def table(results_dir, grids=None, run=None, scores: bool = False):
    """The exported DataFrame (what `main` writes)."""
    import pandas as pd

    from bench import store
    from bench.store.select import select
    sel = select(results_dir, grids, run)
    rows = sel.rows
    if not scores:
        return rows.reset_index(drop=True)
    keep = ["grid", "model", "label", "solver", "nfe", "afs", "metric", "num_samples", "cell_key", "metric_key",
            "run_id"]
    stored = store.scores(results_dir, list(zip(rows["cell_key"], rows["metric_key"])))
    parts = []
    for r in rows.itertuples():
        hit = stored.get((r.cell_key, r.metric_key))
        if hit is not None:
            part = pd.DataFrame({"seed": hit[0], "score": hit[1]})
            for k in keep:
                part[k] = getattr(r, k)
            parts.append(part)
    if not parts:
        raise InputError("no per-sample scores stored for these cells (only metrics that are means of per-sample "
                         "scores keep them)")
    return pd.concat(parts, ignore_index=True)[keep + ["seed", "score"]]


def main(args) -> int:
    fmt = args.format or args.out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r} (from --out {args.out}); accepted: {', '.join(FORMATS)}")
    df = table(args.results_dir, args.grid, args.run, args.scores)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        df.to_csv(args.out, index=False)
    else:
        try:
            df.to_parquet(args.out, index=False)
        except ImportError as e:
            raise InputError(f"parquet needs pyarrow or fastparquet ({e}); pip install pyarrow, or use --format csv") \
                from None
    print(f"wrote {len(df)} rows to {args.out}")
    return 0
