"""bench.distill: training works, is deterministic, round-trips, caches its teacher, and every switch matters."""
from __future__ import annotations

import pytest
import torch

import solvers
from bench import models
from bench.distill import distill, losses
from bench.distill.teacher import refine
from bench.models.base import Model

# a small problem: the 2-D mixture, few teacher pairs, short runs (each distill takes well under a second)
SMALL = dict(num_samples=64, eval_samples=16, steps=30, batch_size=16, teacher_steps=20)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The analytic problems are tiny: intra-op threads only add overhead (4x slower with 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gmm():
    return models.get("gmm2d")


@pytest.fixture(scope="module")
def grid(gmm):
    return gmm.grid(5)                      # NFE 3 with AFS


def rel_error(x, ref):
    return float(((x - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).mean())


def test_training_lowers_loss_and_endpoint_error(gmm, grid, tmp_path):
    s = distill("dyweight", gmm, grid, seed=0, cache_dir=tmp_path, num_samples=256, eval_samples=64, steps=150,
                teacher_steps=20, lr=2e-2)
    tr = s.metadata["training"]
    assert sum(tr["loss"][-20:]) < 0.5 * sum(tr["loss"][:20])
    assert tr["eval_error"][-1] < 0.7 * tr["eval_error"][0]
    assert tr["eval_step"][0] == 0 and tr["eval_step"][-1] == 150 and len(tr["step"]) == 150
    # against the exact ODE solution on held-out seeds, the student beats its Adams-Bashforth initialisation
    x_T = gmm.noise(range(64))
    ref = gmm.reference_solution(x_T, float(grid[0]), float(grid[-1]))
    init = solvers.get("dyweight", num_points=len(grid), afs=True)
    with torch.no_grad():
        before = rel_error(init.sample(gmm.denoiser(), x_T, grid, afs=True), ref)
        after = rel_error(s.sample(gmm.denoiser(), x_T, grid, afs=True), ref)
    assert after < 0.7 * before


def test_same_seed_same_parameters_and_plain_denoiser_equals_model(gmm, grid):
    a = distill("dyweight", gmm, grid, seed=3, cache_dir=False, **SMALL)
    b = distill("dyweight", gmm, grid, seed=3, cache_dir=False, **SMALL)
    c = distill("dyweight", gmm, grid, seed=4, cache_dir=False, **SMALL)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.time_scale, b.time_scale)
    assert not torch.equal(a.weights, c.weights)
    # a plain denoiser with the model's shape and dtype sees the same noise, hence learns the same parameters
    d = distill("dyweight", gmm.denoiser(), grid, noise_shape=(2,), dtype=torch.float64, seed=3, cache_dir=False,
                **SMALL)
    assert torch.equal(a.weights, d.weights)


def test_save_load_round_trip_is_bit_exact(gmm, grid, tmp_path):
    s = distill("dyweight", gmm, grid, seed=0, cache_dir=tmp_path, **SMALL)
    path = tmp_path / "dw.json"
    s.save(path)
    t = solvers.load(path)
    assert torch.equal(s.weights, t.weights) and torch.equal(s.time_scale, t.time_scale)
    assert t.sigmas == [float(v) for v in grid] and t.afs is True and t.time_shift is True
    assert t.metadata["training"]["teacher"] == "ipndm" and t.metadata["training"]["steps"] == SMALL["steps"]
    assert t.metadata["training"]["distance"] == "mse" and "wall_time" in t.metadata["training"]
    x_T = gmm.noise(range(8))
    with torch.no_grad():
        assert torch.equal(s.sample(gmm.denoiser(), x_T, grid, afs=True),
                           t.sample(gmm.denoiser(), x_T, t.sigmas, afs=True))


def test_teacher_cache_is_reused_and_invalidated(gmm, grid, tmp_path):
    """Teacher calls = (steps + 1 final denoise) per chunk; the train and eval sets are one chunk each here."""
    per_set = SMALL["teacher_steps"] + 1
    student_calls = None

    def run(denoiser=None, sig=grid, **extra):
        counter = solvers.CountingDenoiser(denoiser or gmm.denoiser())
        s = distill("dyweight", counter, sig, noise_shape=(2,), dtype=torch.float64, seed=0, cache_dir=tmp_path,
                    **{**SMALL, **extra})
        return counter.calls, s.metadata["training"]

    first, tr = run()
    assert not tr["teacher_cache_hit"]
    second, tr = run()
    assert tr["teacher_cache_hit"]
    student_calls = second
    assert first - second == 2 * per_set                     # the teacher ran once, for both sets
    # another student NFE over the same sigma range reuses the same teacher
    _, tr = run(sig=gmm.grid(7))
    assert tr["teacher_cache_hit"]
    # any change of an input invalidates: teacher steps, teacher solver, seeds, the model itself
    calls, tr = run(teacher_steps=21)
    assert not tr["teacher_cache_hit"] and calls - student_calls == 2 * (per_set + 1)
    assert not run(teacher="euler")[1]["teacher_cache_hit"]
    assert not run(seed_start=5)[1]["teacher_cache_hit"]          # new training seeds (the eval set is reused)
    shifted = lambda x, s: gmm.denoiser()(x, s) * 0.999
    assert not run(denoiser=shifted)[1]["teacher_cache_hit"]
    # and the original inputs still hit
    assert run()[1]["teacher_cache_hit"]


def queried_sigmas(s, gmm, grid):
    counter = solvers.CountingDenoiser(gmm.denoiser())
    with torch.no_grad():
        s.sample(counter, gmm.noise(range(2)), grid, afs=True)
    return counter.sigmas


def test_time_shift_off_keeps_the_nominal_grid(gmm, grid):
    both_off = distill("dyweight", gmm, grid, seed=0, cache_dir=False, time_shift=False, time_scaling=False, **SMALL)
    assert both_off.time_shift is False
    assert queried_sigmas(both_off, gmm, grid) == pytest.approx([float(v) for v in grid[1:-1]], rel=1e-12)
    default = distill("dyweight", gmm, grid, seed=0, cache_dir=False, **SMALL)
    assert queried_sigmas(default, gmm, grid) != pytest.approx([float(v) for v in grid[1:-1]], rel=1e-6)
    shift_off = distill("dyweight", gmm, grid, seed=0, cache_dir=False, time_shift=False, **SMALL)
    assert not torch.equal(shift_off.weights, default.weights)
    # without shifting, the network sees s_i t_i at the nominal t_i
    want = [float(s * t) for s, t in zip(shift_off.time_scale.detach(), grid[1:-1])]
    assert queried_sigmas(shift_off, gmm, grid) == pytest.approx(want, rel=1e-12)


def test_frozen_time_scale_stays_one(gmm, grid):
    s = distill("dyweight", gmm, grid, seed=0, cache_dir=False, time_scaling=False, **SMALL)
    assert torch.equal(s.time_scale.detach(), torch.ones_like(s.time_scale))
    default = distill("dyweight", gmm, grid, seed=0, cache_dir=False, **SMALL)
    assert not torch.equal(default.time_scale.detach(), torch.ones_like(default.time_scale))


@pytest.mark.parametrize("history", [1, 2, 4])
def test_history_sets_the_weight_rows(gmm, grid, history):
    s = distill("dyweight", gmm, grid, seed=0, cache_dir=False, history=history, **SMALL)
    assert s.history == history and s.weights.shape == (len(grid) - 1, history)
    assert [len(r) for r in s.rows()] == [min(i + 1, history) for i in range(len(grid) - 1)]


def test_init_supervision_teacher_and_samples_change_what_is_learned(gmm, grid, tmp_path):
    base = distill("dyweight", gmm, grid, seed=0, cache_dir=tmp_path, **SMALL)
    for opts in ({"init": "euler"}, {"init": "uniform"}, {"supervision": "path"}, {"teacher": "heun"},
                 {"teacher_steps": 30}, {"num_samples": 32}):
        other = distill("dyweight", gmm, grid, seed=0, cache_dir=tmp_path, **{**SMALL, **opts})
        assert not torch.equal(other.weights, base.weights), opts
        key, value = next(iter(opts.items()))
        assert other.metadata["training"][key] == value


def test_path_supervision_targets_are_teacher_states_at_student_points(gmm, grid, tmp_path):
    fine = refine([float(v) for v in grid], 5)
    assert len(fine) == 5 * (len(grid) - 1) + 1 and fine[::5] == pytest.approx([float(v) for v in grid], rel=1e-14)
    from bench.distill.teacher import Cache, Source, Teacher, identity, path_states
    src = Source(gmm, float(grid[-1]), float(grid[0]))
    ps = path_states(src, Teacher(), [float(v) for v in grid], 5, range(4), identity(src), Cache(tmp_path))
    assert ps.targets.shape == (4, len(grid) - 2, 2)
    direct = solvers.get("ipndm").sample(gmm.denoiser(), gmm.noise(range(4)), fine[:11])
    assert torch.allclose(ps.targets[:, 1], direct, rtol=0, atol=1e-12)


def test_pluggable_distance(gmm, grid):
    seen = []

    def l1(a, b):
        seen.append(a.shape)
        return (a - b).abs().flatten(1).sum(1)

    s = distill("dyweight", gmm, grid, seed=0, cache_dir=False, loss=l1, **SMALL)
    assert seen and s.metadata["training"]["distance"] == "l1"
    losses.register("l1_test", l1)
    t = distill("dyweight", gmm, grid, seed=0, cache_dir=False, loss="l1_test", **SMALL)
    assert torch.equal(s.weights, t.weights)


def test_relative_l2_distance_is_the_endpoint_error_and_learns_differently(gmm, grid):
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    assert losses.relative_l2(b, a).tolist() == [1.0, 1.0]                 # ||b - a|| / ||a|| per sample
    mse = distill("dyweight", gmm, grid, seed=0, cache_dir=False, **SMALL)
    rel = distill("dyweight", gmm, grid, seed=0, cache_dir=False, loss="relative_l2", **SMALL)
    assert rel.metadata["training"]["distance"] == "relative_l2" and not torch.equal(mse.weights, rel.weights)


class _Conditional(Model):
    """A 1-D toy whose data is the class label c in {-1, +1} (a point mass): D(x, sigma) = c."""

    name = "toy_conditional"
    shape = (1,)
    dtype = torch.float64

    def conditions(self, seeds):
        return torch.tensor([1.0 if s % 2 else -1.0 for s in seeds], dtype=torch.float64)

    def denoiser(self, cond=None):
        return lambda x, sigma: cond.reshape(-1, 1).expand_as(x).clone()


def test_conditions_are_drawn_with_the_noise():
    m = _Conditional()
    grid = m.grid(5)
    s = distill("dyweight", m, grid, seed=0, cache_dir=False, **SMALL)
    seeds = list(range(100, 110))
    x = s.sample(m.denoiser(m.conditions(seeds)), m.noise(seeds), grid, afs=True).detach()
    # the exact flow of a point mass ends near c (x(sigma_min) = c + sigma_min z); each sample keeps its label
    assert torch.equal(torch.sign(x[:, 0]), m.conditions(seeds))


def test_the_models_paper_learning_rate_is_the_default(grid):
    """A model that declares the paper's learning rate (EDM CIFAR-10: 3e-2, ...) is distilled with it unless the
    caller gives lr; models that declare none get the NFE-dependent default."""
    from bench.distill.train import default_lr
    m = models.get("gmm2d")
    assert distill("dyweight", m, grid, seed=0, cache_dir=False, **SMALL).metadata["training"]["lr"] == default_lr(3)
    m.distill_lr = 0.0123
    assert distill("dyweight", m, grid, seed=0, cache_dir=False, **SMALL).metadata["training"]["lr"] == 0.0123
    got = distill("dyweight", m, grid, seed=0, cache_dir=False, lr=0.002, **SMALL).metadata["training"]["lr"]
    assert got == 0.002
    assert [models.get(n).distill_lr for n in ("cifar10", "ffhq", "afhqv2", "imagenet64")] == [3e-2, 1e-2, 1e-2, 5e-3]


@pytest.mark.parametrize("opts, match", [
    ({"init": "ab"}, "init 'ab'; accepted: adams_bashforth, euler, uniform"),
    ({"supervision": "paths"}, "accepted: endpoint, path"),
    ({"history": 0}, "history must be an integer in 1..4"),
    ({"history": 5}, "history must be an integer in 1..4"),
    ({"teacher": "rk4"}, "unknown solver 'rk4'; accepted: euler"),
    ({"teacher_options": {"order": 9}}, "no option 'order'"),
    ({"loss": "lpips"}, "unknown loss 'lpips'; accepted: mse"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"time_shift": "no"}, "time_shift must be True or False"),
    ({"num_samples": 0}, "num_samples must be a positive integer"),
    ({"teacher_schedule": "cosine"}, "unknown teacher_schedule 'cosine'; accepted: polynomial"),
    ({"learning_rate": 1e-3}, "no option 'learning_rate'; accepted: history, init"),
])
def test_bad_options_fail_clearly(gmm, grid, opts, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(".", r"\.")):
        distill("dyweight", gmm, grid, seed=0, cache_dir=False, **{**SMALL, **opts})


