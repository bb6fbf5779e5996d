"""The results store: transactional cells, resumption after kill -9, no duplicates (bench/results.py)."""
from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import results

ROOT = Path(__file__).resolve().parent.parent


def row(key: str, metric: str, value: float, **kw) -> dict:
    base = {"grid": "g", "model": "m", "solver": "euler", "label": "Euler", "family": "handcrafted", "options": "{}",
            "nfe": 3, "afs": True, "schedule": "polynomial", "metric": metric, "value": value, "status": "ok",
            "error": "", "num_samples": 10, "seeds": "0-9", "code_version": "v", "config_hash": "h",
            "cell_key": key, "torch_version": "t", "device": "cpu", "world_size": 1, "wall_time": 0.5,
            "created_at": "now"}
    return {**base, **kw}


def test_store_round_trip_types_and_failed_values(tmp_path):
    with results.Store(tmp_path) as s:
        s.write_cell([row("a", "fd", 1.5), row("a", "err", 0.25)])
        s.write_cell([row("b", "fd", math.nan, status="failed", error="NonFiniteError: boom")])
        assert s.stored("a") == {"fd": "ok", "err": "ok"} and s.stored("b") == {"fd": "failed"}
    df = results.load(tmp_path)
    assert list(df.columns) == list(results.COLUMNS)
    assert df.nfe.dtype.kind == "i" and df.afs.dtype == bool and df.value.dtype == "float64"
    assert df.set_index(["cell_key", "metric"]).value.to_dict() == pytest.approx(
        {("a", "fd"): 1.5, ("a", "err"): 0.25, ("b", "fd"): math.nan}, nan_ok=True)
    assert df[df.cell_key == "b"].error.item() == "NonFiniteError: boom"


def test_rewriting_a_cell_never_duplicates_it(tmp_path):
    with results.Store(tmp_path) as s:
        s.write_cell([row("a", "fd", 1.0)])
        s.write_cell([row("a", "fd", 2.0)])                        # a rerun: ignored
        assert results.load(tmp_path).value.tolist() == [1.0]
        s.write_cell([row("a", "fd", 3.0)], replace=True)          # --retry-failed: replaced
    df = results.load(tmp_path)
    assert len(df) == 1 and df.value.item() == 3.0


def test_a_cell_is_written_all_or_nothing(tmp_path):
    with results.Store(tmp_path) as s:
        with pytest.raises(sqlite3.Error):
            s.write_cell([row("a", "fd", 1.0), row("a", "err", object())])   # second row cannot be stored
    assert results.load(tmp_path).empty


def test_load_of_an_empty_directory_has_the_columns(tmp_path):
    df = results.load(tmp_path / "nothing")
    assert df.empty and list(df.columns) == list(results.COLUMNS)


# ---- kill -9 mid-run, then resume -----------------------------------------------------------------------------
SLOW = textwrap.dedent('''
    """A Gaussian mixture whose denoiser sleeps, and a second metric: a run that is easy to kill mid-cell."""
    import sys, time
    import torch
    import bench.metrics, bench.models
    from bench.metrics.base import Metric
    from bench.models.gmm import gmm2d

    class SlowGMM(type(gmm2d())):
        def denoiser(self, cond=None):
            def den(x, sigma):
                time.sleep(0.02)
                return self.denoise(x, sigma)
            return den

    def slow():
        g = gmm2d()
        return SlowGMM("slow", g.pi, g.mu, g.U @ torch.diag_embed(g.lam) @ g.U.transpose(1, 2))

    class MeanNorm(Metric):
        name = "mean_norm"
        def compute(self, cell):
            return float(cell.samples.norm(dim=1).mean())

    bench.models.register("slow", "slowmod:slow")
    bench.metrics.register("mean_norm", "slowmod:MeanNorm")
    from bench.cli import main
    raise SystemExit(main(sys.argv[1:]))
''')

GRID = textwrap.dedent('''
    name = "resume"
    nfe = [3, 4, 5, 6, 7, 8]
    num_samples = 64
    batch_size = 32
    [[models]]
    name = "slow"
    metrics = ["fd_exact", "mean_norm"]
    [[solvers]]
    name = "euler"
    [[solvers]]
    name = "ipndm"
    afs = true
''')


def _cli(tmp_path: Path, results_dir: Path, **kw):
    (tmp_path / "slowmod.py").write_text(SLOW)
    (tmp_path / "resume.toml").write_text(GRID)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(tmp_path / "slowmod.py"), "run", "--grid", str(tmp_path / "resume.toml"),
           "--results-dir", str(results_dir), "--no-progress"]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def _stored_rows(results_dir: Path) -> int:
    try:
        return len(results.load(results_dir))
    except Exception:                       # the database may be mid-creation
        return 0


def test_kill_9_mid_run_loses_at_most_one_cell_and_a_rerun_completes_without_duplicates(tmp_path):
    res = tmp_path / "res"
    proc = _cli(tmp_path, res)
    deadline = time.time() + 120
    while _stored_rows(res) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = results.load(res)
    assert 4 <= len(before) < 24                                     # 12 cells × 2 metrics in all
    assert (before.groupby("cell_key").size() == 2).all()           # no half-written cell

    proc = _cli(tmp_path, res)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"{len(before) // 2} of 12 cells already stored" in out
    after = results.load(res)
    assert len(after) == 24 and not after.duplicated(["cell_key", "metric"]).any()
    kept = after.set_index(["cell_key", "metric"]).loc[before.set_index(["cell_key", "metric"]).index]
    assert (kept.created_at.values == before.created_at.values).all()   # stored cells were not recomputed

    clean = _cli(tmp_path, tmp_path / "clean")
    _, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err
    ref = results.load(tmp_path / "clean").set_index(["cell_key", "metric"]).value
    got = after.set_index(["cell_key", "metric"]).value
    assert got.sort_index().tolist() == pytest.approx(ref.sort_index().tolist(), rel=1e-12)


def test_a_store_from_an_older_version_loads_and_gains_the_new_columns(tmp_path):
    """A results.sqlite written before `paper_method` existed: load gives the column empty, and the next Store
    adds it, keeping every stored row."""
    old = [c for c in results.COLUMNS if c != "paper_method"]
    conn = sqlite3.connect(tmp_path / results.DB_NAME)
    with conn:
        conn.execute(f"CREATE TABLE results ({', '.join(old)}, PRIMARY KEY (cell_key, metric))")
        r = row("k1", "fid", 1.5)
        conn.execute(f"INSERT INTO results ({', '.join(old)}) VALUES ({', '.join('?' * len(old))})",
                     [int(r[c]) if isinstance(r.get(c), bool) else r.get(c) for c in old])
    conn.close()
    df = results.load(tmp_path)
    assert len(df) == 1 and df.paper_method.tolist() == [""] and list(df.columns) == list(results.COLUMNS)
    with results.Store(tmp_path) as store:
        store.write_cell([row("k2", "fid", 2.0, paper_method="iPNDM")])
    df = results.load(tmp_path)
    assert df.value.tolist() == [1.5, 2.0] and df.paper_method.tolist() == ["", "iPNDM"]
