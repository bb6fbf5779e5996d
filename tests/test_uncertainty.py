"""Every number with its uncertainty: the interval estimators (bench.stats), what the metrics store, noise-floor
cells, honest rankings in the tables, and the mean-centred digits model that AFS needs."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from bench import grid as grid_mod
from bench import metrics, models, stats
from bench import run as runner
from bench import store as results
from bench.metrics.frechet import feature_statistics, frechet_distance
from bench.models.base import Cell
from bench.report import tables
from solvers.errors import InputError


# ---- estimators ---------------------------------------------------------------------------------------------
def test_bootstrap_interval_covers_the_mean_about_95_percent_of_the_time():
    g = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(200):
        x = torch.randn(100, generator=g, dtype=torch.float64).exp()    # skewed scores, true mean e^0.5
        est = stats.bootstrap_mean(x, resamples=400)
        hits += est.low <= math.exp(0.5) <= est.high
        assert est.low < est.value < est.high and est.method == "bootstrap:400"
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_is_reproducible():
    x = torch.rand(50, dtype=torch.float64)
    assert stats.bootstrap_mean(x) == stats.bootstrap_mean(x)


def test_t_interval_of_replicas_matches_the_formula():
    from scipy import stats as st
    v = [1.0, 2.0, 4.0]
    est = stats.t_interval(v, "replicas:3")
    h = st.t.ppf(0.975, 2) * np.std(v, ddof=1) / math.sqrt(3)
    assert est.value == pytest.approx(7 / 3) and est.high - est.value == pytest.approx(h, rel=1e-12)


def _fd_to_standard(x: torch.Tensor) -> float:
    mu, cov = feature_statistics(x.numpy())
    return frechet_distance(mu, cov, np.zeros(x.shape[1]), np.eye(x.shape[1]))


def test_moment_jackknife_equals_the_leave_one_group_out_recomputation():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.3 + 0.2
    fast = stats.moment_jackknife(lambda mu, cov: frechet_distance(mu, cov, np.zeros(3), np.eye(3)), x)
    slow = stats.jackknife(_fd_to_standard, x)
    assert fast.value == pytest.approx(slow.value, rel=1e-10)
    assert fast.half_width == pytest.approx(slow.half_width, rel=1e-8)


def test_jackknife_spread_of_an_fd_matches_independent_replicas():
    """The jackknife's standard error of one set agrees with the spread of FD over disjoint sets (within 35 %)."""
    g = torch.Generator().manual_seed(2)
    sets = [torch.randn(1000, 4, generator=g, dtype=torch.float64) * 1.2 + 0.3 for _ in range(30)]
    fds = [_fd_to_standard(x) for x in sets]
    se = np.mean([stats.jackknife(_fd_to_standard, x).half_width / stats.Z for x in sets])
    assert se / np.std(fds, ddof=1) == pytest.approx(1.0, abs=0.35)


def test_replicas_need_equal_seed_sets():
    with pytest.raises(ValueError, match="equal seed sets"):
        stats.replicas(_fd_to_standard, torch.zeros(10, 2), 3)


def test_separable_and_formatting():
    assert stats.separable((0, 1), (1.5, 2)) and not stats.separable((0, 1), (0.9, 2))
    assert not stats.separable((math.nan, 1), (2, 3))             # an unknown bound never separates
    assert stats.format_interval(0.23456, 0.2201, 0.2501) == "0.235 ± 0.015"
    assert stats.format_interval(337.1, 300.0, 374.0) == "337 ± 37"
    assert stats.format_interval(1.0, math.nan, math.nan) == ""
    assert stats.format_interval(0.0016, 0.0, 0.0042) == "0.0016 [0, 0.0042]"    # clipped at 0: its bounds
    assert stats.format_interval(0.0, 0.0, 0.0042) == "0.0000 [0, 0.0042]"


# ---- metrics ------------------------------------------------------------------------------------------------
def test_every_metric_declares_how_its_interval_is_made():
    for name in metrics.names():
        m = metrics.get(name)
        assert m.interval in ("bootstrap", "replicas"), name
        assert m.has_floor == (m.interval == "replicas"), name        # the distances, and only they, have floors


def test_fd_estimate_value_is_the_plain_fd_and_never_negative():
    gmm = models.get("gmm2d")
    x = gmm.sample_data(400, torch.Generator().manual_seed(3))
    fd = metrics.get("fd_exact")
    cell = Cell(model=gmm, samples=x)
    est = fd.estimate(fd.per_sample(cell), cell)
    assert est.value == pytest.approx(fd.compute(cell), rel=1e-12)
    assert est.low >= 0 and est.method == "jackknife:10"
    two = fd.estimate(fd.per_sample(cell), cell, sets=2)
    halves = [fd.compute(Cell(model=gmm, samples=x[:200])), fd.compute(Cell(model=gmm, samples=x[200:]))]
    assert two.value == pytest.approx(np.mean(halves)) and two.method == "replicas:2"


