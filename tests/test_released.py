"""The released DyWeight coefficients (the paper's pixel/latent checkpoints and the repository's FLUX.1-dev ones):
every checkpoint loads as a solver whose grid, time-scale count and NFE agree with its recorded settings; wrong
(dataset, nfe, run) are clear errors."""
from __future__ import annotations

import pytest
import torch

import baselines
import solvers
from bench.models.flux import flow_times
from solvers import schedules

CHECKPOINTS = baselines.released_checkpoints()


def test_the_forty_paper_and_three_flux_checkpoints_are_there():
    assert len(CHECKPOINTS) == 43
    assert baselines.released_datasets() == {
        "cifar10": [3, 4, 4, 5, 6, 7, 8, 9], "ffhq": [3, 4, 5, 6, 7, 8, 9], "afhqv2": [3, 4, 5, 6, 7, 8, 9],
        "imagenet64": [3, 4, 5, 6, 7, 8, 9], "lsun_bedroom_ldm": [3, 4, 5, 6, 7, 8, 9],
        "ms_coco": [8, 12, 16, 20], "flux_dev": [3, 5, 7]}
    flux = [ck for ck in CHECKPOINTS if ck["dataset"] == "flux_dev"]
    assert all(ck["time"] == "flow" and ck["divisor"] == "scaled" and ck["history"] == 2 for ck in flux)
    assert all(ck.get("time", "sigma") == "sigma" for ck in CHECKPOINTS if ck["dataset"] != "flux_dev")


@pytest.mark.parametrize("ck", CHECKPOINTS, ids=[c["run"] for c in CHECKPOINTS])
def test_every_checkpoint_loads_with_matching_sizes(ck):
    s = baselines.released_solver(ck["dataset"], ck["nfe"], run=ck["run"])
    n, afs = ck["num_time_points"], ck["afs"]
    assert s.grid_points == n and s.afs == afs and s.history == ck["history"]
    assert s.weights.shape == (n - 1, ck["history"])
    assert s.rows() == [[float(v) for v in r] for r in ck["weights_oldest_to_newest"]]
    assert s.time_scale.shape == (n - 2 if afs else n - 1,)
    if ck.get("time_scale_bounds") is None:                    # stored as the factors themselves
        assert s.time_scale.tolist() == [float(v) for v in ck["time_scale"]]
    else:                                                       # stored post-activation; learned as phi
        assert s.time_scale_bounds == tuple(ck["time_scale_bounds"])
        assert torch.allclose(s.scales(), torch.tensor(ck["time_scale"], dtype=torch.float64), atol=1e-12, rtol=0)
    assert s.metadata["time"] == ck.get("time", "sigma") and s.divisor == ck.get("divisor", "shifted")
    # NFE: one call per step (minus AFS), two evaluations per call under classifier-free guidance
    evals = 2 if ck["classifier_free_guidance"] else 1
    assert ck["nfe"] == s.calls(n, afs) * evals
    assert s.num_points(ck["nfe"], afs=afs, evals_per_call=evals) == n
    assert s.metadata["run"] == ck["run"] and s.metadata["released"] == ck["dataset"]
    # and it samples (on a stand-in denoiser; the grid of its recorded range)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if ck.get("time") == "flow":                                # flow times from 1 to 0 (FLUX's shifted grid)
        grid = flow_times(n, 3.0)
    else:
        grid = schedules.polynomial(n, ck["sigma_min_trained"], ck["sigma_max_trained"])
    out = s.sample(lambda x, sig: x / (1 + sig.reshape(-1, 1) ** 2), x * grid[0], grid, afs=afs)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_cifar10_nfe4_has_two_runs_and_the_first_is_the_default():
    default = baselines.released_solver("cifar10", 4)
    inception = baselines.released_solver("cifar10", 4, run="00001-cifar-nfe4")
    piecewise = baselines.released_solver("cifar10", 4, run="00002-cifar-nfe4")
    assert default.metadata["run"] == "00001-cifar-nfe4" and default.metadata["loss"] == "inception"
    assert piecewise.metadata["loss"] == "piecewise"
    assert default.rows() == inception.rows() and default.rows() != piecewise.rows()
    assert baselines.released_coefficients("cifar10", 4)["run"] == "00001-cifar-nfe4"
    assert baselines.released_coefficients("cifar10", 4, run="00002-cifar-nfe4")["loss"] == "piecewise"


