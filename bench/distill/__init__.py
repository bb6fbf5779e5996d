"""Distillation of learned solvers (DyWeight, paper Sec. 3.3 and Algorithm 1).

    from bench.distill import distill
    solver = distill("dyweight", model_or_denoiser, sigmas, noise_shape=(3, 32, 32), afs=True, seed=0)
    x = solver.sample(denoiser, x_T, sigmas, afs=True)
    solver.save(path); solvers.load(path)       # the grid and every training setting travel with it

`model_or_denoiser` is a `bench.models.Model` (noise and condition drawn together per seed, so one solver serves
the whole condition distribution) or a plain `denoiser(x, sigma)` (then `noise_shape` gives one sample's shape and
x_T = sigmas[0] z). Options: see `train.Settings` (teacher, teacher_steps, supervision, history, init, time_shift,
time_scaling, num_samples, steps, batch_size, lr, loss, ...), plus cache_dir (teacher cache; None = the user's
cache dir, False = no disk cache), cache_id (an explicit model identity for cache keys) and dtype (plain denoisers).

Teacher trajectories are computed once per (model identity, teacher, sigma range, seeds, dtype) and reused by
every student NFE and ablation (teacher.py explains the cache key and the model identity).

Defaults (paper Appendix D.2 where it gives them; the rest chosen on gmm64 with the `distill_study` grid, which runs
every ablation below against the best handcrafted solver):
teacher iPNDM, 35 steps, no AFS, final D(x, sigma_min); 4096 teacher pairs (seeds from 1e9, held out from the
evaluation seeds 0..) plus 256 held-out pairs (seeds from 2e9) for the eval curve; K = 3, Adams-Bashforth init,
time shifting and scaling on; endpoint MSE; Adam (0.9, 0.999, 1e-8), batch 16, 1000 steps, lr = the model's
`distill_lr` where it declares the paper's (CIFAR-10 3e-2; FFHQ, AFHQv2, LSUN-Bedroom 1e-2; ImageNet-64 5e-3;
SD-v1.5 5e-4), else 2e-2 (NFE <= 3), 1e-2 (<= 5), 5e-3 (<= 7), 3e-3 (more); 10% linear warm-up from 0.1 lr,
cosine to 0.01 lr, grad-norm clip 1.

Ablation switches (options): time_shift=False, time_scaling=False, history=K (1..N-1), supervision="path" (with
path_substeps, see train.py), teacher=<solver>, teacher_steps=M, teacher_options={...}, num_samples=n,
init="euler"|"uniform".

`init_from = {"solver": <learned solver>, ...its options}` distils that solver first on the same grid, seed and
cache, and hands its `options()` to the student as its `init` structure option (for a student that declares one:
the instance-aware solver starts from a trained global schedule this way). An `init` given as an option is used as
it is, in place of the solver's default `init_from`; giving both is refused.
"""
from __future__ import annotations

import contextlib
import copy
import json
import time

import torch

import solvers
from solvers.errors import InputError

from . import losses
from .teacher import Cache, Source, Teacher, default_cache_dir, endpoints, identity, path_states
from .train import Settings, seed_lists, train


