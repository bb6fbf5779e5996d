"""What every model adapter presents to the harness: an EDM denoiser D(x, sigma) plus the facts a cell needs.

Adapters for each model family (analytic mixtures, the shipped digits network, EDM pickles, latent diffusion,
Stable Diffusion, FLUX) subclass `Model`; solvers never see anything but `denoiser(x, sigma)`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from solvers import flow, schedules
from solvers.base import Features
from solvers.errors import InputError

TIMES = ("sigma", "flow")        # the time variables a grid may ask solvers to integrate in (solvers/flow.py)


@dataclass
class Requirement:
    """A local file a model or metric needs (weights, reference statistics, prompts)."""

    name: str                       # e.g. "edm-cifar10-uncond-vp.pkl"
    path: Path | None               # where it is looked for (after env/config resolution)
    env: str | None = None          # environment variable that overrides the path
    url: str | None = None          # official download location (`python -m bench download`)
    sha256: str | None = None
    description: str = ""

    @property
    def present(self) -> bool:
        return self.path is not None and Path(self.path).exists()

    def missing_message(self) -> str:
        where = f" at {self.path}" if self.path else ""
        how = f"; set {self.env} to its path" if self.env else ""
        get = f", or fetch it with `python -m bench download {self.name}`" if self.url else ""
        return f"missing {self.description or self.name}{where}{how}{get}"


def noise(seeds: Sequence[int], shape: Sequence[int], sigma: float, dtype=torch.float32,
          device="cpu") -> torch.Tensor:
    """x_T = sigma * z with one CPU generator per seed (EDM's practice): a sample never depends on its batch."""
    z = torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)),
                                 dtype=torch.float64) for s in seeds])
    return (sigma * z).to(dtype=dtype, device=device)


