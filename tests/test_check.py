"""`python -m bench check`: passes on identical results, fails (exit 1, listing the cells) on a planted
regression, a failed cell or a missing cell; respects the metric's direction and the tolerance."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import store_rows

from bench.cli import main
from bench.report import regression

CELLS = [("iPNDM", "ipndm", "handcrafted", 3, 0.40), ("iPNDM", "ipndm", "handcrafted", 5, 0.10),
         ("DyWeight", "dyweight", "learned", 3, 0.05), ("DyWeight", "dyweight", "learned", 5, 0.02)]


def rows(changes=None, metric="endpoint_error", drop=(), half=None):
    """Synthetic results (the store's Result columns); changes[(label, nfe)] replaces a value (NaN = failed);
    `half`: every value's 95 % interval is value ± half (None: no interval stored)."""
    changes = changes or {}
    out = []
    for label, solver, family, nfe, v in CELLS:
        if (label, nfe) in drop:
            continue
        v = changes.get((label, nfe), v)
        ok = math.isfinite(v)
        out.append(dict(grid="quick", model="gmm64", solver=solver, label=label, family=family, options="{}",
                        nfe=nfe, afs=True, schedule="polynomial", metric=metric, value=v,
                        status="ok" if ok else "failed", error="" if ok else "non-finite samples", num_samples=10,
                        seeds="0-9", distilled_on="", code_version="t", config_hash="h",
                        cell_key=f"{label}-{nfe}", torch_version="2.13.0", device="cpu", world_size=1,
                        wall_time=0.1, created_at="2026-11-22T00:00:00",
                        ci_low=math.nan if half is None else v - half, ci_high=math.nan if half is None else v + half,
                        ci_method="" if half is None else "bootstrap:1000", replicas=1,
                        higher_is_better=metric == "clip", metric_label=metric, paper_key=""))
    return out


def store(path, cell_rows):
    store_rows(path, cell_rows)
    return path


@pytest.fixture
def baseline(tmp_path):
    base = tmp_path / "baseline.csv"
    regression.write_baseline(pd.DataFrame(rows()), base)
    return base


def check(tmp_path, baseline, cell_rows, *extra):
    res = store(tmp_path / f"fresh{len(list(tmp_path.iterdir()))}", cell_rows)   # a new store per call
    return main(["check", "--baseline", str(baseline), "--results-dir", str(res), *extra])


def test_identical_results_pass(tmp_path, baseline, capsys):
    assert check(tmp_path, baseline, rows()) == 0
    assert "no regressions" in capsys.readouterr().out


def test_planted_regression_fails_and_names_the_cell(tmp_path, baseline, capsys):
    assert check(tmp_path, baseline, rows({("DyWeight", 5): 0.03})) == 1
    err = capsys.readouterr().err
    assert "DyWeight" in err and "regressed" in err
    assert "iPNDM" not in err                                   # only the cell that got worse is listed


def test_within_tolerance_passes_and_tolerance_is_per_metric(tmp_path, baseline):
    assert check(tmp_path, baseline, rows({("iPNDM", 3): 0.404})) == 0                       # +1 % < 2 %
    assert check(tmp_path, baseline, rows({("iPNDM", 3): 0.44}), "--tolerance", "0.2") == 0
    assert check(tmp_path, baseline, rows({("iPNDM", 3): 0.44}), "--tolerance", "endpoint_error=0.05") == 1


def test_improvement_passes_and_is_reported(tmp_path, baseline, capsys):
    assert check(tmp_path, baseline, rows({("iPNDM", 3): 0.2})) == 0
    assert "improved" in capsys.readouterr().out


def test_failed_and_missing_cells_fail(tmp_path, baseline, capsys):
    assert check(tmp_path, baseline, rows({("iPNDM", 5): math.nan})) == 1
    assert "failed" in capsys.readouterr().err
    assert check(tmp_path, baseline, rows(drop={("DyWeight", 3)})) == 1
    assert "missing" in capsys.readouterr().err
    assert check(tmp_path, baseline, rows(drop={("DyWeight", 3)}), "--allow-missing") == 0


def test_higher_is_better_metric_direction():
    base = pd.DataFrame(rows(metric="clip"))
    worse = pd.DataFrame(rows({("iPNDM", 3): 0.30}, metric="clip"))        # lower CLIP score = worse
    better = pd.DataFrame(rows({("iPNDM", 3): 0.50}, metric="clip"))
    assert set(regression.compare(base, worse).verdict) == {"ok", "regressed"}
    assert set(regression.compare(base, better).verdict) == {"ok", "improved"}


def test_update_writes_a_baseline_that_then_passes(tmp_path):
    res = store(tmp_path / "res", rows())
    base = tmp_path / "b" / "quick.csv"
    assert main(["check", "--baseline", str(base), "--results-dir", str(res), "--update"]) == 0
    assert len(pd.read_csv(base)) == len(CELLS)
    assert main(["check", "--baseline", str(base), "--results-dir", str(res)]) == 0


def test_bad_input_is_one_line_error(tmp_path, baseline, capsys):
    res = store(tmp_path / "res", rows())
    assert main(["check", "--baseline", str(tmp_path / "none.csv"), "--results-dir", str(res)]) == 2
    assert "no baseline file" in capsys.readouterr().err
    assert main(["check", "--baseline", str(baseline), "--results-dir", str(res), "--tolerance", "abc"]) == 2
    assert "bad --tolerance" in capsys.readouterr().err
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    assert main(["check", "--baseline", str(tmp_path / "junk.csv"), "--results-dir", str(res)]) == 2
    assert "not a results baseline" in capsys.readouterr().err


def test_options_survive_the_csv_round_trip(tmp_path):
    r = rows()
    for x in r:
        x["options"] = json.dumps({"order": 3, "variant": "bh2"})
    base = tmp_path / "b.csv"
    regression.write_baseline(pd.DataFrame(r), base)
    assert set(regression.compare(regression.read_baseline(base), pd.DataFrame(r)).verdict) == {"ok"}


def test_with_intervals_a_regression_is_a_move_outside_the_noise():
    base = pd.DataFrame(rows(half=0.01))
    # DyWeight NFE 5: 0.02 -> 0.029 is +45 %, but the intervals [0.01, 0.03] and [0.019, 0.039] overlap: noise
    noisy = pd.DataFrame(rows({("DyWeight", 5): 0.029}, half=0.01))
    cmp = regression.compare(base, noisy)
    assert set(cmp.verdict) == {"ok"} and set(cmp.rule) == {"intervals"}
    # 0.02 -> 0.045: disjoint intervals, worse: regressed; 0.40 -> 0.35 for iPNDM NFE 3: improved
    moved = pd.DataFrame(rows({("DyWeight", 5): 0.045, ("iPNDM", 3): 0.35}, half=0.01))
    verdicts = regression.compare(base, moved).set_index(["label", "nfe"]).verdict
    assert verdicts[("DyWeight", 5)] == "regressed" and verdicts[("iPNDM", 3)] == "improved"
    assert verdicts[("iPNDM", 5)] == "ok"
    # an explicit tolerance overrides the intervals: +45 % > 2 %
    cmp = regression.compare(base, noisy, rtol=0.02)
    assert "regressed" in set(cmp.verdict) and set(cmp.rule) == {"rtol 0.02"}


def test_interval_rule_respects_the_stored_direction():
    base = pd.DataFrame(rows(metric="clip", half=0.01))
    lower = pd.DataFrame(rows({("iPNDM", 3): 0.30}, metric="clip", half=0.01))       # lower CLIP score = worse
    assert set(regression.compare(base, lower).verdict) == {"ok", "regressed"}


def test_check_command_uses_intervals_from_the_store(tmp_path, capsys):
    base = tmp_path / "b.csv"
    regression.write_baseline(pd.DataFrame(rows(half=0.01)), base)
    assert {"ci_low", "ci_high", "higher_is_better"} <= set(pd.read_csv(base).columns)
    assert check(tmp_path, base, rows({("DyWeight", 5): 0.029}, half=0.01)) == 0
    assert check(tmp_path, base, rows({("DyWeight", 5): 0.045}, half=0.01)) == 1
    assert "intervals" in capsys.readouterr().err


def test_vacuous_checks_fail(tmp_path, baseline, capsys):
    res = store(tmp_path / "res", rows())
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(regression.BASELINE_COLUMNS) + "\n")
    assert main(["check", "--baseline", str(empty), "--results-dir", str(res)]) == 2      # no baseline cell
    assert "holds no baseline cells" in capsys.readouterr().err
    assert main(["check", "--baseline", str(baseline), "--results-dir", str(res), "--grid", "nope"]) == 2
    assert "holds no grid 'nope'" in capsys.readouterr().err
    blank = pd.read_csv(baseline)
    blank.loc[0, "value"] = float("nan")                       # a blank baseline value: nothing to compare it to
    blank.to_csv(tmp_path / "blank.csv", index=False)
    assert main(["check", "--baseline", str(tmp_path / "blank.csv"), "--results-dir", str(res)]) == 1
    assert "unusable" in capsys.readouterr().err
    other = store(tmp_path / "other", [dict(r, grid="elsewhere") for r in rows()])    # nothing matches
    assert main(["check", "--baseline", str(baseline), "--results-dir", str(other), "--allow-missing"]) == 1
    assert "no baseline cell was compared" in capsys.readouterr().err


def test_a_fresh_failed_cell_is_not_hidden_by_an_older_ok_one(tmp_path, baseline, capsys):
    res = tmp_path / "res"
    store(res, rows())                                              # an older run: every cell ok
    failed = [dict(r, cell_key=r["cell_key"] + "-new") for r in rows({("iPNDM", 5): math.nan})]
    store(res, failed)                                              # the latest run: iPNDM NFE 5 failed
    assert main(["check", "--baseline", str(baseline), "--results-dir", str(res)]) == 1
    assert "failed" in capsys.readouterr().err
    assert main(["check", "--baseline", str(baseline), "--results-dir", str(res), "--run", "-2"]) == 0


def test_new_cells_are_listed(tmp_path, baseline, capsys):
    extra = rows() + [dict(rows()[0], label="Mine", solver="mine", cell_key="mine-3")]
    assert check(tmp_path, baseline, extra) == 0
    out = capsys.readouterr().out
    assert "new cells" in out and "Mine" in out
