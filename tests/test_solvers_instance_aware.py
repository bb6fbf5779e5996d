"""The instance-aware discretization (solvers/instance_aware.py): the untrained predictor is LD3's global
schedule, per-sample grids are strictly descending with fixed endpoints for any noise, NFE, options/save/load round
trips, distillation (two phases, held-out loss lowered, the regulariser) and bad input."""
from __future__ import annotations

import pytest
import torch

import solvers
from bench.distill import distill
from bench.models.gmm import gmm2d, gmm_scales
from solvers import schedules
from solvers.errors import InputError
from solvers.nfe import CountingDenoiser


@pytest.fixture(scope="module")
def model():
    return gmm2d()


def trained_like(num_points=5, base="unipc", **opts):
    """A predictor whose network output is non-zero (random last layer), as after training."""
    s = solvers.get("instance_aware", num_points=num_points, afs=True, base=base, **opts)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        s.net[-1].weight.copy_(torch.randn(s.net[-1].weight.shape, generator=g, dtype=torch.float64))
        s.net[-1].bias.copy_(torch.randn(s.net[-1].bias.shape, generator=g, dtype=torch.float64))
        s.p2.copy_(0.3 * torch.randn(num_points, generator=g, dtype=torch.float64))
        s.p1.copy_(torch.randn(num_points, generator=g, dtype=torch.float64))
    return s


@pytest.mark.parametrize("base", ["unipc", "ipndm", "euler"])
def test_the_untrained_predictor_is_ld3s_untrained_schedule(model, base):
    grid = schedules.polynomial(5, 0.002, 80.0)
    x_T = model.noise(range(64)).double()
    ia = solvers.get("instance_aware", num_points=5, afs=True, base=base)
    ld3 = solvers.get("ld3", num_points=5, afs=True, base=base)
    den = model.denoiser()
    torch.testing.assert_close(ia.sample(den, x_T, grid, afs=True), ld3.sample(den, x_T, grid, afs=True),
                               rtol=1e-12, atol=1e-12)
    rows = ia.grids(x_T, 80.0, 0.002)
    assert bool((rows == rows[:1]).all())


@pytest.mark.parametrize("inputs", ["noise", "norm", "noise_norm"])
@pytest.mark.parametrize("shape", [(2,), (64,), (3, 8, 8), (4, 32, 32)])
def test_grids_are_strictly_descending_with_fixed_endpoints_for_any_noise(inputs, shape):
    s = trained_like(6, inputs=inputs, max_deviation=5.0)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, *shape, generator=g, dtype=torch.float64)
    extreme = [80.0 * z, 80.0 * 1e8 * z, 1e-30 * z, torch.zeros_like(z), torch.full_like(z, float("inf")),
               torch.full_like(z, float("nan")), -80.0 * 1e300 * z.abs()]
    for x_T in extreme:
        rows = s.grids(x_T, 80.0, 0.002)
        assert rows.shape == (8, 6) and rows.dtype == torch.float64
        assert bool(torch.isfinite(rows).all())
        assert bool((rows[:, 0] == 80.0).all()) and bool((rows[:, -1] == 0.002).all())
        assert bool((rows[:, 1:] < rows[:, :-1]).all())
    assert not bool((s.grids(extreme[0], 80.0, 0.002) == s.grids(extreme[0], 80.0, 0.002)[:1]).all())


@pytest.mark.parametrize("base", ["unipc", "dpm_solver_pp", "ipndm", "euler", "heun"])
@pytest.mark.parametrize("model_times", ["global", "per_sample", "none"])
def test_each_sample_is_its_own_grid_run_and_calls_are_the_bases(model, base, model_times):
    s = trained_like(5, base=base, model_times=model_times)
    x_T = model.noise(range(6)).double()
    grid = schedules.polynomial(5, 0.002, 80.0)
    counting = CountingDenoiser(model.denoiser())
    out = s.sample(counting, x_T, grid, afs=True)
    assert counting.calls == s.calls(5, afs=True) == s.base.calls(5, afs=True)
    # sample b alone gives the same result (its grid depends on its own noise only)
    for b in range(6):
        torch.testing.assert_close(out[b:b + 1], s.sample(model.denoiser(), x_T[b:b + 1], grid, afs=True),
                                   rtol=1e-12, atol=1e-12)
    if model_times == "none":                  # then it is the base solver on the predicted grid
        torch.testing.assert_close(out, s.base.sample(model.denoiser(), x_T, s.grids(x_T, 80.0, 0.002), afs=True),
                                   rtol=1e-12, atol=1e-12)


