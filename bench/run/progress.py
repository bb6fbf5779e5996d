"""What a run shows while it works: one bar over the cells, weighted by their planned work, and one bar per
distillation (step, loss, held-out error, ETA). Messages print above the bars; with progress off they print as
lines. Everything goes to stderr, so a run's stdout holds only its summary.

A cell's weight is its planned network evaluations: NFE × samples × replicas for sampling (a noise floor counts
its samples once), plus, for the first cell of a distilled solver, its training's (steps × batch × accumulation ×
the student's calls, times 3 for the backward pass, plus the teacher's calls on its pairs). The bar's ETA then
follows the work, not the count of cells.
"""
from __future__ import annotations

import sys


def weight(c, distils: bool) -> int:
    """A cell's planned network evaluations (module docstring)."""
    sampling = c.evaluations if c.nfe else c.num_samples * c.replicas
    if not distils or not c.distill_settings:
        return max(1, sampling)
    s = c.distill_settings
    steps, batch = int(s.get("steps") or 0), int(s.get("batch_size") or 1) * int(s.get("accumulate") or 1)
    pairs = int(s.get("num_samples") or 0) + int(s.get("eval_samples") or 0)
    teacher = pairs * int(s.get("teacher_steps") or 0)
    return max(1, sampling + 3 * steps * batch * c.plan.calls + teacher)


class Progress:
    """The bars of one run (rank 0); `enabled=False` prints messages as lines instead."""

    def __init__(self, cells: list, first_distils: set, enabled: bool):
        self.enabled = enabled
        self.weights = {id(c): weight(c, id(c) in first_distils) for c in cells}
        self.total_cells, self.done_cells = len(cells), 0
        self.bar = None
        if enabled and cells:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=sum(self.weights.values()), unit="eval", unit_scale=True, desc="cells",
                            dynamic_ncols=True, file=sys.stderr, smoothing=0.05,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
            self.bar.set_postfix_str(f"0/{len(cells)} cells")

    def write(self, msg: str) -> None:
        if self.bar is None:
            print(msg, file=sys.stderr, flush=True)
        else:
            from tqdm.auto import tqdm
            tqdm.write(msg, file=sys.stderr)

    def cell_done(self, c, note: str = "") -> None:
        self.done_cells += 1
        if self.bar is not None:
            self.bar.update(self.weights.get(id(c), 1))
            self.bar.set_postfix_str(f"{self.done_cells}/{self.total_cells} cells" + (f", {note}" if note else ""))

    def distillation(self, what: str, c):
        """A bar for one distillation (a callable the training loop calls each step), or None when off."""
        if not self.enabled:
            return None
        return DistillBar(what, int((c.distill_settings or {}).get("steps") or 0))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class DistillBar:
    """progress(info) for bench.distill: info = {"step", "steps", "loss", "eval"} after each optimiser step."""

    def __init__(self, what: str, steps: int):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=steps or None, desc=f"distilling {what}", unit="step", leave=False, position=1,
                        dynamic_ncols=True, file=sys.stderr)

    def __call__(self, info: dict) -> None:
        if info.get("steps") and self.bar.total != info["steps"]:
            self.bar.total = info["steps"]
        self.bar.n = int(info.get("step", self.bar.n))
        post = f"loss {info['loss']:.3g}" if info.get("loss") is not None else ""
        if info.get("eval") is not None:
            post += f", held-out {info['eval']:.4g}"
        self.bar.set_postfix_str(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
