"""The compact table a run prints at its end: per model and metric, the rows × NFE of this run's cells, each value
with the half-width of its 95 % interval; a noise floor's value stands in its own "floor" column."""
from __future__ import annotations

from pathlib import Path

from tabulate import tabulate


def table(grid, results_dir: Path, run_id: str) -> str:
    from bench.stats import format_interval
    from bench.store.select import select
    if not run_id:
        return ""
    rows = select(results_dir, run=run_id).rows
    if rows.empty:
        return f"no results stored for grid {grid.name}"
    order = list(dict.fromkeys(c.row.label for c in grid.cells))
    blocks = []
    for (model, _), part in rows.groupby(["model", "metric"], sort=False):
        nfes = sorted(set(part[part["family"] != "floor"]["nfe"]))
        floors = part[part["family"] == "floor"]
        body = []
        for label in [o for o in order if o in set(part["label"])]:
            sel = part[part["label"] == label]
            cells = {}
            for r in sel.itertuples():
                cells[r.nfe] = ((format_interval(r.value, r.ci_low, r.ci_high) or f"{r.value:.4g}")
                                if r.status == "ok" else "failed")
            if label in set(floors["label"]):
                body.append([label] + ["" for _ in nfes] + [cells.get(0, "-")])
            else:
                body.append([label] + [cells.get(n, "-") for n in nfes] + ([""] if len(floors) else []))
        headers = ["row"] + [f"NFE {n}" for n in nfes] + (["floor"] if len(floors) else [])
        first = part.iloc[0]
        better = "higher" if first["higher_is_better"] else "lower"
        blocks.append(f"{model} · {first['metric_label']} ({better} is better; ± 95 % interval)\n"
                      + tabulate(body, headers=headers, tablefmt="simple", disable_numparse=True,
                                 colalign=["left"] + ["right"] * (len(headers) - 1)))
    return "\n\n".join(blocks)