def test_options_and_save_load_round_trip(model, tmp_path):
    s = trained_like(5, model_times="per_sample", width=16, inputs="noise", max_features=8)
    s.metadata = {"note": "kept"}
    x_T = model.noise(range(32)).double()
    grid = schedules.polynomial(5, 0.002, 80.0)
    den = model.denoiser()
    ref = s.sample(den, x_T, grid, afs=True)
    again = solvers.get("instance_aware", **s.options())
    assert torch.equal(again.sample(den, x_T, grid, afs=True), ref)
    assert again.options() == s.options()
    explicit = solvers.get("instance_aware", positions=s.global_positions().tolist(),
                           offsets=s.global_offsets().tolist(), network=s.options()["network"], afs=True,
                           model_times="per_sample", width=16, inputs="noise", max_features=8)
    torch.testing.assert_close(explicit.global_positions(), s.global_positions(), rtol=1e-12, atol=1e-12)
    s.save(tmp_path / "ia.json")
    loaded = solvers.load(tmp_path / "ia.json")
    assert torch.equal(loaded.sample(den, x_T, grid, afs=True), ref)
    assert loaded.metadata == {"note": "kept"} and loaded.learns() == s.learns()
    off = solvers.get("instance_aware", **{**s.options(), "per_sample": False})
    assert bool((off.grids(x_T, 80.0, 0.002) == off.grids(x_T, 80.0, 0.002)[:1]).all())


def test_distillation_runs_two_phases_and_lowers_the_held_out_error():
    m = gmm_scales()
    grid = schedules.polynomial(5, 0.002, 80.0)
    s = distill("instance_aware", m, grid, afs=True, seed=0, cache_dir=False, num_samples=256, eval_samples=128,
                steps=200, batch_size=32, teacher_steps=30, eval_every=20, keep_best=False, init_from=None)
    curve = s.metadata["training"]["eval_error"]
    assert curve[-1] < 0.5 * curve[0]
    # phase two (the network) moved the per-sample grids away from the global one, and lowered the error further
    rows = s.grids(m.noise(range(64)).double(), 80.0, 0.002)
    assert not bool((rows == rows[:1]).all())
    assert min(curve[6:]) < curve[5]
    assert s.metadata["training"]["parameters"] == s.parameter_count()


def test_by_default_it_starts_from_gits_grid_and_trains_the_network_alone():
    m = gmm_scales()
    grid = schedules.polynomial(5, 0.002, 80.0)
    common = dict(afs=True, seed=0, cache_dir=False, teacher_steps=30)
    gits = distill("gits", m, grid, **common, base="unipc", base_options={"order": 3, "variant": "bh1"})
    s = distill("instance_aware", m, grid, **common, num_samples=512, eval_samples=128, steps=300, batch_size=32,
                eval_every=20, keep_best=False, init_from={"solver": "gits", "base": "unipc", "teacher_steps": 30,
                                                          "base_options": {"order": 3, "variant": "bh1"}})
    tr = s.metadata["training"]
    assert tr["init"]["timesteps"] == gits.options()["timesteps"] and tr["init_from"]["solver"] == "gits"
    assert s.global_fraction == 0.0
    torch.testing.assert_close(s.global_positions(), solvers.get("instance_aware", num_points=5,
                                                                 init=gits.options()).global_positions())
    assert tr["eval_error"][-1] < 0.8 * tr["eval_error"][0]      # the network alone lowered the held-out error
    with pytest.raises(InputError, match="init_from must be a table naming a learned solver"):
        distill("ld3", m, grid, **common, init_from={"solver": "gits"})          # LD3 has no `init` option
    with pytest.raises(InputError, match="init_from must be"):
        distill("instance_aware", m, grid, **common, init_from="gits")
    with pytest.raises(InputError, match="unknown learned solver"):
        distill("instance_aware", m, grid, **common, init_from={"solver": "heun"})