def validate(kind: str, sigmas, afs: bool, target=None, **options) -> tuple[list[float], Settings, Teacher]:
    """Every check `distill` makes before its first network call: the kind, the grid, the options and the
    teacher. The grid loader runs it on each distilled cell's own grid, so a grid that would fail here fails at
    load time. Returns (grid as floats, resolved settings, teacher)."""
    if kind not in solvers.learned_names() and not solvers.is_spec(kind):
        raise InputError(f"unknown learned solver {kind!r}; accepted: {', '.join(solvers.learned_names())}")
    cls = solvers.solver_class(kind)
    if not cls.learned:
        raise InputError(f"{kind!r} is not a learned solver (a solvers.learned.LearnedSolver)")
    grid = [float(v) for v in (sigmas.detach().double().cpu() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if len(grid) < (3 if afs else 2) or any(a <= b for a, b in zip(grid, grid[1:])) or grid[-1] < 0:
        raise InputError(f"sigmas must be a strictly descending grid ending at or above 0 with at least "
                         f"{3 if afs else 2} points (afs={afs}), got {grid}")
    merged = {**cls.distill_defaults, **options}
    if "init" in options:                    # a given start replaces the solver's default init_from
        if options.get("init_from") is not None:
            raise InputError(f"{kind}: give init (a start to use as it is) or init_from (a learned solver to "
                             "distil first and start from), not both")
        merged.pop("init_from", None)
    settings = Settings.from_options(merged, cls.structure)
    settings.structure = dict(settings.structure or {})
    # the structure fits this grid; the student itself counts the network evaluations it spends on it
    nfe = student_nfe(cls.untrained(len(grid), afs, **settings.structure), grid, afs, target)
    settings.resolve(nfe, getattr(target, "distill_lr", None), getattr(target, "batch_hint", None))
    teacher = Teacher(settings.teacher, settings.teacher_steps, settings.teacher_options, settings.teacher_afs,
                      settings.teacher_denoise, settings.teacher_schedule)
    teacher.check()
    if settings.init_from is not None:
        spec = settings.init_from
        if not (isinstance(spec, dict) and isinstance(spec.get("solver"), str)) or "init" not in cls.structure:
            raise InputError(f"init_from must be a table naming a learned solver, e.g. {{ solver = \"gits\" }}, for a "
                             f"solver with an `init` structure option; got {spec!r} for {kind}")
        validate(spec["solver"], grid, afs, target, **{k: v for k, v in spec.items() if k != "solver"})
    if grid[-1] == 0 and teacher.denoise_to_zero:
        raise InputError("this grid ends at sigma = 0, where D(x, 0) is no final denoise; set teacher_denoise = "
                         "false (a flow model's teacher ends at t = 0 itself)")
    return grid, settings, teacher


def student_nfe(student, grid: list[float], afs: bool, target=None) -> int:
    """Network evaluations per sample the student spends on `grid` (its own `calls`, times the target model's
    evaluations per call): the NFE its NFE-dependent settings are resolved with and its metadata records."""
    return student.calls(len(grid), afs, ends_at_zero=grid[-1] == 0) * int(getattr(target, "evals_per_call", 1))


_STARTS: dict[str, dict] = {}          # init_from starts distilled in this process: key -> the start's options()


def _start(init_from: dict, target, grid, noise_shape, afs, seed, ident, dtype, passed) -> dict:
    """The options() of the `init_from` solver distilled on this grid. Distillation is deterministic in what the key
    holds (the start's table, the model's identity as the teacher cache keys it, grid, afs, seed, dtype, noise
    shape), so rows of one run that share a start (e.g. a fine-tune and the per-sample network on top of the same
    LD3) distil it once."""
    key = json.dumps([init_from, ident, grid, afs, seed, str(dtype), noise_shape], sort_keys=True, default=str)
    if key not in _STARTS:
        spec = {k: v for k, v in init_from.items() if k != "solver"}
        first = distill(init_from["solver"], target, grid, noise_shape, afs, seed, dtype=dtype, **passed, **spec)
        _STARTS[key] = first.options()
    return copy.deepcopy(_STARTS[key])


def distill(kind: str, target, sigmas, noise_shape=None, afs: bool = True, seed: int = 0, *, cache_dir=None,
            cache_id: str | None = None, dtype: torch.dtype | None = None, progress=None, memory=None,
            group=None, **options) -> solvers.Solver:
    """Distil the registered learned solver `kind` (solvers.learned_names()) for the grid `sigmas` from a teacher;
    return it trained.

    memory: a bench.distill.memory.MemoryPlan (micro-batches, checkpointed calls); "auto" plans one from a probe of
    the model on its CUDA device (nothing is planned elsewhere); None trains each batch in one backward pass.
    group: data-parallel ranks (bench.run.dist.Dist: rank, world, all_gather, all_reduce_sum): the teacher pairs
    are made in shards and gathered, every rank takes its share of each batch, the gradients are summed; every
    rank ends with the same solver."""
    t_start = time.perf_counter()
    grid, settings, teacher = validate(kind, sigmas, afs, target, **options)
    source = Source(target, grid[-1], grid[0], noise_shape, dtype)
    cls = solvers.solver_class(kind)
    cache = Cache(None if cache_dir is False else (cache_dir or default_cache_dir()))
    ident = identity(source, cache_id)
    if settings.init_from is not None:             # the start: another learned solver, distilled on this grid
        settings.structure["init"] = _start(settings.init_from, target, grid, noise_shape, afs, seed, ident,
                                            dtype, dict(cache_dir=cache_dir, cache_id=cache_id, progress=progress,
                                                        memory=memory, group=group))
    if getattr(cls, "trained_by", "gradient") == "search":            # e.g. GITS: a search over teacher states
        return _search(cls, source, grid, afs, settings, teacher, seed, t_start, ident, cache)

    seeds, eval_seeds = seed_lists(settings)
    train_set = _pairs(source, teacher, seeds, ident, cache, settings.teacher_batch_size, group)
    eval_set = None
    if settings.eval_samples:
        eval_set = _pairs(source, teacher, eval_seeds, ident, cache, settings.teacher_batch_size, group)
    path_set = None
    if settings.supervision == "path" and len(grid) > 2:
        path_set = path_states(source, teacher, grid, settings.path_substeps, seeds, ident, cache,
                               settings.teacher_batch_size)
    teacher_seconds = sum(s.seconds for s in (train_set, eval_set, path_set) if s is not None)

    torch.manual_seed(seed)
    student = cls.untrained(len(grid), afs, **settings.structure)
    nfe = student_nfe(student, grid, afs, target)
    if memory == "auto":
        memory = auto_plan(student, source, grid, afs, settings, group)
    curves = train(student, source, grid, afs, settings, train_set, eval_set, path_set, seed=seed,
                   progress=progress, memory=memory, group=group)
    if memory is not None:
        curves["memory"] = memory.describe()
        curves["memory_peak"] = memory.peak         # the plan's estimate, bytes (gpu-check compares the measured)
    student.sigmas = grid
    cost = _training_cost(student, teacher, settings, grid, afs)
    student.metadata.update({
        "distilled": True, "model": source.name, "nfe": nfe, "afs": afs, "seed": seed,
        "training": {**curves, **cost, "wall_time": time.perf_counter() - t_start, "teacher_seconds": teacher_seconds,
                     "teacher_cache_hit": train_set.cache_hit, "teacher_cache_key": train_set.key,
                     "model_identity": ident, "seed": seed, "afs": afs, "nfe": nfe, **settings.record()},
    })
    return student


def _training_cost(student, teacher, settings, grid, afs: bool) -> dict:
    """The training's cost in denoiser calls, the unit every method shares: the teacher's endpoint runs (cached runs
    count what they cost once; path supervision's sub-stepped teacher runs are not included) and the student's
    forward passes (each also backpropagated; with the relaxed ball, a second forward pass without gradients)."""
    teacher_calls = teacher.build().calls(settings.teacher_steps + 1, settings.teacher_afs,
                                          ends_at_zero=grid[-1] == 0) + int(teacher.denoise_to_zero)
    teacher_samples = settings.num_samples + settings.eval_samples
    return {"parameters": student.parameter_count(), "learns": student.learns(),
            "teacher_calls": teacher_calls * teacher_samples,
            "student_calls": settings.steps * settings.batch_size * settings.accumulate * student.calls(len(grid), afs)
            * (2 if settings.relaxed_ball else 1)}             # the relaxed ball's trial forward pass per batch


def _pairs(source, teacher, seeds, ident, cache, batch: int, group):
    """The teacher's pairs for `seeds`; with data-parallel ranks, each rank makes a contiguous shard (cached as
    such) and every rank gathers all of them, in seed order."""
    from .teacher import TeacherSet
    world = group.world if group is not None else 1
    if world == 1:
        return endpoints(source, teacher, seeds, ident, cache, batch)
    per = -(-len(seeds) // world)
    mine = endpoints(source, teacher, list(seeds)[group.rank * per:(group.rank + 1) * per], ident, cache, batch)
    parts = group.all_gather((mine.x_T.cpu(), mine.targets.cpu(), mine.cache_hit, mine.seconds))
    return TeacherSet(list(seeds), torch.cat([p[0] for p in parts]).to(source.device),
                      torch.cat([p[1] for p in parts]).to(source.device), mine.key,
                      all(p[2] for p in parts), max(p[3] for p in parts))


def auto_plan(student, source, grid, afs, settings, group=None):
    """A memory plan from a probe of the model on its CUDA device (bench.distill.memory); None elsewhere."""
    from . import memory
    model = source.model
    budget = memory.budget_of(getattr(model, "device", "cpu")) if model is not None else None
    if budget is None:
        return None
    seeds = [settings.seed_start]
    den = source.denoiser(source.conditions(seeds))
    x = source.noise(seeds)
    sigma = torch.full((1,), float(grid[1]), dtype=x.dtype, device=x.device)
    nets = [p for m in getattr(model, "networks", lambda: [])() for p in m.parameters()]
    from bench.models import devices
    with devices.full_precision() if settings.student_precision == "float32" else contextlib.nullcontext():
        per_call = memory.probe_call(den, x, sigma, nets)
        extra = _loss_bytes(source, x, settings, nets)
    calls = student.calls(len(grid), afs, ends_at_zero=grid[-1] == 0)
    return memory.plan(settings.batch_size * settings.accumulate, calls, per_call, budget,
                       group.world if group is not None else 1, extra,
                       checkpoint=True if settings.checkpoint else None, where=f"distilling on {source.name}: ")


def _loss_bytes(source, x, settings, nets) -> int:
    """Activation bytes per sample of the loss (a decoder and an image distance's network), 0 for a plain MSE."""
    from . import memory
    name, distance = losses.get(settings.loss)
    if not losses.reads_images(distance):
        return 0
    y = x.detach().clone().requires_grad_(True)
    target = source.decode(x.detach()).detach()
    n, _ = memory.saved_bytes(lambda: distance(source.decode(y), target), exclude=nets)
    return n


def _search(cls, source, grid, afs, settings, teacher, seed, t_start, ident, cache):
    """A learned solver trained without gradients (`trained_by = "search"`): its `search` reads the teacher's whole
    trajectories on the search seeds (teacher.trajectories, from the shared teacher cache) and, with AFS, picks
    among candidates on them."""
    from .teacher import trajectories
    seeds = seed_lists(settings)[0]
    T, X, d, x_T, hit = trajectories(source, teacher, seeds, afs, ident, cache, settings.teacher_batch_size)
    student = cls.untrained(len(grid), afs, **settings.structure)
    nfe = student_nfe(student, grid, afs, source.model)
    den, pick = None, seeds[:settings.teacher_batch_size]
    if afs:                                     # the AFS candidates are sampled on one batch of the search seeds
        den = source.denoiser(source.conditions(pick))
    student.search(T, X, d, afs, denoiser=den, x_T=x_T[:len(pick)])
    student.sigmas = list(student.timesteps)
    calls = teacher.build().calls(len(T), afs)
    student.metadata.update({
        "distilled": True, "model": source.name, "nfe": nfe, "afs": afs, "seed": seed,
        "training": {"wall_time": time.perf_counter() - t_start, "parameters": student.parameter_count(),
                     "learns": student.learns(), "teacher_calls": calls * len(seeds), "teacher_cache_hit": hit,
                     "student_calls": student.metadata.get("search_calls", 0),
                     "teacher_grid": T, "seed": seed, "afs": afs, "nfe": nfe, **settings.record(),
                     "steps": 0},                        # a search: no optimiser steps
    })
    return student


__all__ = ["distill", "validate", "losses", "Settings", "Teacher", "default_cache_dir"]
