"""The paper's white-box numerical study (Section 3.2, Appendix D.1, Figs. 3 and A.2).

A synthetic ODE on t in [0, 1] whose exact solution is a random polynomial of degree K (Eq. A.16-A.17):

    y_gt(t)  = C [1, t, ..., t^K]^T,            C in R^{D x (K+1)},  C_ij ~ N(0, 4)   (std 2)
    f(t, y)  = y_gt'(t) + A (y - y_gt(t)),      A = G - 0.5 I,       G_ij ~ N(0, (0.1 / sqrt(D))^2)

integrated with Adams-Bashforth of order O in {1, 2, 3, 4} on the uniform grid t_n = n / S:

    y_{n+1} = y_n + h sum_{j=0}^{O-1} w_{n,j} f_{n-O+1+j}        (oldest derivative first, h = 1 / S)

"standard" uses the classical AB row at every step; "optimized" learns one row per step (a (S-O+1) x O matrix,
initialised at the AB row) with Adam (lr 1e-3, 2000 iterations) on the endpoint MSE of each problem. Each run
draws a fresh problem; the error is the relative L2 error at t = 1. A "teacher" (standard AB-4 at 100 steps)
shows that a many-step solution is a reliable proxy of the truth (Observation 4).

Our reading of the paper where it is not explicit is `READING` below (the report prints it).

`run(grid, results_dir)` is called by the harness for grids with `kind = "numerical_study"`; it writes the
tidy table `<results_dir>/studies/<grid name>.csv` (one row per configuration x order x variant x problem).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import torch

from solvers.errors import InputError

# Classical Adams-Bashforth rows, oldest derivative first (as in solvers/ipndm.py).
AB_ROWS = {
    1: (1.0,),
    2: (-1 / 2, 3 / 2),
    3: (5 / 12, -16 / 12, 23 / 12),
    4: (-9 / 24, 37 / 24, -59 / 24, 55 / 24),
}

READING = (
    "N(0, 0.1/sqrt(D)) for the coupling is read as a standard deviation; N(0, 4I) for C as a variance (std 2).",
    "Start-up: the first O states are exact (Appendix D.1: \"the first O history steps\", which gives the stated "
    "(S-O+1) x O weight matrix). Section 3.2 says \"the same four ground-truth states\" instead; `exact_start = 4` "
    "in the grid selects that reading.",
    "Every run optimises its own problem (white box): the coefficients are fitted and evaluated on the same draw. "
    "The loss is summed over the problems of a batch, which keeps their Adam updates independent (Adam is "
    "element-wise), so a batch of problems is exactly as many independent runs.",
)

DEFAULTS = {
    "dim": 50,
    "orders": [1, 2, 3, 4],
    "complexities": [5, 10, 15, 20, 25, 30, 35, 40],
    "steps": [6, 8, 10, 12, 14, 16, 18, 20],
    "problems": 50,
    "iterations": 2000,
    "lr": 1e-3,
    "coef_std": 2.0,
    "coupling_std": None,          # None: 0.1 / sqrt(dim)
    "coupling_shift": -0.5,
    "exact_start": "order",        # "order" (App. D.1) or an int (Sec. 3.2 says 4)
    "teacher_order": 4,
    "teacher_steps": 100,
    "seed": 0,
    "threads": None,
}
COLUMNS = ["study", "complexity", "steps", "order", "variant", "problem", "rel_error", "initial_loss",
           "final_loss", "iterations"]


# ---- the problem --------------------------------------------------------------------------------
class Problems:
    """A batch of P independent problems (C: (P, D, K+1), A: (P, D, D)), float64."""

    def __init__(self, C: torch.Tensor, A: torch.Tensor):
        self.C, self.A = C, A
        self.degree = C.shape[-1] - 1
        k = torch.arange(self.degree + 1, dtype=C.dtype)
        self._k = k

    def y(self, t: float) -> torch.Tensor:
        """y_gt(t) = C [1, t, ..., t^K] (Eq. A.16)."""
        return self.C @ (torch.as_tensor(t, dtype=self.C.dtype) ** self._k)

    def dy(self, t: float) -> torch.Tensor:
        """y_gt'(t) = C [0, 1, 2t, ..., K t^(K-1)]."""
        k = self._k
        powers = torch.where(k > 0, k * torch.as_tensor(t, dtype=self.C.dtype) ** (k - 1).clamp(min=0),
                             torch.zeros_like(k))
        return self.C @ powers

    def f(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """The drift of Eq. A.17: y_gt'(t) + A (y - y_gt(t))."""
        return self.dy(t) + (self.A @ (y - self.y(t)).unsqueeze(-1)).squeeze(-1)


def make_problems(num: int, dim: int, degree: int, seed: int, coef_std: float = 2.0,
                  coupling_std: float | None = None, coupling_shift: float = -0.5) -> Problems:
    """Problem p of complexity K comes from its own generator (seed, K, p): the same draw for every order, step
    count and batch size, so the curves compare solvers on identical problems."""
    std = 0.1 / math.sqrt(dim) if coupling_std is None else float(coupling_std)
    Cs, As = [], []
    for p in range(num):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(degree) * 1_009 + p)
        Cs.append(coef_std * torch.randn(dim, degree + 1, generator=g, dtype=torch.float64))
        As.append(std * torch.randn(dim, dim, generator=g, dtype=torch.float64)
                  + coupling_shift * torch.eye(dim, dtype=torch.float64))
    return Problems(torch.stack(Cs), torch.stack(As))


