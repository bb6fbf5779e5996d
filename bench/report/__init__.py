"""Reports: stored results rendered as the paper's tables and figures, beside the paper's own numbers.

tables.py  measured tables (Markdown via tabulate, LaTeX via pandas' Styler with booktabs)
paper.py   the paper's reported numbers in the project's names; measured vs reported with their ratio
plots.py   metric vs NFE, DyWeight coefficient heatmaps, transfer matrix, training curves, the numerical study
render.py  `render(results_dir, reports_dir)`: everything above into <reports_dir>/<grid>.md (+ .tex, PNG, PDF)
"""
