"""Problem instances of one model in a grid (`instances`): keys, cells, the stored `instance_of`, and the report's
mean and spread across instances."""
from __future__ import annotations

import numpy as np
import pytest

from bench import grid as grid_mod
from bench import run as runner
from bench import store as results
from bench.report import render, tables
from solvers.errors import InputError

GRID = """
name = "inst"
nfe = [3, 5]
num_samples = 150
batch_size = 150
[[models]]
name = "gmm64"
instances = [{{ seed = 1 }}, {{ seed = 2 }}, {{ seed = 3 }}]
options = {{ components = 3 }}
metrics = ["endpoint_error", "fd_exact"]
floors = ["exact_ode"]
[[solvers]]
name = "ipndm"
label = "iPNDM"
afs = true
[[solvers]]
name = "euler"
label = "Euler"
afs = true
models = [{models}]
"""


def _load(tmp_path, models='"gmm64"', text=GRID):
    p = tmp_path / "inst.toml"
    p.write_text(text.format(models=models))
    return grid_mod.load(p)


def test_instances_are_models_keyed_by_their_options_and_a_name_covers_them_all(tmp_path):
    g = _load(tmp_path)
    assert list(g.models) == ["gmm64@seed=1", "gmm64@seed=2", "gmm64@seed=3"]
    means = [g.models[k].mean for k in g.models]
    assert not np.allclose(means[0], means[1])                         # different problems
    assert all(g.models[k].mu.shape[0] == 3 for k in g.models)        # the shared options apply to each
    cells = [c for c in g.cells if c.row.label == "Euler"]
    assert {c.model for c in cells} == set(g.models) and {c.instance_of for c in g.cells} == {"gmm64"}
    assert cells[0].model_options == {"components": 3, "seed": 1}
    assert len({c.key for c in g.cells}) == len(g.cells)
    one = _load(tmp_path, models='"gmm64@seed=2"')
    assert {c.model for c in one.cells if c.row.label == "Euler"} == {"gmm64@seed=2"}


@pytest.mark.parametrize("bad, message", [
    ('instances = []', "instances must be a non-empty list of option tables"),
    ('instances = [{ seed = 1 }, { seed = 1 }]', "model 'gmm64@seed=1' is listed twice"),
    ('instances = [{ colour = 1 }]', "model gmm64 does not take options"),
])
def test_bad_instances_are_one_line_errors(tmp_path, bad, message):
    text = GRID.replace('instances = [{{ seed = 1 }}, {{ seed = 2 }}, {{ seed = 3 }}]', bad.replace("{", "{{")
                        .replace("}", "}}"))
    with pytest.raises(InputError, match=message):
        _load(tmp_path, text=text)
    with pytest.raises(InputError, match="must list models of this grid: gmm64, gmm64@seed=1"):
        _load(tmp_path, models='"gmm2d"')


def test_run_stores_instance_of_and_the_report_gives_mean_and_range_across_instances(tmp_path):
    g = _load(tmp_path)
    runner.run(g, tmp_path / "res", progress=False, out=lambda *_: None)
    df = results.load(tmp_path / "res")
    assert (df.status == "ok").all() and set(df.instance_of) == {"gmm64"}
    assert tables.instances(df) == {"gmm64": list(g.models)}
    mean, lo, hi, n = tables.across_instances(df, "gmm64", "endpoint_error")
    assert n == 3
    per = np.array([tables.pivot(df, k, "endpoint_error").loc[("Handcrafted", "iPNDM"), 3] for k in g.models])
    row = ("Handcrafted", "iPNDM")
    assert mean.values.loc[row, 3] == pytest.approx(per.mean(), rel=1e-12)
    assert lo.loc[row, 3] == per.min() and hi.loc[row, 3] == per.max()
    from scipy import stats as st
    h = st.t.ppf(0.975, 2) * per.std(ddof=1) / np.sqrt(3)
    assert mean.high.loc[row, 3] - mean.values.loc[row, 3] == pytest.approx(h, rel=1e-10)
    text = render.render(tmp_path / "res", tmp_path / "rep")[0].read_text()
    assert "## Across the instances of `gmm64` (3: `gmm64@seed=1`, `gmm64@seed=2`, `gmm64@seed=3`)" in text
    assert "mean over 3 instances" in text and "Range across instances:" in text
    assert "## Model `gmm64@seed=2`" in text                       # each instance keeps its own tables
    assert "mean over 3 instances" in (tmp_path / "rep" / "inst.tex").read_text()