class Model:
    """Base adapter. Subclasses set the class attributes and implement `denoiser`."""

    name: str = ""
    description: str = ""
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    shape: tuple = ()                       # one sample's shape, e.g. (3, 32, 32)
    schedule: str = "polynomial"            # the grid the paper uses for this model
    schedule_options: dict = {}             # e.g. {"rho": 7}; discrete grids get sigma_fn from `grid`
    evals_per_call: int = 1                 # 2 under classifier-free guidance
    released_key: str | None = None         # dataset key of the released DyWeight coefficients, if any
    distill_lr: float | None = None         # the paper's DyWeight learning rate for it (None: bench.distill's default)
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    threads: int | None = None              # torch threads a run of it asks for (None: torch's default); the small
                                            # embedded models ask for 1, the fastest on a shared machine

    # --- what the runner calls -----------------------------------------------------------
    def denoiser(self, cond: Any = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """D(x, sigma) for a batch whose conditions are `cond` (None for unconditional models)."""
        raise NotImplementedError

    def conditions(self, seeds: Sequence[int]) -> Any:
        """Conditions (class labels, prompt embeddings) drawn per seed, so every solver sees the same ones."""
        return None

    def training_conditions(self, seeds: Sequence[int]) -> Any:
        """Conditions of distillation pairs (seeds from 1e9 on); a model may draw them from its own training prompts
        (FLUX: DyWeight's 5k train2014 captions). Default: `conditions`."""
        return self.conditions(seeds)

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        return noise(seeds, self.shape, self.sigma_max, self.dtype, self.device)

    # --- loaded networks ----------------------------------------------------------------------
    batch_hint: int = 500                   # a batch size that fits for teacher and evaluation runs
    nominal_parameters: dict = {}           # network -> parameter count, for the memory estimate
    # A distillation's memory before anything is loaded (bench.distill.memory; a run measures both on the device):
    activation_bytes: int = 0               # saved activations of one network call for one sample, float32 training
    loss_bytes: int = 0                     # saved activations per sample of an image distance (decoder + Inception)

    def weights_key(self):
        """What identifies the networks this model loads from disk (shared with models reading the same files;
        bench.models.loaded), or None when it loads nothing releasable."""
        return None

    def release(self) -> None:
        """Free the networks loaded from disk (every model sharing them forgets them; they reload on next use)."""
        key = self.weights_key()
        if key is not None:
            from . import loaded
            loaded.release(key)

    def drop_networks(self) -> None:
        """Forget references to loaded networks (called by bench.models.loaded.release)."""

    def networks(self) -> list:
        """The loaded torch modules of the model (their parameters are not activations); none by default."""
        return []

    #: the Python packages its networks need, as (import name, the extra of this project that installs it)
    packages: tuple = ()

    def preflight(self) -> None:
        """Load what the model needs now, before the first cell (its networks, through the same cache the cells
        use), so a broken file fails the run before any sampling; nothing for a model that ships."""

    def weights_bytes(self) -> int:
        """Memory of the networks' weights in the model's precision, from `nominal_parameters`."""
        per = torch.tensor([], dtype=getattr(self, "net_dtype", self.dtype)).element_size()
        return int(sum(self.nominal_parameters.values()) * per)

    def grid(self, num_points: int, schedule: str | None = None, **options) -> torch.Tensor:
        """The model's time grid of `num_points` sigmas (its default schedule unless one is named)."""
        kind = schedule or self.schedule
        opts = dict(self.schedule_options) if kind == self.schedule else {}
        opts.update(options)
        if kind == "discrete" and "sigma_fn" not in opts:
            opts["sigma_fn"] = self.sigma_fn
            return schedules.get(kind, num_points, **opts)
        return schedules.get(kind, num_points, self.sigma_min, self.sigma_max, **opts)

    def sigma_fn(self, tau: torch.Tensor) -> torch.Tensor:
        raise InputError(f"model {self.name!r} has no discrete time (it cannot use the 'discrete' schedule)")

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Map final samples to the space metrics read (images in [-1, 1] for image models; identity here)."""
        return x

    def data_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Final states in the data's own coordinates (identity; a model that presents shifted coordinates, such
        as the mean-centred digits, undoes the shift), where the endpoint error's relative norm is taken."""
        return x

    def requirements(self) -> list[Requirement]:
        """Local files this model needs; empty when it ships with the project."""
        return []

    # --- time variables ----------------------------------------------------------------------
    def view(self, time: str) -> "Model":
        """The model in the time variable solvers integrate in: "sigma" (itself, EDM's) or "flow" (`flow_view`)."""
        if time == "sigma":
            return self
        if time == "flow":
            if getattr(self, "_flow_view", None) is None:
                self._flow_view = self.flow_view()
            return self._flow_view
        raise InputError(f"unknown time variable {time!r}; accepted: {', '.join(TIMES)}")

    def flow_view(self) -> "Model":
        """This model in flow time (bench.models.flow.FlowView: the change of variables of solvers/flow.py); flow
        models override it with their native flow network."""
        return FlowView(self)

    @property
    def base(self) -> "Model":
        """The model a view presents (itself for a model)."""
        return self

    def to_base(self, x: torch.Tensor) -> torch.Tensor:
        """Final states of this view in the base model's variables (identity for a model)."""
        return x

    # --- noise floors (bench.stats, the report's floor rows) ----------------------------------------------
    floor_sources: dict = {}                # source name -> display label of the samples a floor row scores

    def floor_samples(self, source: str, seeds: Sequence[int], sigma_start: float, sigma_end: float,
                      cache_dir=None) -> torch.Tensor:
        """Final states, in this model's variables, of a reference the metrics' noise floor is read from (e.g.
        the exact ODE solution, real data), one per seed."""
        raise InputError(f"model {self.name!r} has no noise floor {source!r}; accepted: "
                         f"{', '.join(self.floor_sources) or '(none)'}")

    def cached_reference(self, key: str, cache_dir, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A reference tensor keyed by `key`: from memory, else from `cache_dir`/reference/<name>-<key>.pt, else
        `compute()`, kept in memory and written to disk atomically (a unique temporary file moved into place, so a
        killed run never leaves half a file and concurrent writers never collide). A cached file that does not load
        (truncated, foreign) is recomputed and overwritten."""
        memory = self.__dict__.setdefault("_references", {})
        if key in memory:
            return memory[key]
        path = Path(cache_dir) / "reference" / f"{self.name}-{key}.pt" if cache_dir else None
        ref = None
        if path is not None and path.exists():
            try:
                ref = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:                      # truncated or foreign: recompute below
                ref = None
            if not isinstance(ref, torch.Tensor):
                ref = None
        if ref is None:
            ref = compute()
            if path is not None:
                atomic_save(ref, path)
        memory[key] = ref
        return ref

    def check_floor(self, source: str, count: int) -> None:
        """Raise InputError unless this model can give `count` samples of the floor `source`."""
        if source not in self.floor_sources:
            raise InputError(f"model {self.name!r} has no noise floor {source!r}; accepted: "
                             f"{', '.join(self.floor_sources) or '(none)'}")

    def training_requirements(self) -> list[Requirement]:
        """Files a distillation on this model needs besides `requirements()` (e.g. its training prompts)."""
        return []

    def check_available(self) -> None:
        missing = [r for r in self.requirements() if not r.present]
        if missing:
            raise FileNotFoundError("; ".join(r.missing_message() for r in missing))


class Bottleneck(Features):
    """A network's bottleneck features (solvers.base.Features) read by a forward hook on `module` during the calls
    made while `capture` is on: the channel mean of the module's output, average-pooled to 8 x 8 (the size of the
    official AMED predictor's input, where EDM's 8x8 encoder block and the LDM U-Nets' middle block already are),
    flattened to (B, 64) and detached, as the official `init_hook`. Of an output holding more rows than the call's
    batch (classifier-free guidance's [unconditional; conditional] pass), the last B rows, the conditional ones."""

    SIZE = 8

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def around(self, batch: int, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run `call` (one network evaluation), capturing the module's output when asked to."""
        if not self.capture:
            return call()
        seen = []
        hook = self.module.register_forward_hook(lambda module, inputs, output: seen.append(output))
        try:
            out = call()
        finally:
            hook.remove()
        if not seen:
            raise InputError(f"the bottleneck module {type(self.module).__name__} did not run during the call")
        h = seen[-1][0] if isinstance(seen[-1], tuple) else seen[-1]
        h = h.detach()[-batch:].float().mean(1, keepdim=True)
        self.latest = torch.nn.functional.adaptive_avg_pool2d(h, self.SIZE).flatten(1)
        return out


def atomic_save(obj, path: Path) -> None:
    """torch.save through a temporary file unique to this process, moved into place (os.replace); temporaries of
    killed writers older than an hour are removed."""
    import os
    import time
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
        except OSError:
            pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(obj):x}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def weights_path(env: str, default: str) -> Path:
    """Resolve a weights file: the environment variable if set, else under $FEWSTEP_WEIGHTS (default ~/.cache)."""
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    root = Path(os.environ.get("FEWSTEP_WEIGHTS", "~/.cache/fewstep-bench")).expanduser()
    return root / default


# ---- a model seen in flow time (solvers/flow.py) ----------------------------------------------------------
class FlowView(Model):
    """A model seen in flow time: the change of variables of solvers/flow.py, as a Model the harness samples from.

        t = sigma / (1 + sigma),   y = x / (1 + sigma),   D_flow(y, t) = D(y / (1 - t); t / (1 - t)).

    Its grids are the base model's grids mapped to t, its noise is y_T = x_T / (1 + sigma_max) = t_max z (the same
    generator per seed), and its final states convert back with x = y / (1 - t_min) (`to_base`; t_min = 0 gives
    x = y). A solver run on this view is the solver's flow-time form. Flow models (FLUX) subclass it with their own
    network in flow variables, valid at any t (a time-scaled step may query t > 1).
    """

    def __init__(self, base: Model):
        self._base = base
        for attr in ("name", "description", "shape", "evals_per_call", "released_key", "distill_lr", "dtype",
                     "device", "schedule", "schedule_options", "batch_hint"):
            setattr(self, attr, getattr(base, attr))
        self.sigma_max = flow.flow_time(float(base.sigma_max))
        self.sigma_min = flow.flow_time(float(base.sigma_min))

    @property
    def base(self) -> Model:
        return self._base

    def cache_key(self) -> str:
        inner = self._base.cache_key() if callable(getattr(self._base, "cache_key", None)) else self._base.name
        return f"flow-time view of {inner}"

    def requirements(self):
        return self._base.requirements()

    def grid(self, num_points: int, schedule: str | None = None, **options) -> torch.Tensor:
        return flow.flow_time(self._base.grid(num_points, schedule, **options))

    def noise(self, seeds):
        return (self._base.noise(seeds).to(torch.float64) / (1 + float(self._base.sigma_max))).to(self.dtype)

    def conditions(self, seeds):
        return self._base.conditions(seeds)

    def training_conditions(self, seeds):
        return self._base.training_conditions(seeds)

    def denoiser(self, cond=None):
        return flow.flow_denoiser(self._base.denoiser(cond))

    def to_base(self, y: torch.Tensor) -> torch.Tensor:
        return y / (1 - self.sigma_min) if self.sigma_min else y

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return self._base.decode(self.to_base(y))


@dataclass
class Cell:
    """What a metric sees: the model, a batch of generated samples (decoded) or a whole cell, and how they were made.

    The runner passes one batch at a time to `Metric.per_sample` and the whole cell (samples None) to `reduce`.
    """

    model: Model
    samples: torch.Tensor | None           # decoded final samples, (B, ...)
    x_T: torch.Tensor | None = None        # the initial noise in the model's variables (B, ...)
    sigmas: torch.Tensor | None = None     # the grid the samples were drawn on (in the model's sigma)
    seeds: Sequence[int] = ()              # the seeds of these samples
    conditions: Any = None
    final: torch.Tensor | None = None      # the final states before decoding, in the model's variables
    cell_seeds: Sequence[int] | None = None  # every seed of the cell (None: `seeds` is the whole cell)
    cache_dir: str | None = None           # where metrics may cache what they compute once per cell (references)
    extra: dict = field(default_factory=dict)
