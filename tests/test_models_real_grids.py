"""The paper grids (bench/grids/paper_*.toml) load and expand to the paper's cells.

The FID / CLIP / HPSv2.1 / ImageReward metrics and the Inception distillation loss are registered by the metrics
side of the project; where one is not registered in this checkout, a stand-in of the same name lets the grid's
structure (models, solvers, budgets, released checkpoints) be checked on its own.
"""
from __future__ import annotations

import pytest

import bench.metrics
from bench import grid
from bench.distill import losses
from bench.metrics.base import Metric

EXPECTED = {  # grid -> {(model, label): [NFEs]} spot checks, and total cell count
    "paper_table1": (218, {("cifar10", "DPM-Solver++(3M)"): [3, 4, 5, 6, 7, 8, 9],
                           ("sd15", "DyWeight"): [8, 12, 16, 20], ("cifar10", "EPD-Solver"): [5, 8],
                           ("imagenet64", "EPD-Solver"): [5, 8], ("lsun_bedroom", "AMED-Solver"): [3, 5, 7, 9],
                           ("afhqv2", "LD3"): [3, 5, 7, 9], ("lsun_bedroom", "LD3"): [],
                           ("imagenet64", "Instance-aware"): [3, 5, 7, 9], ("lsun_bedroom", "Instance-aware"): []}),
    "paper_sd_clip": (16, {("sd15", "UniPC(2M)"): [8, 12, 16, 20]}),
    "paper_flux": (23, {("flux", "DyWeight"): [3, 5, 7], ("flux_drawbench", "iPNDM(2M)"): [5, 7, 9],
                        ("flux", "DyWeight (released)"): [3, 5, 7], ("flux_drawbench", "DyWeight (released)"): [5, 7]}),
    "paper_teacher": (16, {("cifar10", "DyWeight (teacher Heun-35)"): [3, 5, 7, 9]}),
    "paper_released": (39, {("lsun_bedroom", "DyWeight (released)"): [3, 4, 5, 6, 7, 8, 9],
                            ("sd15", "DyWeight (released, SD)"): [8, 12, 16, 20]}),
    "paper_a1_transfer": (20, {("lsun_bedroom", "DyWeight (C.-CIFAR-10)"): [3]}),
    "paper_a2_supervision": (24, {("imagenet64", "DyWeight (path)"): [3, 5, 7, 9]}),
    "paper_a3_init": (30, {("afhqv2", "DyWeight (Time Uniform schedule)"): [4, 6, 8]}),
    "paper_a4_pairs": (18, {("imagenet64", "DyWeight (30K pairs)"): [4, 6, 8]}),
    "paper_fig6_ablation": (44, {("cifar10", "DyWeight (K=4)"): [3, 5, 7, 9]}),
}


class _StandIn(Metric):
    pass


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(bench.metrics.REGISTRY, "targets", dict(bench.metrics.REGISTRY.targets))
    import sys
    import types
    mod = types.ModuleType("_paper_grid_stand_ins")
    mod.StandIn = _StandIn
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    for name in ("fid", "clip_score", "hpsv2", "image_reward"):
        if name not in bench.metrics.names():
            bench.metrics.register(name, f"{mod.__name__}:StandIn")
    monkeypatch.setattr(losses.REGISTRY, "targets", dict(losses.REGISTRY.targets))
    if "inception" not in losses.names():
        losses.register("inception", losses.mse)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_grid_expands(name, registered):
    g = grid.load(name)
    total, spots = EXPECTED[name]
    # FLUX: DrawBench NFE 9; Table 1: EPD-Solver (K = 2, AFS) cannot spend NFE 3, 7 or 9 on five models
    assert len(g.cells) == total and len(g.skipped) == {"paper_flux": 1, "paper_table1": 15}.get(name, 0)
    for (model, label), nfes in spots.items():
        assert sorted(c.nfe for c in g.cells if c.model == model and c.row.label == label) == nfes


def test_paper_grids_use_the_paper_settings(registered):
    g = grid.load("paper_table1")
    sd = [c for c in g.cells if c.model == "sd15"]
    assert all(not c.row.afs for c in sd)
    no_afs = {"LD3", "Instance-aware"}                              # LD3's protocol, and the row built on it
    assert all(c.row.afs != (c.row.label in no_afs) for c in g.cells if c.model != "sd15")
    assert {c.row.label: c.row.paper_method for c in g.cells} == {
        **{k: k for k in ("iPNDM", "DPM-Solver++(3M)", "UniPC", "DyWeight", "iPNDM(2M)", "DPM-Solver++(2M)",
                          "UniPC(2M)", "EPD-Solver", "AMED-Solver", "LD3")}, "Instance-aware": None}   # not in Table 1
    nfe8 = {c.row.label: c.num_points for c in sd if c.nfe == 8}
    assert nfe8 == {"iPNDM(2M)": 5, "DPM-Solver++(2M)": 5, "UniPC(2M)": 5, "DyWeight": 5}   # 2 NFE per step
    lsun = {c.row.label: c.schedule for c in g.cells if c.model == "lsun_bedroom" and c.nfe == 5}
    assert lsun == {"iPNDM": "polynomial", "DPM-Solver++(3M)": "logsnr", "UniPC": "logsnr", "DyWeight": "discrete",
                    "EPD-Solver": "time_uniform", "AMED-Solver": "time_uniform"}
    dy = {c.model: c.row.distill.get("history") for c in g.cells if c.row.name == "dyweight"}
    assert dy == {"cifar10": 3, "ffhq": 3, "afhqv2": 3, "imagenet64": 3, "lsun_bedroom": 3, "sd15": 2}
    flux = grid.load("paper_flux")
    assert {c.schedule for c in flux.cells} == {"flow_shift"} and all(not c.row.afs for c in flux.cells)
    # the reference's protocol: flow time for the multistep solvers (exponential integrators are the same in both),
    # seeds 42 + i, CLIP ViT-B/16, FID on 30k, and dyweight_flux/train_example.yaml's recipe
    assert {c.row.label: c.plan.time for c in flux.cells if c.nfe == 5 and c.model == "flux"} == {
        "DPM-Solver++(2M)": "sigma", "iPNDM(2M)": "flow", "DyWeight": "flow", "DyWeight (released)": "flow"}
    assert all(c.seed_start == 42 for c in flux.cells)
    assert {m for c in flux.cells for m in c.metrics} == {"fid_30k", "clip_score_b16", "hpsv2", "image_reward"}
    dy = next(c for c in flux.cells if c.row.label == "DyWeight")
    assert {k: dy.row.distill[k] for k in ("history", "init", "divisor", "optimizer", "batch_size", "steps",
                                            "num_samples", "teacher_steps")} == {
        "history": 2, "init": "euler", "divisor": "scaled", "optimizer": "adamw", "batch_size": 16, "steps": 313,
        "num_samples": 5000, "teacher_steps": 28}      # 8 ranks x batch 1 x 2 accumulations = 16 per step
    assert dy.plan.sigmas[-1] == 0.0 and dy.plan.source_sigmas[-1] == 0.0      # distilled on the flow grid itself
    assert [s[2] for s in flux.skipped] == [9]                  # no released coefficients at DrawBench NFE 9
