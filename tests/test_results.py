"""The results store: transactional cells, runs, resumption after kill -9, no duplicates, older stores migrated,
hot journals recovered (bench/store)."""
from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import result, store_rows

from bench import store as results
from bench.cli import main
from bench.store import Result
from bench.store.select import select

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [f.name for f in fields(Result)]


def row(key: str, metric: str, value: float, **kw) -> Result:
    return result(**{"grid": "g", "model": "m", "solver": "euler", "label": "Euler", "nfe": 3, "metric": metric,
                     "value": value, "cell_key": key, **kw})


def test_store_round_trip_types_and_failed_values(tmp_path):
    with results.Store(tmp_path) as s:
        s.write_cell([row("a", "fd", 1.5), row("a", "err", 0.25)])
        s.write_cell([row("b", "fd", math.nan, error="NonFiniteError: boom")])
        assert s.stored("a") == {"fd": "ok", "err": "ok"} and s.stored("b") == {"fd": "failed"}
    df = results.load(tmp_path)
    assert list(df.columns) == COLUMNS
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
    assert df.empty and list(df.columns) == COLUMNS


def test_select_shows_one_run_and_says_what_it_left_out(tmp_path):
    store_rows(tmp_path, [row("a32", "fd", 1.0, num_samples=32), row("b32", "fd", 2.0, nfe=5, num_samples=32)])
    store_rows(tmp_path, [row("a64", "fd", 1.5, num_samples=64)])                  # a later run, one cell
    sel = select(tmp_path)
    assert sel.rows.cell_key.tolist() == ["a64"]
    assert "other sample counts (32" in " ".join(sel.notes["g"])
    assert sorted(select(tmp_path, run="-2").rows.cell_key) == ["a32", "b32"]
    assert sorted(select(tmp_path, where={"num_samples": "32"}).rows.cell_key) == ["a32", "b32"]
    with pytest.raises(ValueError, match="no run"):
        select(tmp_path, run="zzz")

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
    assert f"{len(before) // 2} of 12 cells already stored" in err
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


FORMAT1 = ["grid", "model", "solver", "label", "family", "options", "nfe", "afs", "schedule", "metric", "value",
           "status", "error", "num_samples", "seeds", "distilled_on", "code_version", "config_hash", "cell_key",
           "torch_version", "device", "world_size", "wall_time", "created_at"]


def test_a_format_1_store_is_migrated_into_one_run_per_grid(tmp_path):
    """A results.sqlite of the first format (keyed by (cell_key, metric), no runs): reading it migrates it; its
    rows keep their values, and each grid's table shows each row's latest cell."""
    conn = sqlite3.connect(tmp_path / results.DB_NAME)
    with conn:
        conn.execute(f"CREATE TABLE results ({', '.join(FORMAT1)}, PRIMARY KEY (cell_key, metric))")
        for key, n, v, t in (("k1", 32, 1.5, "2026-01-01"), ("k2", 64, 1.4, "2026-01-02"),
                             ("k3", 32, 9.0, "2026-01-01")):
            r = dict(grid="g", model="m", solver="euler", label="Euler", family="handcrafted", options="{}",
                     nfe=3 if key != "k3" else 5, afs=1, schedule="polynomial", metric="fid", value=v, status="ok",
                     error="", num_samples=n, seeds="0-9", distilled_on="", code_version="v", config_hash="h",
                     cell_key=key, torch_version="t", device="cpu", world_size=1, wall_time=0.5, created_at=t)
            conn.execute(f"INSERT INTO results ({', '.join(FORMAT1)}) VALUES ({', '.join('?' * len(FORMAT1))})",
                         [r[c] for c in FORMAT1])
    conn.close()
    df = results.load(tmp_path)
    assert sorted(df.value) == [1.4, 1.5, 9.0] and list(df.columns) == COLUMNS
    shown = select(tmp_path).rows
    assert sorted(shown.cell_key) == ["k2", "k3"]                  # NFE 3: the later cell; NFE 5: its only one
    with results.Store(tmp_path) as s:
        s.write_cell([row("k4", "fid", 2.0, paper_method="iPNDM")])
    assert len(results.load(tmp_path)) == 4


def test_a_hot_journal_left_by_a_killed_writer_is_recovered_by_readers(tmp_path):
    store_rows(tmp_path, [row("a", "fd", 1.0)])
    code = textwrap.dedent(f"""
        import os, sqlite3
        conn = sqlite3.connect({str(tmp_path / results.DB_NAME)!r}, isolation_level=None)
        conn.execute("PRAGMA cache_size = 1")
        conn.execute("BEGIN")
        for i in range(2000):
            conn.execute("INSERT INTO results (cell_key, metric_key, value) VALUES (?, 'x', 1.0)", (f"k{{i}}",))
        os._exit(9)                                                  # killed mid-transaction: a hot journal
    """)
    subprocess.run([sys.executable, "-c", code], check=False)
    journal = tmp_path / (results.DB_NAME + "-journal")
    assert journal.exists() and journal.stat().st_size > 0
    assert results.load(tmp_path).cell_key.tolist() == ["a"]      # recovered, the uncommitted rows gone
    assert main(["report", "--results-dir", str(tmp_path)]) == 0


def test_a_corrupt_store_and_a_results_path_that_is_a_file_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / results.DB_NAME).write_bytes(b"not a database at all" * 100)
    assert main(["report", "--results-dir", str(bad)]) == 2
    assert "is not a readable results store" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["run", "--grid", "quick", "--results-dir", str(afile), "--nfe", "3", "--num-samples", "4"]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_read_only_results_dir_is_a_one_line_error(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["run", "--grid", "quick", "--results-dir", str(ro), "--nfe", "3", "--num-samples", "4"]) == 2
        assert "cannot write the results directory" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)
