"""Teacher trajectories: generated once per (model identity, teacher, sigma range, seeds, dtype), cached on disk.

The teacher is any registered solver run for `steps` grid intervals (M + 1 points) over the student's sigma range,
by default iPNDM with 35 steps (35 network evaluations), no AFS, and a final D(x, sigma_min) (`denoise_to_zero`),
as in the paper (Sec. 4.1, Appendix D.2). Its endpoints supervise every student NFE and every ablation.

Cache key: a SHA-256 over everything that determines the tensors -- the model identity, the teacher (solver,
options, steps, AFS, final denoise, its grid values), the seeds, the sample shape and dtype, and for path targets
the student grid and sub-steps. A change in any of them gives another file, so a stale entry is never read.

Model identity (`identity`): an explicit `cache_id` if the caller gives one, else the model's `name`, its
`cache_key()` when it defines one (e.g. a checkpoint hash), the class name, AND always a fingerprint of the
denoiser's outputs on a fixed probe (3 samples at sigma_max, a middle sigma and sigma_min, conditions drawn for
fixed probe seeds). So anonymous callables (plain `denoiser(x, sigma)` functions) are cached too, and editing a
model's weights or code invalidates its entries even when its name stays the same. The probe costs one denoiser
call per `distill`; a fingerprint that changes for numerical reasons (another thread count, another device) only
causes a cache miss, never a wrong hit.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

import solvers
from bench.models.base import Model
from bench.models.base import noise as draw_noise
from solvers import schedules
from solvers.errors import InputError

CACHE_FORMAT = 1
PROBE_SEEDS = (2**31 - 3, 2**31 - 2, 2**31 - 1)


def default_cache_dir() -> Path:
    """$FEWSTEP_CACHE/distill, else ~/.cache/fewstep-bench/distill (the user's cache dir)."""
    root = os.environ.get("FEWSTEP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fewstep-bench")
    return Path(root).expanduser() / "distill"


@dataclass
class Teacher:
    """A high-NFE solver run over the student's sigma range."""

    solver: str = "ipndm"
    steps: int = 35                       # grid intervals: M + 1 points (iPNDM without AFS: M evaluations)
    options: dict = field(default_factory=dict)
    afs: bool = False
    denoise_to_zero: bool = True          # final D(x, sigma_min), as the paper's teachers
    schedule: str | None = None           # None: the model's own schedule, else polynomial (rho = 7)
    schedule_options: dict = field(default_factory=dict)

    def build(self) -> solvers.Solver:
        return solvers.get(self.solver, **self.options)

    def check(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 2:
            raise InputError(f"teacher_steps must be an integer >= 2, got {self.steps!r}")
        self.build()                      # unknown solver or option -> ValueError listing the accepted ones
        if self.schedule is not None and self.schedule not in schedules.KINDS:
            raise InputError(f"unknown teacher_schedule {self.schedule!r}; accepted: {', '.join(schedules.KINDS)}")


class Source:
    """What is distilled, seen one way: a `bench.models.Model` or a plain denoiser(x, sigma).

    noise(seeds) gives x_T = sigma_max z (one generator per seed) with sigma_max = the student grid's first sigma;
    conditions(seeds) the matching conditions (None for plain denoisers); denoiser(cond) the D for that batch.
    """

    def __init__(self, target, sigma_min: float, sigma_max: float, noise_shape=None, dtype=None):
        self.target = target
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        if isinstance(target, Model):
            self.model = target
            self.shape = tuple(noise_shape) if noise_shape is not None else tuple(target.shape)
            if noise_shape is not None and tuple(noise_shape) != tuple(target.shape):
                raise InputError(f"noise_shape {tuple(noise_shape)} differs from the model's shape "
                                 f"{tuple(target.shape)}; leave it out for a Model")
            self.dtype = dtype or target.dtype
            self.device = target.device
        elif callable(target):
            self.model = None
            if noise_shape is None:
                raise InputError("distilling a plain denoiser(x, sigma) needs noise_shape=(...), one sample's shape")
            self.shape = tuple(int(v) for v in noise_shape)
            self.dtype = dtype or torch.float32
            self.device = "cpu"
        else:
            raise InputError(f"distill needs a bench.models.Model or a callable denoiser(x, sigma), got "
                             f"{type(target).__name__}")

    @property
    def name(self) -> str:
        return getattr(self.target, "name", "") or getattr(self.target, "__qualname__", "") or "denoiser"

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        if self.model is not None:
            x = self.model.noise(seeds)
            if not math.isclose(self.model.sigma_max, self.sigma_max, rel_tol=1e-12):
                x = x * (self.sigma_max / self.model.sigma_max)    # x_T = sigma_T z on the student's range
            return x.to(self.dtype)
        return draw_noise(seeds, self.shape, self.sigma_max, self.dtype)

    def conditions(self, seeds: Sequence[int]) -> Any:
        return self.model.training_conditions(seeds) if self.model is not None else None

    def denoiser(self, cond: Any = None):
        return self.model.denoiser(cond) if self.model is not None else self.target

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Final states -> what an image distance reads (the model's decoder, differentiable; identity for plain
        denoisers)."""
        return self.model.decode(x) if self.model is not None else x

    def teacher_grid(self, teacher: Teacher) -> torch.Tensor:
        n = teacher.steps + 1
        m = self.model
        if m is not None and (teacher.schedule in (None, m.schedule)):
            ends = m.grid(2, teacher.schedule, **teacher.schedule_options)     # the model's own range (may end at 0)
            same_range = (math.isclose(float(ends[-1]), self.sigma_min, rel_tol=1e-9, abs_tol=1e-300)
                          and math.isclose(float(ends[0]), self.sigma_max, rel_tol=1e-9))
            if same_range:
                return m.grid(n, teacher.schedule, **teacher.schedule_options)
        kind = teacher.schedule or "polynomial"
        if kind == "discrete":
            if m is None:
                raise InputError("teacher_schedule='discrete' needs a Model (its sigma(tau)); use 'polynomial'")
            return m.grid(n, "discrete", **teacher.schedule_options)
        return schedules.get(kind, n, self.sigma_min, self.sigma_max, **teacher.schedule_options)


def take(cond: Any, idx) -> Any:
    """Rows `idx` of a batch of conditions (tensors indexed on dim 0; dicts/lists/tuples recursively; objects with
    a `select(idx)` method, such as bench.models.conditions.Prompts, by that method)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[idx.to(cond.device) if isinstance(idx, torch.Tensor) else idx]
    if callable(getattr(cond, "select", None)):
        return cond.select(idx)
    if isinstance(cond, dict):
        return {k: take(v, idx) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)) and cond and isinstance(cond[0], (torch.Tensor, dict, list, tuple)):
        return type(cond)(take(v, idx) for v in cond)
    if isinstance(cond, (list, tuple)):
        idx = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        return type(cond)(cond[i] for i in idx)
    raise InputError(f"cannot split conditions of type {type(cond).__name__} into batches")


def identity(source: Source, cache_id: str | None = None) -> dict:
    """What identifies the model in cache keys (see the module docstring)."""
    if cache_id is not None:
        return {"cache_id": str(cache_id)}
    t = source.target
    ident = {"name": source.name, "class": f"{type(t).__module__}.{type(t).__qualname__}"}
    if hasattr(t, "cache_key") and callable(t.cache_key):
        ident["cache_key"] = str(t.cache_key())
    ident["probe"] = fingerprint(source)
    return ident


@torch.no_grad()
def fingerprint(source: Source) -> str:
    """SHA-256 of the denoiser's outputs (5 significant digits) on 3 fixed probe samples at 3 noise levels (sigma_max,
    the lowest positive sigma and their geometric mean)."""
    seeds = list(PROBE_SEEDS)
    z = source.noise(seeds) / source.sigma_max
    lo = source.sigma_min if source.sigma_min > 0 else source.sigma_max * 1e-3      # grids may end at 0
    sig = torch.tensor([source.sigma_max, math.sqrt(source.sigma_max * lo), lo], dtype=z.dtype, device=z.device)
    x = z * sig.reshape(-1, *([1] * (z.dim() - 1)))
    out = source.denoiser(source.conditions(seeds))(x, sig)
    text = " ".join(f"{v:.5e}" for v in out.detach().double().reshape(-1).cpu().tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _grid_values(g) -> list[str]:
    return [repr(float(v)) for v in g]


def _seed_spec(seeds: Sequence[int]) -> Any:
    seeds = [int(s) for s in seeds]
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return hashlib.sha256(json.dumps(seeds).encode()).hexdigest()


class Cache:
    """Tensors on disk under `root/<key>.pt`, written atomically; root None means no disk cache."""

    def __init__(self, root):
        self.root = None if root is None else Path(root).expanduser()

    def load(self, key: str):
        if self.root is None:
            return None
        path = self.root / f"{key}.pt"
        if not path.exists():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:                       # a truncated or foreign file: recompute (and overwrite)
            return None
        return data if data.get("key") == key and data.get("format") == CACHE_FORMAT else None

    def save(self, key: str, data: dict) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        data = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        torch.save({**data, "key": key, "format": CACHE_FORMAT}, tmp)
        os.replace(tmp, self.root / f"{key}.pt")


@dataclass
class TeacherSet:
    """Teacher data for a list of seeds: x_T and the supervision targets (endpoints, or states on a grid)."""

    seeds: list
    x_T: torch.Tensor
    targets: torch.Tensor                  # (B, ...) endpoints, or (B, P, ...) path states
    key: str
    cache_hit: bool
    seconds: float


def _run(source: Source, seeds, batch_size: int, fn) -> tuple[torch.Tensor, torch.Tensor]:
    xs, outs = [], []
    for lo in range(0, len(seeds), batch_size):
        chunk = list(seeds[lo:lo + batch_size])
        x_T = source.noise(chunk)
        den = source.denoiser(source.conditions(chunk))
        xs.append(x_T)
        outs.append(fn(den, x_T))
    return torch.cat(xs), torch.cat(outs)


@torch.no_grad()
def endpoints(source: Source, teacher: Teacher, seeds: Sequence[int], ident: dict, cache: Cache,
              batch_size: int = 500) -> TeacherSet:
    """The teacher's final samples for `seeds` (from the cache when every input matches)."""
    import time
    grid = source.teacher_grid(teacher)
    parts = {"what": "endpoints", "model": ident, "teacher": asdict(teacher), "teacher_grid": _grid_values(grid),
             "seeds": _seed_spec(seeds), "shape": list(source.shape), "dtype": str(source.dtype),
             "sigma_range": [repr(source.sigma_min), repr(source.sigma_max)]}
    key = cache_key(parts)
    hit = cache.load(key)
    if hit is not None:
        return TeacherSet(list(seeds), hit["x_T"].to(source.device), hit["targets"].to(source.device), key, True, 0.0)
    t0 = time.perf_counter()
    solver = teacher.build()
    x_T, out = _run(source, seeds, batch_size, lambda den, x: solver.sample(
        den, x, grid, afs=teacher.afs, denoise_to_zero=teacher.denoise_to_zero))
    seconds = time.perf_counter() - t0
    cache.save(key, {"x_T": x_T, "targets": out, "parts": json.dumps(parts, default=str)})
    return TeacherSet(list(seeds), x_T, out, key, False, seconds)


def refine(sigmas: Sequence[float], substeps: int, rho: float = 7.0) -> list[float]:
    """Each interval [t_i, t_{i+1}] of the student grid cut into `substeps` pieces, polynomially (rho = 7) in
    between: t_i,k = (t_i^(1/rho) + k/M (t_{i+1}^(1/rho) - t_i^(1/rho)))^rho. Student points stay exact."""
    out = [float(sigmas[0])]
    for a, b in zip(sigmas, sigmas[1:]):
        a, b = float(a), float(b)
        for k in range(1, substeps + 1):
            inner = a ** (1 / rho) + k / substeps * (b ** (1 / rho) - a ** (1 / rho))
            out.append(b if k == substeps else inner ** rho)
    return out


@torch.no_grad()
def path_states(source: Source, teacher: Teacher, sigmas: Sequence[float], substeps: int, seeds: Sequence[int],
                ident: dict, cache: Cache, batch_size: int = 500) -> TeacherSet:
    """Teacher states at the student's intermediate grid points t_1 .. t_{N-2} (paper Appendix C).

    The target at t_j is the state at t_j of one teacher run from x_T over the student grid refined with
    `substeps` sub-steps per student interval (`refine`), read by the sampling callback. For a causal teacher (one
    that never looks past the current point: iPNDM, Euler, Heun) it equals the teacher run stopped at t_j; a
    solver that lowers its order near the end of a grid (DPM-Solver++, UniPC) takes its full-grid steps there.
    Shape (B, N-2, ...).
    """
    import time
    fine = refine(sigmas, substeps)
    parts = {"what": "path", "one_pass": True, "model": ident, "teacher": asdict(teacher),
             "student_grid": _grid_values(sigmas),
             "substeps": substeps, "seeds": _seed_spec(seeds), "shape": list(source.shape),
             "dtype": str(source.dtype)}
    key = cache_key(parts)
    hit = cache.load(key)
    if hit is not None:
        return TeacherSet(list(seeds), hit["x_T"].to(source.device), hit["targets"].to(source.device), key, True, 0.0)
    t0 = time.perf_counter()
    solver = teacher.build()

    wanted = {j * substeps for j in range(1, len(sigmas) - 1)}       # the student's interior points

    def states(den, x):
        seen = []
        solver.sample(den, x, fine, afs=teacher.afs,
                      callback=lambda s: seen.append(s["x"]) if s["i"] in wanted else None)
        return torch.stack(seen, 1)

    x_T, out = _run(source, seeds, batch_size, states)
    seconds = time.perf_counter() - t0
    cache.save(key, {"x_T": x_T, "targets": out, "parts": json.dumps(parts, default=str)})
    return TeacherSet(list(seeds), x_T, out, key, False, seconds)


@torch.no_grad()
def trajectories(source: Source, teacher: Teacher, seeds: Sequence[int], afs: bool, ident: dict, cache: Cache,
                 batch_size: int = 500):
    """The teacher's whole trajectory on its grid T (M points, `teacher_grid`): states X (M, B, ...) and the
    derivatives d (M-1, B, ...) at X_0 .. X_{M-2}, d_i = (X_i - D_i) / T_i with D_i the denoiser output the
    teacher used at T_i (the AFS value at X_0 with `afs`), all read by the sampling callback in one run; plus x_T
    (B, ...) and whether the cache held them. What a grid search over teacher states (GITS) needs; cached like
    `endpoints`. Any solver serves (a multistage one reports the output of its first evaluation at each point)."""
    T = [float(v) for v in source.teacher_grid(teacher)]
    parts = {"what": "trajectories", "model": ident, "teacher": asdict(teacher), "teacher_grid": _grid_values(T),
             "afs": bool(afs), "seeds": _seed_spec(seeds), "shape": list(source.shape), "dtype": str(source.dtype)}
    key = cache_key(parts)
    hit = cache.load(key)
    if hit is not None:
        return T, hit["X"].to(source.device), hit["d"].to(source.device), hit["x_T"].to(source.device), True
    solver = teacher.build()

    def run(den, x):
        seen = []

        def point(s):
            i, y, out = s["i"], s["x"], s["denoised"]
            if i == len(T) - 1:
                return
            if out is None and not (afs and i == 0):
                raise InputError(f"the teacher {teacher.solver} reports no denoiser output at grid point {i}, so "
                                 "its trajectory has no derivative there")
            sigma = torch.full((y.shape[0],), T[i], dtype=y.dtype, device=y.device).reshape(-1, *[1] * (y.dim() - 1))
            seen.append((y, y / math.sqrt(1 + T[0] ** 2) if out is None else (y - out) / sigma))
        end = solver.sample(den, x, torch.tensor(T, dtype=torch.float64), afs=afs, callback=point)
        return torch.stack([s for s, _ in seen] + [end], 1), torch.stack([g for _, g in seen], 1)

    xs, Xs, ds = [], [], []
    for lo in range(0, len(seeds), batch_size):
        chunk = list(seeds[lo:lo + batch_size])
        x_T = source.noise(chunk)
        X, d = run(source.denoiser(source.conditions(chunk)), x_T)
        xs.append(x_T)
        Xs.append(X)
        ds.append(d)
    X, d, x_T = torch.cat(Xs).transpose(0, 1), torch.cat(ds).transpose(0, 1), torch.cat(xs)
    cache.save(key, {"X": X, "d": d, "x_T": x_T, "parts": json.dumps(parts, default=str)})
    return T, X, d, x_T, False