# ---- the solver ---------------------------------------------------------------------------------
def ab_weights(order: int, steps: int, start: int) -> torch.Tensor:
    """The classical AB row repeated for each of the steps - start + 1 updates: shape (steps-start+1, order)."""
    if order not in AB_ROWS:
        raise InputError(f"Adams-Bashforth order must be 1, 2, 3 or 4, got {order!r}")
    return torch.tensor(AB_ROWS[order], dtype=torch.float64).expand(steps - start + 1, order).clone()


def integrate(problems: Problems, weights: torch.Tensor, steps: int, start: int) -> torch.Tensor:
    """y(1) from AB with one weight row per update (weights: (U, O) or (P, U, O); U = steps - start + 1).

    The first `start` states y_0..y_{start-1} are exact; updates n = start-1 .. steps-1 give y_start..y_steps.
    """
    order = weights.shape[-1]
    if start < order:
        raise InputError(f"an order-{order} start needs at least {order} exact states, got {start}")
    if start > steps:
        raise InputError(f"{steps} steps cannot start from {start} exact states")
    h = 1.0 / steps
    Y = [problems.y(n * h) for n in range(steps + 1)]                           # y_gt on the grid
    dY = [problems.dy(n * h) for n in range(steps + 1)]
    derivs = [dY[n] for n in range(start)]                                       # exact history: f = y_gt'
    y = Y[start - 1]
    for u, n in enumerate(range(start - 1, steps)):
        w = weights[..., u, :]                                                   # (O,) or (P, O)
        hist = torch.stack(derivs[-order:], dim=-1)                              # (P, D, O), oldest first
        y = y + h * (hist * w.unsqueeze(-2)).sum(-1)
        if n + 1 < steps:                                                        # f(t, y), Eq. A.17
            derivs.append(dY[n + 1] + (problems.A @ (y - Y[n + 1]).unsqueeze(-1)).squeeze(-1))
    return y


def relative_error(y: torch.Tensor, problems: Problems) -> torch.Tensor:
    """||y_pred(1) - y_gt(1)|| / ||y_gt(1)|| per problem."""
    from bench.metrics.analytic import relative_l2
    y1 = problems.y(1.0)
    return relative_l2(y, y1)


def optimise(problems: Problems, order: int, steps: int, start: int, iterations: int, lr: float):
    """Learn one weight row per update and per problem (Adam on the endpoint MSE, initialised at AB).

    Returns the learned weights (P, U, O) and the initial and final per-problem losses."""
    P = problems.C.shape[0]
    W = torch.nn.Parameter(ab_weights(order, steps, start).expand(P, -1, -1).clone())
    opt = torch.optim.Adam([W], lr=lr)
    y1 = problems.y(1.0)
    first = None
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        per_problem = ((integrate(problems, W, steps, start) - y1) ** 2).mean(-1)
        if first is None:
            first = per_problem.detach().clone()
        per_problem.sum().backward()          # independent problems: each W[p] sees only its own loss
        opt.step()
    with torch.no_grad():
        last = ((integrate(problems, W, steps, start) - y1) ** 2).mean(-1)
    if first is None:
        first = last
    return W.detach(), first, last