def test_bad_target_and_kind_fail_clearly(gmm, grid):
    with pytest.raises(ValueError, match="unknown learned solver 's4s'; accepted: dyweight, epd, gits, ld3, amed, "
                                         "instance_aware"):
        distill("s4s", gmm, grid)
    with pytest.raises(ValueError, match="needs noise_shape"):
        distill("dyweight", gmm.denoiser(), grid, cache_dir=False)
    with pytest.raises(ValueError, match="strictly descending"):
        distill("dyweight", gmm, list(grid)[::-1], cache_dir=False)
    with pytest.raises(ValueError, match="a bench.models.Model or a callable"):
        distill("dyweight", "gmm2d", grid, cache_dir=False)


def test_explicit_cache_id_replaces_the_fingerprint(gmm, grid, tmp_path):
    a = distill("dyweight", gmm.denoiser(), grid, noise_shape=(2,), dtype=torch.float64, seed=0, cache_dir=tmp_path,
                cache_id="my-model-v1", **SMALL)
    assert a.metadata["training"]["model_identity"] == {"cache_id": "my-model-v1"}
    # the caller vouches for the identity: a cache hit even though this callable is a different object
    b = distill("dyweight", lambda x, s: gmm.denoiser()(x, s), grid, noise_shape=(2,), dtype=torch.float64, seed=0,
                cache_dir=tmp_path, cache_id="my-model-v1", **SMALL)
    assert b.metadata["training"]["teacher_cache_hit"] and torch.equal(a.weights, b.weights)