# ---- grids and runs -----------------------------------------------------------------------------------------
GRID = """
name = "unc"
nfe = [3, 5]
num_samples = 200
batch_size = 150
[[models]]
name = "gmm2d"
metrics = ["endpoint_error", "fd_exact"]
floors = ["exact_ode", "data"]
{replicas}
[[solvers]]
name = "ipndm"
label = "iPNDM"
afs = true
[[solvers]]
name = "euler"
label = "Euler"
"""


def _grid(tmp_path, replicas=""):
    p = tmp_path / "unc.toml"
    p.write_text(GRID.format(replicas=replicas))
    return grid_mod.load(p)


def test_replicas_multiply_the_seeds_and_enter_the_key(tmp_path):
    one, three = _grid(tmp_path), _grid(tmp_path, "replicas = 3")
    assert list(three.cells[0].seeds) == list(range(600)) and "3 sets of 200" in three.cells[0].seeds_text
    assert three.cells[0].evaluations == 3 * one.cells[0].evaluations
    assert one.cells[0].key != three.cells[0].key


def test_floor_cells_score_only_distances_and_bad_floors_are_one_line_errors(tmp_path):
    g = _grid(tmp_path)
    floors = [c for c in g.cells if c.row.family == "floor"]
    assert [c.row.label for c in floors] == ["Exact ODE solution", "Exact data samples"]
    assert all(c.metrics == ["fd_exact"] and c.nfe == 0 for c in floors)
    p = tmp_path / "bad.toml"
    p.write_text(GRID.format(replicas="").replace('["exact_ode", "data"]', '["teacher"]'))
    with pytest.raises(InputError, match="no noise floor 'teacher'; accepted: exact_ode, data"):
        grid_mod.load(p)
    p.write_text(GRID.format(replicas="").replace('["endpoint_error", "fd_exact"]', '["endpoint_error"]'))
    with pytest.raises(InputError, match="floors need a metric against a reference distribution"):
        grid_mod.load(p)


def test_real_digits_floor_refuses_more_samples_than_there_are_images(tmp_path):
    p = tmp_path / "d.toml"
    p.write_text('name = "d"\nnfe = 3\nnum_samples = 800\nreplicas = 2\n[[models]]\nname = "digits_centred"\n'
                 'metrics = ["fd_pixels"]\nfloors = ["real"]\n[[solvers]]\nname = "euler"\n')
    with pytest.raises(InputError, match="1297 training digits, fewer than the 1600 samples"):
        grid_mod.load(p)


def test_run_stores_intervals_floors_and_what_the_report_needs(tmp_path):
    g = _grid(tmp_path)
    runner.run(g, tmp_path / "res", progress=False, out=lambda *_: None)
    df = results.load(tmp_path / "res")
    assert (df.status == "ok").all()
    assert (df.ci_low <= df.value).all() and (df.value <= df.ci_high).all() and (df.ci_high > df.ci_low).all()
    assert set(df.ci_method) == {"bootstrap:1000", "jackknife:10"}
    assert set(df[df.metric == "fd_exact"].metric_label) == {"FD (exact moments)"}
    assert not df.higher_is_better.any() and set(df.paper_key) == {""}
    floor = df[df.family == "floor"].set_index("label")
    assert set(floor.index) == {"Exact ODE solution", "Exact data samples"} and set(floor.nfe) == {0}
    # the exact-ODE floor is the FD of the reference solutions of the same seeds
    gmm = g.models["gmm2d"]
    sig = g.cells[0].plan.sigmas
    ref = gmm.reference(range(200), sig[0], sig[-1], tmp_path / "res" / "cache")
    assert floor.loc["Exact ODE solution", "value"] == pytest.approx(
        metrics.get("fd_exact").compute(Cell(model=gmm, samples=ref)), rel=1e-10)
    # the report's table: floors as rows in every NFE column, intervals shown
    t = tables.measured(df, "gmm2d", "fd_exact")
    assert list(t.values.columns) == [3, 5]
    assert t.values.loc[("Noise floor", "Exact ODE solution")].nunique() == 1
    md = tables.to_markdown(t)
    assert "±" in md and "Noise floor" in md


def _measured(values: dict, half: dict, floor=None) -> tables.Measured:
    idx = pd.MultiIndex.from_tuples([("Handcrafted", m) for m in values] + ([("Noise floor", "floor")] if floor
                                                                            else []), names=["group", "method"])
    v = pd.DataFrame([[values[m]] for m in values] + ([[floor[0]]] if floor else []), index=idx,
                     columns=pd.Index([3], name="NFE"))
    h = pd.DataFrame([[half[m]] for m in values] + ([[floor[1]]] if floor else []), index=idx, columns=v.columns)
    return tables.Measured(v, v - h, v + h, False, "x")


