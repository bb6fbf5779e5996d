"""The white-box numerical study (paper Sec. 3.2 / App. D.1): the problem, the AB solvers, the optimisation, and the
quick grid at a tiny size (the optimised solver beats the standard one)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import tomllib
import torch

from bench.studies import numerical_study as ns

GRIDS = Path(__file__).resolve().parents[1] / "bench" / "grids"


def test_drift_is_consistent_with_the_exact_solution():
    p = ns.make_problems(3, 6, 7, seed=1)
    t, eps = 0.3, 1e-6
    fd = (p.y(t + eps) - p.y(t - eps)) / (2 * eps)
    assert torch.allclose(p.f(t, p.y(t)), fd, rtol=1e-6, atol=1e-6)      # y_gt solves y' = f(t, y)
    y = p.y(t) + 1.0
    coupling = (p.A @ torch.ones(3, 6, 1, dtype=torch.float64)).squeeze(-1)       # the term A(y - y_gt)
    assert torch.allclose(p.f(t, y) - p.dy(t), coupling)


def test_problem_draws_do_not_depend_on_the_batch():
    a, b = ns.make_problems(4, 5, 10, seed=0), ns.make_problems(2, 5, 10, seed=0)
    assert torch.equal(a.C[:2], b.C) and torch.equal(a.A[:2], b.A)
    assert not torch.equal(ns.make_problems(2, 5, 10, seed=1).C, b.C)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_standard_ab_is_exact_when_the_solution_degree_is_at_most_the_order(order):
    p = ns.make_problems(2, 5, order, seed=0)
    err = ns.relative_error(ns.integrate(p, ns.ab_weights(order, 7, order), 7, order), p)
    assert float(err.max()) < 1e-12
    p = ns.make_problems(2, 5, order + 2, seed=0)
    err = ns.relative_error(ns.integrate(p, ns.ab_weights(order, 7, order), 7, order), p)
    assert float(err.min()) > 1e-8                                       # and not beyond it


def test_batched_optimisation_equals_separate_runs():
    p = ns.make_problems(2, 5, 8, seed=3)
    W, _, _ = ns.optimise(p, 2, 6, 2, iterations=20, lr=1e-2)
    one = ns.Problems(p.C[1:], p.A[1:])
    W1, _, _ = ns.optimise(one, 2, 6, 2, iterations=20, lr=1e-2)
    assert torch.allclose(W[1:], W1, atol=1e-12)


def test_settings_reject_bad_input():
    with pytest.raises(ValueError, match="unknown numerical_study setting"):
        ns.settings({"study": {"orderz": [1]}})
    with pytest.raises(ValueError, match="orders must be among"):
        ns.settings({"study": {"orders": [5]}})
    with pytest.raises(ValueError, match="exact_start"):
        ns.settings({"study": {"exact_start": 2}})


def test_shipped_grids_parse():
    for name in ("numerical_study", "numerical_study_quick"):
        grid = tomllib.loads((GRIDS / f"{name}.toml").read_text())
        assert grid["kind"] == "numerical_study" and grid["name"] == name
        cfg = ns.settings(grid)
        assert cfg["dim"] == 50 and cfg["orders"] == [1, 2, 3, 4]
    full = ns.settings(tomllib.loads((GRIDS / "numerical_study.toml").read_text()))
    assert full["complexities"] == list(range(5, 41, 5)) and full["steps"] == list(range(6, 21, 2))
    assert full["problems"] == 50 and full["iterations"] == 2000 and full["lr"] == 1e-3


def test_quick_grid_at_a_tiny_size_optimised_beats_standard(tmp_path):
    grid = tomllib.loads((GRIDS / "numerical_study_quick.toml").read_text())
    grid["study"].update(dim=8, complexities=[6, 12], steps=[6, 10], problems=4, iterations=150, lr=1e-2,
                         teacher_steps=60)
    out = ns.run(grid, tmp_path)
    assert out == tmp_path / "studies" / "numerical_study_quick.csv"
    df = pd.read_csv(out)
    assert set(df.variant) == {"standard", "optimized", "teacher"}
    assert len(df) == 2 * 2 * 4 * 2 * 4 + 2 * 4                       # K x S x orders x variants x problems + teacher
    m = ns.summary(df[df.variant != "teacher"]).pivot_table(index=["complexity", "steps", "order"], columns="variant",
                                                            values="rel_error")
    assert (m.optimized < m.standard).all()
    obs = {o["number"]: o for o in ns.observations(df)}
    assert set(obs) == {1, 2, 3, 4} and obs[3]["verdict"] == "holds"
    assert all(o["verdict"] in ("holds", "mostly holds", "partly holds", "does not hold") for o in obs.values())


def test_observations_detect_a_violation():
    rows = []
    for K in (5, 10):
        for S in (6, 10):
            for o in (1, 2):
                for v, e in (("standard", 0.1 * o), ("optimized", 0.2 * o)):     # higher order worse, optimised worse
                    rows.append(dict(study="x", complexity=K, steps=S, order=o, variant=v, problem=0, rel_error=e,
                                     initial_loss=0, final_loss=0, iterations=1))
    obs = {o["number"]: o for o in ns.observations(pd.DataFrame(rows))}
    assert obs[1]["verdict"] == "does not hold" and obs[3]["verdict"] == "does not hold"
    assert obs[2]["verdict"] == "does not hold"                     # flat in K and S


def test_report_renders_the_study_with_its_verdicts(tmp_path):
    from bench.cli import main
    grid = {"name": "tiny_study", "kind": "numerical_study",
            "study": dict(dim=4, complexities=[4, 8], steps=[5, 8], orders=[1, 2], problems=2, iterations=20,
                          lr=1e-2, teacher_steps=40)}
    ns.run(grid, tmp_path / "results")
    assert main(["report", "--results-dir", str(tmp_path / "results"), "--reports-dir", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "tiny_study.md").read_text()
    import re
    for n in (1, 2, 3, 4):
        assert re.search(rf"\|\s+{n}\s+\|", md)
    assert "Our reading" in md and "exact_start" in md
    for fig in ("tiny_study_fig3", "tiny_study_figA2"):
        assert (tmp_path / "rep" / "figures" / f"{fig}.png").exists()
        assert (tmp_path / "rep" / "figures" / f"{fig}.pdf").exists()