def test_a_given_init_replaces_the_default_start():
    m = gmm_scales()
    grid = schedules.polynomial(5, 0.002, 80.0)
    start = [80.0, 6.0, 1.5, 0.2, 0.002]
    common = dict(afs=True, seed=0, cache_dir=False, teacher_steps=8, num_samples=32, eval_samples=0, steps=1,
                  batch_size=8)
    s = distill("instance_aware", m, grid, **common, init=start)                # no GITS search first
    tr = s.metadata["training"]
    assert tr["init"] == start and tr["init_from"] is None
    with pytest.raises(InputError, match="not both"):
        distill("instance_aware", m, grid, **common, init=start, init_from={"solver": "gits"})


def test_rows_sharing_a_start_distil_it_once():
    from bench import distill as distill_module
    m = gmm_scales()
    grid = schedules.polynomial(5, 0.002, 80.0)
    start = {"solver": "gits", "base": "unipc", "base_options": {"order": 3, "variant": "bh1"}, "teacher_steps": 8}
    common = dict(afs=True, cache_dir=False, teacher_steps=8, num_samples=32, eval_samples=0, steps=1, batch_size=8,
                  init_from=start)
    before = len(distill_module._STARTS)
    a = distill("instance_aware", m, grid, seed=0, **common, per_sample=False)
    b = distill("instance_aware", m, grid, seed=0, **common)
    assert len(distill_module._STARTS) == before + 1
    assert a.metadata["training"]["init"] == b.metadata["training"]["init"]
    distill("instance_aware", m, grid, seed=1, **common)                      # another seed: its own start
    assert len(distill_module._STARTS) == before + 2


def test_keep_best_keeps_the_lowest_held_out_error():
    m = gmm_scales()
    grid = schedules.polynomial(5, 0.002, 80.0)
    s = distill("instance_aware", m, grid, afs=True, seed=0, cache_dir=False, num_samples=128, eval_samples=64,
                steps=60, batch_size=16, teacher_steps=30, eval_every=10)
    tr = s.metadata["training"]
    k = tr["eval_step"].index(tr["kept_step"])
    assert tr["eval_error"][k] == min(tr["eval_error"])


def test_the_regulariser_pulls_the_grids_towards_the_global_one():
    m = gmm_scales()
    grid = schedules.polynomial(5, 0.002, 80.0)
    spread = {}
    for w in (0.0, 100.0):
        s = distill("instance_aware", m, grid, afs=True, seed=0, cache_dir=False, num_samples=128, eval_samples=0,
                    steps=80, batch_size=32, teacher_steps=30, regularizer=w)
        n = torch.log(s.grids(m.noise(range(256)).double(), 80.0, 0.002))
        spread[w] = float(n.std(0).max())
    assert spread[100.0] < 0.5 * spread[0.0]


def test_bad_input():
    with pytest.raises(InputError, match="base must be"):
        solvers.get("instance_aware", num_points=4, base="dyweight")
    with pytest.raises(InputError, match="inputs must be"):
        solvers.get("instance_aware", num_points=4, inputs="pixels")
    with pytest.raises(InputError, match="model_times must be"):
        solvers.get("instance_aware", num_points=4, model_times="both")
    with pytest.raises(InputError, match="exactly one of"):
        solvers.get("instance_aware")
    with pytest.raises(InputError, match="global_fraction"):
        solvers.get("instance_aware", num_points=4, global_fraction=1.0)
    s = trained_like(5)
    with pytest.raises(InputError, match="does not fit"):
        solvers.get("instance_aware", **{**s.options(), "width": 8})
    with pytest.raises(InputError, match="ending above 0"):
        s.sample(lambda x, t: x, torch.randn(2, 2), [80.0, 10.0, 1.0, 0.1, 0.0], afs=True)
    with pytest.raises(InputError, match="5 points"):
        s.sample(lambda x, t: x, torch.randn(2, 2), [80.0, 1.0, 0.1, 0.01], afs=True)
    with pytest.raises(InputError, match="train_seeds"):
        distill("instance_aware", gmm2d(), schedules.polynomial(4, 0.002, 80.0), cache_dir=False, train_seeds=[])


