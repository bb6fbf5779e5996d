"""`python -m bench instance-bench` runs end to end on a tiny budget and writes its figures; the paired ratio
interval it prints (bench.stats.paired_ratio); bad input is refused with one line."""
from __future__ import annotations

import json

import pytest
import torch

from bench import cli, stats


def test_paired_ratio():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(500, generator=g, dtype=torch.float64) + 0.5
    same = stats.paired_ratio(a, a)
    assert same.value == 1.0 and same.low == same.high == 1.0          # paired: no noise in a ratio to itself
    half = stats.paired_ratio(a / 2, a)
    assert half.low == half.high == 0.5 and half.value == pytest.approx(0.5)
    b = a + 0.3 * torch.randn(500, generator=g, dtype=torch.float64).abs()
    r = stats.paired_ratio(a, b)
    assert r.low < r.value < r.high < 1 and r == stats.paired_ratio(a, b)      # reproducible
    assert r.value == pytest.approx(float(a.mean() / b.mean()))
    with pytest.raises(ValueError, match="one shape"):
        stats.paired_ratio(a, b[:10])


def test_instance_bench_runs_and_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "ib.json"
    assert cli.main(["instance-bench", "--models", "gmm_scales", "--nfe", "3", "--eval-samples", "64",
                     "--teacher-steps", "8", "--ld3-steps", "4", "--steps", "8", "--json", str(out),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    text = capsys.readouterr().out
    assert "instance-aware / best global learned" in text and "per-class best" in text and "summary" in text
    r = json.loads(out.read_text())["models"]["gmm_scales"]["nfe"]["3"]
    assert set(r["error"]) == {"UniPC logSNR", "UniPC polynomial", "LD3", "GITS", "instance-aware", "global fine-tune",
                               "fine-tune + per-sample", "per-class best"}
    assert set(r["per_class"]["picked"]) <= {"LD3", "GITS"} and len(r["per_class"]["picked"]) == 3
    low, value, high = r["ratio"][1], r["ratio"][0], r["ratio"][2]
    assert low <= value <= high and r["wins"] == (high < 1) and r["init"] in ("LD3", "GITS")
    t = r["fine_tune_start_ratio"]
    assert t[1] <= t[0] <= t[2] and "fine-tune + per-sample / global fine-tune" in text
    assert r["parameters"] > 0 and r["overhead"] > 0 and sum(r["per_class"]["counts"]) == 64


@pytest.mark.parametrize("argv, message", [(["--models", "digits"], "no exact reference solution"),
                                           (["--nfe", "1"], "--nfe must be >= 2"),
                                           (["--nfe", "three"], "comma-separated list")])
def test_instance_bench_bad_input(argv, message, capsys):
    assert cli.main(["instance-bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