# ---- the study ----------------------------------------------------------------------------------
def settings(grid: dict) -> dict:
    """The study's settings: DEFAULTS overridden by the grid's top-level keys (or its [study] table)."""
    given = dict(grid.get("study", {}))
    given.update({k: v for k, v in grid.items() if k in DEFAULTS})
    unknown = sorted(set(grid.get("study", {})) - set(DEFAULTS))
    if unknown:
        raise InputError(f"unknown numerical_study setting(s) {', '.join(unknown)}; accepted: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **given}
    for key in ("orders", "complexities", "steps"):
        cfg[key] = [int(v) for v in cfg[key]]
        if not cfg[key]:
            raise InputError(f"numerical_study needs at least one value in {key}")
    bad = [o for o in cfg["orders"] if o not in AB_ROWS]
    if bad:
        raise InputError(f"numerical_study orders must be among 1, 2, 3, 4, got {bad}")
    start = cfg["exact_start"]
    if start != "order" and (not isinstance(start, int) or start < max(cfg["orders"])):
        raise InputError(f"exact_start must be \"order\" or an int >= the highest order, got {start!r}")
    if min(cfg["steps"]) < _start(max(cfg["orders"]), start):
        raise InputError(f"steps must be >= the number of exact start states ({_start(max(cfg['orders']), start)})")
    return cfg


def validate(grid: dict) -> None:
    """Check the grid's study table before any work (bench.grid calls it when the grid is read)."""
    settings(grid)


def _start(order: int, exact_start) -> int:
    return order if exact_start == "order" else int(exact_start)


def study(cfg: dict, name: str = "numerical_study", progress=print) -> pd.DataFrame:
    """Every (K, S, order) configuration, standard and optimised, plus the teacher per K; a tidy DataFrame."""
    rows = []
    t0 = time.time()
    total = len(cfg["complexities"]) * len(cfg["steps"]) * len(cfg["orders"])
    done = 0
    for K in cfg["complexities"]:
        problems = make_problems(cfg["problems"], cfg["dim"], K, cfg["seed"], cfg["coef_std"],
                                 cfg["coupling_std"], cfg["coupling_shift"])
        # Observation 4's teacher: standard AB-4 at many steps.
        To, TS = cfg["teacher_order"], cfg["teacher_steps"]
        ts = _start(To, cfg["exact_start"])
        with torch.no_grad():
            err = relative_error(integrate(problems, ab_weights(To, TS, ts), TS, ts), problems)
        rows += [(name, K, TS, To, "teacher", p, float(e), math.nan, math.nan, 0) for p, e in enumerate(err)]
        for S in cfg["steps"]:
            for order in cfg["orders"]:
                start = _start(order, cfg["exact_start"])
                with torch.no_grad():
                    err = relative_error(integrate(problems, ab_weights(order, S, start), S, start), problems)
                rows += [(name, K, S, order, "standard", p, float(e), math.nan, math.nan, 0) for p, e in enumerate(err)]
                W, first, last = optimise(problems, order, S, start, cfg["iterations"], cfg["lr"])
                with torch.no_grad():
                    err = relative_error(integrate(problems, W, S, start), problems)
                rows += [(name, K, S, order, "optimized", p, float(e), float(a), float(b), cfg["iterations"])
                         for p, (e, a, b) in enumerate(zip(err, first, last))]
                done += 1
                if progress:
                    progress(f"[{name}] K={K:>2} S={S:>2} AB-{order}: {done}/{total} configurations, "
                             f"{time.time() - t0:.0f} s")
    return pd.DataFrame(rows, columns=COLUMNS)


def run(grid: dict, results_dir: Path) -> Path:
    """Harness entry point: run the study of `grid` and write <results_dir>/studies/<name>.csv."""
    cfg = settings(grid)
    name = str(grid.get("name", "numerical_study"))
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    df = study(cfg, name)
    out = Path(results_dir) / "studies" / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)
    print(f"wrote {out} ({len(df)} rows)")
    for obs in observations(df):
        print(f"Observation {obs['number']} ({obs['claim']}): {obs['verdict']} - {obs['evidence']}")
    return out