def test_an_init_schedule_is_the_untrained_global_grid(model):
    grid = schedules.polynomial(5, 0.002, 80.0)
    start = [80.0, 6.0, 1.5, 0.2, 0.002]                     # e.g. a trained GITS's timesteps
    ia = solvers.get("instance_aware", num_points=5, afs=True, init=start)
    assert ia.global_fraction == 0.0                          # a given schedule: the network alone learns
    x_T = model.noise(range(16)).double()
    xi = ia.grids(x_T, 80.0, 0.002)
    assert torch.allclose(xi, torch.tensor(start, dtype=torch.float64).expand(16, 5), rtol=1e-10)
    den = model.denoiser()
    with torch.no_grad():
        got = ia.sample(den, x_T, grid, afs=True)
        want = solvers.get("unipc", order=3, variant="bh1").sample(den, x_T, torch.tensor(start, dtype=torch.float64),
                                                                   afs=True)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
    ld3 = solvers.get("ld3", positions=[0.0, 0.3, 0.5, 0.8, 1.0], offsets=[0.0, 0.01, -0.01, 0.0, 0.0])
    from_ld3 = solvers.get("instance_aware", num_points=5,
                           init={k: ld3.options()[k] for k in ("positions", "offsets")})
    assert torch.allclose(from_ld3.global_positions(), ld3.positions(), atol=1e-12)
    assert torch.allclose(from_ld3.global_offsets(), ld3.offsets(), atol=1e-12)
    tuned = solvers.get("instance_aware", p1=[0.3, 1.0, -0.2, 0.5, 0.1], p2=[0.0, 0.02, -0.01, 0.03, 0.0],
                        per_sample=False)                      # e.g. the global fine-tune's options
    from_tuned = solvers.get("instance_aware", num_points=5, init=tuned.options())
    assert torch.equal(from_tuned.p1, tuned.p1) and torch.equal(from_tuned.p2, tuned.p2)
    assert from_tuned.per_sample and from_tuned.global_fraction == 0.0
    assert torch.equal(from_tuned.grids(x_T, 80.0, 0.002), tuned.grids(x_T, 80.0, 0.002))
    assert solvers.get("instance_aware", num_points=5).global_fraction == 0.5


@pytest.mark.parametrize("init, match", [([80.0, 1.0, 2.0, 0.1, 0.002], "strictly descending"),
                                         ([80.0, 1.0, 0.002], "3 points; this grid has 5"),
                                         ("gits", "strictly descending"), ({"offsets": [0] * 5}, "strictly"),
                                         ({"p1": [1.0] * 3}, "3 points; this grid has 5")])
def test_bad_init_is_refused(init, match):
    with pytest.raises(InputError, match=match):
        solvers.get("instance_aware", num_points=5, init=init)
    with pytest.raises(InputError, match="goes with num_points only"):
        solvers.get("instance_aware", p1=[1.0] * 5, init=[80.0, 6.0, 1.5, 0.2, 0.002])


def test_its_state_records_the_global_grid_it_deviates_from():
    s = trained_like(num_points=5)
    s.sigmas = [80.0, 10.0, 1.0, 0.1, 0.002]
    st = s.state()
    xi = s.grids(torch.zeros(1, 2, dtype=torch.float64), 80.0, 0.002)        # zero noise: not the global grid
    ref = solvers.get("instance_aware", **{**s.options(), "per_sample": False}).grids(xi, 80.0, 0.002)
    assert st["timesteps"][0] == 80.0 and st["timesteps"][-1] == 0.002 and st["model_times"] == "global"
    torch.testing.assert_close(torch.tensor(st["timesteps"], dtype=torch.float64), ref[0], rtol=1e-12, atol=0)
    assert not torch.allclose(xi, ref)
