"""`python -m bench report`: stored results -> the paper's tables and figures, beside the paper's numbers."""
from __future__ import annotations

from pathlib import Path

HELP = "render stored results into Markdown/LaTeX tables and PNG/PDF figures (paper layout, with reported numbers)"


def add_arguments(parser) -> None:
    parser.add_argument("--results-dir", default="results", type=Path,
                        help="where `python -m bench run` stored its results (default: results)")
    parser.add_argument("--reports-dir", default="reports", type=Path,
                        help="where to write <grid>.md, <grid>.tex, <study>.md and figures/ (default: reports)")


def main(args) -> int:
    from bench.report.render import render
    for path in render(args.results_dir, args.reports_dir):
        print(f"wrote {path}")
    return 0