@pytest.mark.parametrize("dataset,nfe,run,match", [
    ("cifar10", 10, None, r"no released DyWeight coefficients for 'cifar10' at NFE 10; released NFEs: 3, 4, 5, 6"),
    ("ms_coco", 4, None, r"released NFEs: 8, 12, 16, 20"),
    ("celebA", 5, None, r"dataset 'celebA'; accepted: cifar10, ffhq, afhqv2, imagenet64, lsun_bedroom_ldm, ms_coco, "
                        r"flux_dev"),
    ("cifar10", 4, "00003-cifar-nfe5", r"no released DyWeight run '00003-cifar-nfe5' .* accepted: 00001-cifar-nfe4, "
                                       r"00002-cifar-nfe4"),
    ("ffhq", 5, "00001-cifar-nfe4", r"accepted: 00010-ffhq-nfe5"),
])
def test_wrong_pairs_are_clear_errors(dataset, nfe, run, match):
    with pytest.raises(ValueError, match=match):
        baselines.released_coefficients(dataset, nfe, run=run)
    with pytest.raises(ValueError, match=match):
        baselines.released_solver(dataset, nfe, run=run)


def test_released_coefficients_match_the_shared_copy():
    """baselines/data is a copy of ../shared/data: the numbers are identical where the shared file exists."""
    import json
    from pathlib import Path
    shared = Path("/work/shared/data/dyweight_released_coefficients.json")
    if not shared.exists():
        pytest.skip("the shared data folder is not on this machine")
    own = json.loads((baselines.DATA / "dyweight_released_coefficients.json").read_text())["checkpoints"]
    assert json.loads(shared.read_text())["checkpoints"] == own


def test_every_reported_dyweight_cell_has_coefficients():
    """Every (dataset, NFE) of the paper's main DyWeight rows loads, except the ones the authors did not release:
    ms_coco NFE 3/5/7 and DrawBench (a clear ValueError there). The paper's `lsun_bedroom` is the released key
    `lsun_bedroom_ldm`."""
    key = {"lsun_bedroom": "lsun_bedroom_ldm"}
    cells = {(r["dataset"], int(r["nfe"])) for r in baselines.reported_results()
             if r["method"] == "DyWeight" and not r["variant"]}
    not_released = {("ms_coco", 3), ("ms_coco", 5), ("ms_coco", 7), ("drawbench", 5), ("drawbench", 7),
                    ("drawbench", 9)}
    assert not_released <= cells and len(cells) == 5 * 7 + 7 + 3
    for dataset, nfe in sorted(cells):
        if (dataset, nfe) in not_released:
            with pytest.raises(ValueError, match="no released DyWeight coefficients"):
                baselines.released_solver(key.get(dataset, dataset), nfe)
        else:
            ck = baselines.released_coefficients(key.get(dataset, dataset), nfe)
            assert baselines.released_solver(key.get(dataset, dataset), nfe).grid_points == \
                ck["num_time_points"]


def test_save_and_load_round_trip(tmp_path):
    s = baselines.released_solver("imagenet64", 6)
    path = tmp_path / "dy.json"
    s.save(path)
    back = solvers.load(path)
    assert back.rows() == s.rows() and back.time_scale.tolist() == s.time_scale.tolist()
    assert back.afs == s.afs and back.metadata == s.metadata and back.grid_points == s.grid_points
    with open(path) as f:
        assert f.read(1) == "{"
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(ValueError, match="not a saved solver"):
        solvers.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no saved solver"):
        solvers.load(tmp_path / "missing.json")
