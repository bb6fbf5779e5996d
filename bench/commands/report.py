"""`python -m bench report`: stored results -> the paper's tables and figures (Markdown, one HTML page per grid,
LaTeX, PNG/PDF), beside the paper's numbers. Each table cell is one stored cell of one run (bench.store.select)."""
from __future__ import annotations

from pathlib import Path

from solvers.errors import InputError

HELP = "render stored results into Markdown/HTML/LaTeX tables and PNG/PDF figures (paper layout, reported numbers)"


def add_arguments(parser) -> None:
    parser.add_argument("--results-dir", default="results", type=Path,
                        help="where `python -m bench run` stored its results (default: results)")
    parser.add_argument("--reports-dir", type=Path,
                        help="where to write the reports (default: <results-dir>/reports; the shipped reference "
                             "reports under reports/ are rewritten only when named here)")
    parser.add_argument("--grid", action="append", help="only these grids (default: every grid with a stored run)")
    parser.add_argument("--run", help="show this run instead of each grid's latest: a run id or a unique prefix "
                                      "of one, or -2 for each grid's previous run")
    parser.add_argument("--where", action="append", metavar="FIELD=VALUE",
                        help="show each grid's latest run whose cells all have this value, e.g. num_samples=32")


def where_of(items) -> dict | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--where needs FIELD=VALUE (e.g. num_samples=32), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def main(args) -> int:
    from bench.report.render import render
    written = render(args.results_dir, args.reports_dir, args.run, where_of(args.where), args.grid)
    for path in written:
        print(f"wrote {path} and {path.with_suffix('.html').name}")
    print(f"index: {(args.reports_dir or args.results_dir / 'reports') / 'index.html'}")
    return 0