def test_bold_only_where_earned_ties_as_ties_and_floor_marks():
    apart = _measured({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.1, "b": 0.1, "c": 0.1})
    assert list(tables.ranks(apart.values, False, apart.low, apart.high)[3]) == [1, 2, 0]
    tied = _measured({"a": 1.0, "b": 1.15, "c": 3.0}, {"a": 0.1, "b": 0.1, "c": 0.1})
    assert list(tables.ranks(tied.values, False, tied.low, tied.high)[3]) == [3, 3, 0]
    md = tables.to_markdown(tied)
    assert "**" not in md and "*1.00 ± 0.10*" in md
    # second not separable from the third: no underline
    close = _measured({"a": 1.0, "b": 2.0, "c": 2.1}, {"a": 0.1, "b": 0.1, "c": 0.1})
    assert list(tables.ranks(close.values, False, close.low, close.high)[3]) == [1, 0, 0]
    on = _measured({"a": 1.0, "b": 2.0}, {"a": 0.1, "b": 0.1}, floor=(1.05, 0.1))
    assert list(tables.on_floor(on)[3]) == [True, False, False]
    assert "1.00 ± 0.10** °" in tables.to_markdown(on)
    assert r"$^\circ$" in tables.to_latex(on)


# ---- the report reads the store alone --------------------------------------------------------------------------
def test_report_renders_results_whose_model_and_metric_the_code_does_not_know(tmp_path):
    from conftest import store_rows

    from bench.report import render
    store_rows(tmp_path / "res", [
        dict(grid="g", model="elsewhere", solver=label, label=label, family=fam, options="{}", nfe=nfe, afs=False,
             schedule="x", metric="my_score", value=v, ci_low=v - 0.05, ci_high=v + 0.05,
             ci_method="jackknife:10", metric_label="My score", cell_key=f"{label}{nfe}")
        for label, fam, nfe, v in [("A", "handcrafted", 3, 1.0), ("A", "handcrafted", 5, 0.5),
                                   ("B", "learned", 3, 0.4), ("B", "learned", 5, 0.45), ("ref", "floor", 0, 0.42)]])
    out = render.render(tmp_path / "res", tmp_path / "rep")
    text = out[0].read_text()
    assert "My score (lower is better)" in text and "Noise floor" in text
    assert "**0.400 ± 0.050** °" in text                   # B beats A at NFE 3, but sits on the floor


# ---- digits in mean-centred coordinates -------------------------------------------------------------------------
def test_centred_digits_is_the_same_ode_and_afs_takes_the_data_mean():
    import solvers
    plain, centred = models.get("digits"), models.get("digits_centred")
    mu = centred.data_mean()
    assert float(mu.mean()) < -0.3 and float(mu.norm()) > 9          # the digits are far from zero-mean
    seeds = [0, 1, 2, 3]
    sig = plain.grid(6)
    with torch.no_grad():
        a = plain.decode(solvers.get("ipndm").sample(plain.denoiser(), plain.noise(seeds), sig))
        b = centred.decode(solvers.get("ipndm").sample(centred.denoiser(), centred.noise(seeds), sig))
        assert (a - b).abs().max() < 1e-4                              # no AFS: the same samples
        # AFS substitutes D = 0 in the model's coordinates: the data mean for the centred model
        x = centred.noise(seeds)
        d_plain = plain.denoiser()(plain.noise(seeds), torch.full((4,), 80.0))
        d_centred = centred.denoiser()(x, torch.full((4,), 80.0))
        assert float(d_centred.flatten(1).norm(dim=1).mean()) < 0.3 * float(d_plain.flatten(1).norm(dim=1).mean())
    assert centred.cache_key() != plain.cache_key()


def test_digits_reference_is_the_teacher_and_endpoint_error_is_in_image_coordinates(tmp_path):
    import solvers
    m = models.get("digits_centred")
    sig = m.grid(4)
    seeds = [5, 6]
    ref = m.reference(seeds, float(sig[0]), float(sig[-1]), tmp_path)
    with torch.no_grad():
        teacher = solvers.get("ipndm").sample(m.denoiser(), m.noise(seeds), m.grid(36)).double()
    assert (ref - teacher).abs().max() < 1e-5
    assert list((tmp_path / "reference").glob("digits_centred-*.pt"))
    ee = metrics.get("endpoint_error")
    assert ee.supports(m)
    err = ee.sample_scores(Cell(model=m, samples=None, final=teacher + 0.1, sigmas=sig, seeds=seeds,
                                cache_dir=str(tmp_path)))
    expect = (0.1 * torch.ones_like(teacher)).flatten(1).norm(dim=1) / (teacher + m.data_mean()).flatten(1).norm(dim=1)
    assert torch.allclose(err, expect, rtol=1e-5)