# ---- the paper's four observations, decided from the data ---------------------------------------
def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean relative error per (complexity, steps, order, variant), as the paper plots."""
    return (df.groupby(["complexity", "steps", "order", "variant"], as_index=False)["rel_error"].mean())


def _verdict(fraction: float) -> str:
    if fraction >= 1.0:
        return "holds"
    if fraction >= 0.75:
        return "mostly holds"
    if fraction >= 0.5:
        return "partly holds"
    return "does not hold"


def observations(df: pd.DataFrame) -> list[dict]:
    """Each of the paper's four observations checked on the mean errors; verdict + the numbers behind it."""
    m = summary(df)
    few = m[m.variant.isin(["standard", "optimized"])]
    out = []

    # 1. Error(AB-1) > Error(AB-2) > Error(AB-3) > Error(AB-4), for each configuration and variant.
    ok = tot = 0
    for _, g in few.groupby(["complexity", "steps", "variant"]):
        e = g.sort_values("order").rel_error.to_numpy()
        if len(e) < 2:
            continue
        tot += 1
        ok += bool((e[:-1] > e[1:]).all())
    frac = ok / tot if tot else math.nan
    out.append({"number": 1, "claim": "multi-step methods reduce error: AB-1 > AB-2 > AB-3 > AB-4",
                "fraction": frac, "verdict": _verdict(frac) if tot else "not tested (one order only)",
                "evidence": f"strict hierarchy in {ok}/{tot} (K, S, variant) configurations"})

    # 2. Error grows with K at fixed S, and as S decreases at fixed K (adjacent pairs, standard solvers).
    std = few[few.variant == "standard"]
    up_k = tot_k = up_s = tot_s = 0
    for _, g in std.groupby(["steps", "order"]):
        e = g.sort_values("complexity").rel_error.to_numpy()
        up_k += int((e[1:] > e[:-1]).sum())
        tot_k += len(e) - 1
    for _, g in std.groupby(["complexity", "order"]):
        e = g.sort_values("steps").rel_error.to_numpy()
        up_s += int((e[:-1] > e[1:]).sum())
        tot_s += len(e) - 1
    tot = tot_k + tot_s
    frac = (up_k + up_s) / tot if tot else math.nan
    out.append({"number": 2, "claim": "error grows with complexity K and with fewer steps S",
                "fraction": frac, "verdict": _verdict(frac) if tot else "not tested (one K and one S)",
                "evidence": f"error rises with K in {up_k}/{tot_k} adjacent pairs and with fewer steps in "
                            f"{up_s}/{tot_s} (standard AB, mean over problems)"})

    # 3. Optimised < standard for every order and configuration.
    piv = few.pivot_table(index=["complexity", "steps", "order"], columns="variant", values="rel_error")
    if {"standard", "optimized"} <= set(piv.columns):
        better = piv.optimized < piv.standard
        ratio = piv.optimized / piv.standard
        frac = float(better.mean())
        out.append({"number": 3, "claim": "handcrafted (standard) coefficients are suboptimal",
                    "fraction": frac, "verdict": _verdict(frac),
                    "evidence": f"optimised below standard in {int(better.sum())}/{len(piv)} (K, S, order) "
                                f"configurations; optimised/standard error ratio median {ratio.median():.3g}, "
                                f"range {ratio.min():.3g}-{ratio.max():.3g}"})
    # 4. The many-step teacher's error is near zero: below 1% of the best few-step standard error at every K.
    teach = m[m.variant == "teacher"].set_index("complexity").rel_error
    best = std.groupby("complexity").rel_error.min()
    common = teach.index.intersection(best.index)
    if len(common):
        rel = teach[common] / best[common]
        frac = float((rel < 0.01).mean())
        out.append({"number": 4, "claim": "a many-step teacher is a reliable proxy of the truth",
                    "fraction": frac, "verdict": _verdict(frac),
                    "evidence": f"teacher (AB-4) relative error at most {teach[common].max():.2g} over K; "
                                f"below 1% of the best few-step standard error at {int((rel < 0.01).sum())}/"
                                f"{len(common)} complexities (largest teacher/best ratio {rel.max():.2g})"})
    return out