def test_without_afs(gmm):
    g = gmm.grid(4)
    s = distill("dyweight", gmm, g, afs=False, seed=0, cache_dir=False, **SMALL)
    assert s.afs is False and s.time_scale.shape == (3,) and s.metadata["training"]["nfe"] == 3


def test_accumulation_checkpointing_and_adamw_are_the_same_optimisation():
    """batch 1 x 2 accumulation steps (the FLUX recipe) sees the same pairs per step as batch 2 and descends the
    same mean; recomputing the student's calls in backward changes nothing; AdamW without weight decay is Adam,
    and with it the weights shrink towards 0 as decoupled decay does."""
    from bench.models.gmm import gmm2d
    m = gmm2d()
    common = dict(afs=False, seed=3, cache_dir=False, steps=4, num_samples=8, eval_samples=0, teacher_steps=8,
                  lr=1e-2)
    base = distill("dyweight", m, m.grid(4), batch_size=2, **common)
    acc = distill("dyweight", m, m.grid(4), batch_size=1, accumulate=2, checkpoint=True, **common)
    adamw = distill("dyweight", m, m.grid(4), batch_size=2, optimizer="adamw", weight_decay=0.0, **common)
    for other in (acc, adamw):
        torch.testing.assert_close(other.weights, base.weights, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(other.time_scale, base.time_scale, rtol=1e-10, atol=1e-12)
    decayed = distill("dyweight", m, m.grid(4), batch_size=2, optimizer="adamw", weight_decay=5.0, **common)
    assert float(decayed.weights.abs().sum()) < float(base.weights.abs().sum())
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; accepted: adam, adamw"):
        distill("dyweight", m, m.grid(4), optimizer="sgd", **common)
    with pytest.raises(ValueError, match="accumulate must be a positive integer"):
        distill("dyweight", m, m.grid(4), accumulate=0, **common)


def test_teacher_and_evaluation_batches_come_from_the_model():
    from bench.distill.train import Settings
    from bench.models import edm, flux
    assert Settings().resolve(3, batch_hint=flux.FluxModel().batch_hint).teacher_batch_size == 4
    assert Settings().resolve(3, batch_hint=edm.cifar10().batch_hint).teacher_batch_size == 250
    assert Settings(teacher_batch_size=7).resolve(3, batch_hint=4).teacher_batch_size == 7
