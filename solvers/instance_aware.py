"""Instance-aware discretization (Yuan et al., arXiv 2603.17671, summary in docs/instance-aware-discretizations.md):
each sample's time grid predicted from its initial noise by a small network, on top of the best global learned
schedule, in LD3's constrained parameterisation (solvers/ld3.py, docs/learned-solvers.md section 3).

The paper gives no code and its summary no equations, so every design choice here is this project's, stated:

  global schedule   LD3's logits p1 (N,) and model-time offsets p2 (N,) in lambda = -log t; untrained they give
                    the logSNR-uniform grid (p1 all equal, p2 = 0), as LD3's official initialisation, or with
                    `init` a given global schedule (e.g. the best of a trained LD3 and GITS), placed by LD3's
                    inversion of its positions in lambda (an instance-aware solver's own p1, p2 as they are:
                    e.g. a per_sample=False fine-tune's).
  per-sample grid   logits_b = p1 + delta_b,  delta_b = max_deviation * tanh(f(z_b))  (f: the network, z_b the
                    features of sample b's initial noise), then LD3's map row by row:
                      q = cumsum(softmax(logits_b)),  n_b = (q - min q) / (max q - min q)      (0 = n_0 < ... < n_S = 1)
                      lambda_bk = lambda(t_max) + n_bk (lambda(t_min) - lambda(t_max)),  xi_bk = exp(-lambda_bk)
                    with xi_b0 = t_max and xi_bS = t_min exactly (the given grid's endpoints). Every softmax entry is
                    at least exp(-(range of p1) - 2 max_deviation) / N, so each row is strictly descending for any
                    input, however extreme its norm.
  model times       model_times = "global": LD3's decoupled times lambda'_bk = lambda_bk + clamp(p2_k, -m, m)
                    (m = win_rate * min_k |p1_{k+1} - p1_k| on the detached global logits; 0 at both ends);
                    "per_sample": clamp(p2_k + d2_bk, -m, m) with d2_b a second head of the network;
                    "none": the network sees the solver's own times (s = xi).
  inputs            "noise": z = x_T / t_max flattened, average-pooled to at most `max_features` values (each
                    pooled value rescaled by sqrt(pool size), so white noise stays unit variance) and zero-padded
                    to exactly `max_features`; "norm": the single feature ||z|| / sqrt(d) - 1; "noise_norm": both
                    (default). The input size depends on these options only, not on the model. Inputs are clamped to
                    [-8, 8] (NaN and inf included), so the network's output is finite for any x_T. A condition
                    embedding is not supported yet: the solver interface hands the condition to the denoiser only.
  network           an MLP: features -> width -> width -> N (SiLU), float64, its last layer zero at
                    initialisation, so the untrained predictor is exactly the global schedule; its output is
                    multiplied by `output_scale` (0.1), which slows the network's learning against the global
                    logits' under the one shared learning rate.
  base solver       any solver with per-sample grids (`per_sample_grids`) that is not learned; it runs unchanged
                    on the (B, N) grid. With model times, a data-prediction base (an exponential integrator:
                    DPM-Solver++, UniPC) sees M_k = D(x_k, s_k); a noise-prediction base (Euler, Heun, iPNDM) sees
                    D' = x_k - (xi_k / s_k)(x_k - D(x_k, s_k)), i.e. the noise at s_k as its derivative at xi_k, as
                    LD3 rewrites its bases.
  training          bench.distill's shared loop against the shared teacher cache, in two phases in one run: for
                    the first `global_fraction` of the steps only the global schedule learns (the network's
                    gradients are withheld: LD3's objective on the same data), then the network alone learns,
                    starting from that global optimum. Default: 0.5 from the logSNR-uniform start, 0 (the network
                    alone, all steps) from an `init` schedule. The regulariser regularizer * mean_k (n_bk - n_k)^2
                    (per-sample positions against the global ones; default weight 0.01, an option because it trades the
                    per-sample spread against overfitting) is added to each sample's loss (`penalty`).
                    The run ends
                    with the parameters of its lowest held-out error (`keep_best`), so a network phase that does
                    not help the held-out pairs leaves the global optimum in place.
  per_sample=False  samples the global schedule alone (the trained solver's global part); distilled so, only the
                    global schedule learns, for all the steps: the control "a global schedule from the same start,
                    data, teacher and steps", which tells the per-sample grids' gain from more training of one.
                    `init_from` such a fine-tune (its p1, p2 become the start) trains the network alone on top of
                    that fine-tuned global schedule ("Fine-tune + per-sample" in the instance_study grid).

NFE: the base's calls on N points. Inference overhead: one network forward pass per batch of initial noises.
"""
from __future__ import annotations

import math

import torch

from .base import Columns
from .errors import InputError
from .ld3 import _window, parameters, positions_of
from .learned import LearnedSolver

INPUTS = ("noise", "norm", "noise_norm")
MODEL_TIMES = ("global", "per_sample", "none")
CLAMP = 8.0
OUTPUT_SCALE = 0.1


class InstanceAware(LearnedSolver):
    name = "instance_aware"
    row_name = "steps"
    ends_above_zero = "it spaces its steps in lambda = -log t"
    min_points = 2
    structure = ("base", "base_options", "width", "inputs", "max_features", "max_deviation", "model_times",
                 "win_rate", "regularizer", "global_fraction", "per_sample", "init")
    parameter_options = ("positions", "offsets", "p1", "p2", "network")
    # LD3's teacher solver (UniPC bh1 order 3, no final denoise) on GITS's 60 steps (LD3's 20 leave the teacher
    # itself far from the ODE solution on the sharp analytic mixtures); more teacher pairs than LD3's 50, since a
    # per-sample map needs them; the start: GITS's searched grid for the same base (bench.distill `init_from`)
    distill_defaults = {"teacher": "unipc", "teacher_steps": 60, "teacher_options": {"order": 3, "variant": "bh1"},
                        "teacher_denoise": False, "num_samples": 1024, "eval_samples": 256, "batch_size": 64,
                        "steps": 800, "lr": 2e-2, "keep_best": True,
                        "init_from": {"solver": "gits", "base": "unipc", "base_options": {"order": 3, "variant": "bh1"},
                                      "teacher_steps": 60}}

    def __init__(self, p1, p2, afs: bool | None = None, base: str = "unipc",
                 base_options: dict | None = None, width: int = 64, inputs: str = "noise_norm",
                 max_features: int = 64, max_deviation: float = 2.0, model_times: str = "global",
                 win_rate: float = 0.5, regularizer: float = 0.01, global_fraction: float = 0.5,
                 per_sample: bool = True, network: dict | None = None):
        super().__init__()
        from . import get, solver_class
        if base not in _bases():
            raise InputError(f"instance_aware base must be a handcrafted solver with per-sample grids: "
                             f"{', '.join(_bases())}; got {base!r}")
        for flag, value, accepted in (("inputs", inputs, INPUTS), ("model_times", model_times, MODEL_TIMES)):
            if value not in accepted:
                raise InputError(f"instance_aware {flag} must be one of {', '.join(accepted)}, got {value!r}")
        for key, value, low in (("width", width, 1), ("max_features", max_features, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InputError(f"instance_aware {key} must be an integer >= {low}, got {value!r}")
        for key, value in (("max_deviation", max_deviation), ("win_rate", win_rate), ("regularizer", regularizer)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise InputError(f"instance_aware {key} must be a number >= 0, got {value!r}")
        if not isinstance(global_fraction, (int, float)) or not 0 <= global_fraction < 1:
            raise InputError(f"instance_aware global_fraction must be in [0, 1), got {global_fraction!r}")
        self.p1, self.p2 = parameters(p1, p2, "instance_aware")
        self.grid_points, self.afs = self.p1.numel(), afs
        self.base_name = base
        self.base_options = dict(base_options or {})
        self.base = get(base, **self.base_options)
        self.data_prediction = bool(solver_class(base).exponential_integrator)
        self.width, self.inputs, self.max_features = width, inputs, max_features
        features = (max_features if inputs != "norm" else 0) + (1 if inputs != "noise" else 0)
        self.max_deviation, self.model_times, self.win_rate = float(max_deviation), model_times, float(win_rate)
        self.regularizer, self.global_fraction, self.per_sample = float(regularizer), float(global_fraction), \
            bool(per_sample)
        heads = self.grid_points * (2 if model_times == "per_sample" else 1)
        self.net = torch.nn.Sequential(torch.nn.Linear(features, width), torch.nn.SiLU(),
                                       torch.nn.Linear(width, width), torch.nn.SiLU(),
                                       torch.nn.Linear(width, heads)).double()
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)
        if network is not None:
            try:
                self.net.load_state_dict({k: torch.as_tensor(v, dtype=torch.float64) for k, v in network.items()})
            except (RuntimeError, KeyError, TypeError, ValueError) as e:
                raise InputError(f"instance_aware network does not fit width={width}, {features} inputs, "
                                 f"{heads} outputs: {' '.join(str(e).split())[:300]}") from None
        if model_times == "none":
            self.p2.requires_grad_(False)
        self._penalty = None

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_options(cls, positions=None, offsets=None, p1=None, p2=None, network=None, num_points: int | None = None,
                     afs: bool | None = None, base: str = "unipc", base_options: dict | None = None,
                     width: int = 64, inputs: str = "noise_norm", max_features: int = 64,
                     max_deviation: float = 2.0, model_times: str = "global", win_rate: float = 0.5,
                     regularizer: float = 0.01, global_fraction: float | None = None, per_sample: bool = True,
                     init=None):
        """solvers.get("instance_aware", ...): untrained for `num_points` (the logSNR-uniform global schedule and
        a zero network; with `init`, that global schedule instead: a list of N descending sigmas placed by its
        positions in lambda, or a trained global solver's options: GITS's (its "timesteps"), LD3's ("positions",
        "offsets") or an instance-aware solver's (its global logits "p1" and offsets "p2", taken as they are, e.g.
        the per_sample=False fine-tune's); bench.distill's `init_from` hands them over), or
        explicit global parameters, as `positions` (+ `offsets`, LD3's constrained form) or as the raw logits `p1`
        and offsets `p2` (what `options()` gives: exact, and the per-sample model times clamp p2 + d2, not the
        clamped p2), with `network` (the MLP's state as lists)."""
        if global_fraction is None:                 # a given global schedule needs no first phase
            global_fraction = 0.0 if init is not None else 0.5
        rest = dict(afs=afs, base=base, base_options=OFFICIAL_BASE_OPTIONS.get(base, {}) if base_options is None
                    else base_options, width=width, inputs=inputs, max_features=max_features,
                    max_deviation=max_deviation, model_times=model_times, win_rate=win_rate,
                    regularizer=regularizer, global_fraction=global_fraction, per_sample=per_sample, network=network)
        given = [k for k, v in (("positions", positions), ("p1", p1), ("num_points", num_points)) if v is not None]
        if len(given) != 1:
            raise InputError("instance_aware needs exactly one of positions=[0, ..., 1], p1=[...] (each with "
                             "network={...}) or num_points=<N>")
        if init is not None and num_points is None:
            raise InputError("instance_aware init (a global schedule to start from) goes with num_points only")
        if p1 is not None:
            return cls(p1, torch.zeros(len(p1)) if p2 is None else p2, **rest)
        if num_points is not None:
            if not isinstance(num_points, int) or num_points < 2:
                raise InputError(f"instance_aware needs num_points >= 2, got {num_points!r}")
            if init is None:
                return cls(torch.ones(num_points), torch.zeros(num_points), **rest)
            if isinstance(init, dict) and init.get("p1") is not None:    # an instance-aware solver's global part
                if len(init["p1"]) != num_points:
                    raise InputError(f"instance_aware init has {len(init['p1'])} points; this grid has {num_points}")
                return cls(init["p1"], init.get("p2", torch.zeros(num_points)), **rest)
            positions, offsets = _initial(init, num_points)
        from .ld3 import LD3
        ld3 = LD3.from_options(positions=positions, offsets=offsets, win_rate=win_rate)   # LD3's inversion
        return cls(ld3.p1.detach(), ld3.p2.detach(), **rest)

    def options(self) -> dict:
        return {"p1": self.p1.detach().tolist(), "p2": self.p2.detach().tolist(),
                "network": {k: v.tolist() for k, v in self.net.state_dict().items()},
                "afs": self.afs, "base": self.base_name, "base_options": self.base_options,
                "width": self.width, "inputs": self.inputs, "max_features": self.max_features,
                "max_deviation": self.max_deviation, "model_times": self.model_times, "win_rate": self.win_rate,
                "regularizer": self.regularizer, "global_fraction": self.global_fraction,
                "per_sample": self.per_sample}

    def learns(self) -> dict[str, int]:
        free = self.grid_points - 2
        out = {"timesteps": free}
        if self.model_times != "none":
            out["model_times"] = free
        out["network"] = sum(p.numel() for p in self.net.parameters())
        return out

    # ---- the inputs --------------------------------------------------------------------------
    def _features(self, x_T: torch.Tensor, t_max) -> torch.Tensor:
        z = torch.nan_to_num(x_T.detach().to(torch.float64) / float(t_max), nan=0.0, posinf=CLAMP, neginf=-CLAMP)
        parts = []
        if self.inputs in ("noise", "noise_norm"):
            pooled = _pooled(z, self.max_features)
            parts.append(torch.nn.functional.pad(pooled, (0, self.max_features - pooled.shape[1])))
        if self.inputs in ("norm", "noise_norm"):
            flat = z.flatten(1)
            parts.append(flat.norm(dim=1, keepdim=True) / math.sqrt(flat.shape[1]) - 1)
        return torch.cat(parts, 1).clamp(-CLAMP, CLAMP)

    # ---- the mapping -------------------------------------------------------------------------
    def global_positions(self) -> torch.Tensor:
        return positions_of(self.p1)

    def global_offsets(self) -> torch.Tensor:
        return self._offsets(self.p2)

    def _offsets(self, p2: torch.Tensor) -> torch.Tensor:
        if self.model_times == "none":
            return torch.zeros_like(p2)
        m = _window(self.p1, self.win_rate)
        mask = torch.ones(self.grid_points, dtype=torch.float64, device=p2.device)
        mask[0] = mask[-1] = 0
        return torch.clamp(p2, -m, m) * mask

    def predict(self, x_T: torch.Tensor, t_max: float, t_min: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor]:
        """(xi, s, n): each sample's grid and model times on [t_min, t_max], (B, N) float64 with the endpoints
        exactly the given floats, and its normalised positions n (B, N) (differentiable in every parameter)."""
        if not (t_max > t_min > 0):
            raise InputError(f"instance_aware needs a grid with t_max > t_min > 0 (lambda mode), got "
                             f"[{t_min}, {t_max}]")
        B, N = x_T.shape[0], self.grid_points
        device = self.p1.device
        if self.per_sample:
            out = OUTPUT_SCALE * self.net(self._features(x_T, t_max).to(device))
            delta = self.max_deviation * torch.tanh(out[:, :N])
            d2 = out[:, N:] if self.model_times == "per_sample" else None
        else:
            delta, d2 = torch.zeros(B, N, dtype=torch.float64, device=device), None
        n = positions_of(self.p1 + delta)
        lam_min, lam_max = -math.log(t_max), -math.log(t_min)
        lam = lam_min + n * (lam_max - lam_min)
        off = self._offsets(self.p2 if d2 is None else self.p2 + d2)
        ends = (torch.full((B, 1), t_max, dtype=torch.float64, device=device),
                torch.full((B, 1), t_min, dtype=torch.float64, device=device))
        xi = torch.cat([ends[0], torch.exp(-lam[:, 1:-1]), ends[1]], 1)
        s = torch.cat([ends[0], torch.exp(-(lam + off)[:, 1:-1]), ends[1]], 1)
        return xi, s, n

    def penalty(self):
        """The regulariser of the latest `sample` run, per sample: regularizer * mean_k (n_bk - n_k)^2."""
        return self._penalty

    def begin_step(self, step: int, steps: int) -> None:
        """Training phases: the global schedule learns for the first global_fraction of the steps, then the network
        alone (the global schedule stays at its phase-one optimum). With per_sample=False the global schedule
        learns throughout (the control: a global fine-tune from the same start, data and steps)."""
        second = self.per_sample and step >= int(round(self.global_fraction * steps))
        for p in self.net.parameters():
            p.requires_grad_(second)
        self.p1.requires_grad_(not second)
        self.p2.requires_grad_(not second and self.model_times != "none")

    # ---- the interface -----------------------------------------------------------------------
    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return self.base.calls(num_points, afs, ends_at_zero)

    def _sample(self, den, x, t, afs):
        xi, s, n = self.predict(x, t[0], t[-1])
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if not grad:
            xi, s, n = xi.detach(), s.detach(), n.detach()
        self._penalty = self.regularizer * (n - self.global_positions()).pow(2).mean(1) if grad else None
        cols, model_cols = Columns(xi.unbind(1)), s.unbind(1)
        if self.model_times == "none":
            return self.base._sample(den, x, cols, afs)
        last = len(cols) - 1

        def model(y, sigma):
            # the network at each sample's model time s_bk of the grid column xi_k the base evaluates at
            k = next((j for j, v in enumerate(cols) if v is sigma), None)
            if k is None:
                raise InputError(f"instance_aware's base {self.base_name} evaluated the network off its grid")
            out = den(y, model_cols[k])
            if not self.data_prediction and 0 < k < last:
                ratio = (cols[k] / model_cols[k]).to(y.device, y.dtype).reshape(-1, *[1] * (y.dim() - 1))
                out = y - ratio * (y - out)
            return out

        model.reached = getattr(den, "reached", None)       # the sampling callback sees the base's grid points
        return self.base._sample(model, x, cols, afs)

    def grids(self, x_T: torch.Tensor, t_max: float, t_min: float) -> torch.Tensor:
        """The per-sample grids (B, N) as float64, without gradient (figures, studies)."""
        with torch.no_grad():
            return self.predict(x_T, t_max, t_min)[0]

    def grid(self, t_max: float, t_min: float) -> dict[str, list[float]]:
        """The global part's grid and model times on [t_min, t_max] as floats (what the network deviates from)."""
        with torch.no_grad():
            n = self.global_positions()
            lam = -math.log(t_max) + n * (math.log(t_max) - math.log(t_min))
            xi, s = torch.exp(-lam), torch.exp(-(lam + self.global_offsets()))
        inner = slice(1, self.grid_points - 1)
        return {"timesteps": [t_max, *map(float, xi[inner]), t_min],
                "model_times": [t_max, *map(float, s[inner]), t_min]}

    def artefacts(self) -> list:
        """The global part's grid and model times on the grid it was distilled for (its per-sample grids are
        recorded by the harness through `grids`)."""
        from .artefacts import TimeGrid
        return [TimeGrid(**self.grid(self.sigmas[0], self.sigmas[-1]))] if self.sigmas else []

    # ---- persistence -------------------------------------------------------------------------
    def state(self) -> dict:
        # the global grid on the distilled range ("model_times" is the option's name here, so only the grid)
        learned = {"timesteps": self.grid(self.sigmas[0], self.sigmas[-1])["timesteps"]} if self.sigmas else {}
        return {**learned, "solver": self.name, "format": 1, "num_points": self.grid_points, **self.options(),
                "p1": self.p1.detach().tolist(), "p2": self.p2.detach().tolist(), "sigmas": self.sigmas,
                "metadata": self.metadata}

    @classmethod
    def from_state(cls, st: dict) -> "InstanceAware":
        if st.get("solver") != cls.name:
            raise InputError(f"not a saved instance_aware solver (solver={st.get('solver')!r})")
        keys = ("afs", "base", "base_options", "width", "inputs", "max_features", "max_deviation", "model_times",
                "win_rate", "regularizer", "global_fraction", "per_sample", "network")
        out = cls(st["p1"], st["p2"], **{k: st[k] for k in keys if k in st})
        out.sigmas, out.metadata = st.get("sigmas"), dict(st.get("metadata") or {})
        return out


OFFICIAL_BASE_OPTIONS = {"unipc": {"order": 3, "variant": "bh1"}}


def _initial(init, num_points: int):
    """(positions, offsets) of an `init` global schedule: LD3's form as given, or a grid of N sigmas by its
    positions in lambda = -log sigma (n_k = (lambda_k - lambda_0) / (lambda_(N-1) - lambda_0)), offsets 0."""
    if isinstance(init, dict) and init.get("positions") is not None:            # LD3's options
        positions, offsets = init["positions"], init.get("offsets")
    else:
        if isinstance(init, dict):                                             # a grid's options (GITS)
            init = init.get("timesteps")
        try:
            grid = torch.as_tensor(init, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            grid = None
        if grid is None or grid.dim() != 1 or not bool((grid > 0).all()) or \
                not bool((grid[1:] < grid[:-1]).all()):
            raise InputError("instance_aware init must be a strictly descending list of sigmas > 0, or options "
                             "holding \"timesteps\" (such a list) or \"positions\" (+ \"offsets\", LD3's form); got "
                             f"{init!r}")
        lam = -grid.log()
        n = (lam - lam[0]) / (lam[-1] - lam[0])
        n[0], n[-1] = 0.0, 1.0
        positions, offsets = n.tolist(), None
    if len(positions) != num_points:
        raise InputError(f"instance_aware init has {len(positions)} points; this grid has {num_points}")
    return positions, offsets


def _bases() -> list[str]:
    from . import names, solver_class
    return [n for n in names() if not solver_class(n).learned and solver_class(n).per_sample_grids]


def _pooled(z: torch.Tensor, limit: int) -> torch.Tensor:
    """z (B, ...) flattened to at most `limit` features: images (B, C, H, W) by average pooling over space (per
    channel), anything else by averaging consecutive chunks; each mean times sqrt(its size)."""
    if z.dim() == 4 and z.shape[1] <= limit:
        C, H, W = z.shape[1:]
        side = max(1, int(math.isqrt(limit // C)))
        kh, kw = math.ceil(H / min(side, H)), math.ceil(W / min(side, W))
        pooled = torch.nn.functional.avg_pool2d(z, (kh, kw), ceil_mode=True)
        return pooled.flatten(1) * math.sqrt(kh * kw)
    flat = z.flatten(1)
    d = flat.shape[1]
    if d <= limit:
        return flat
    size = math.ceil(d / limit)
    pad = size * math.ceil(d / size) - d
    flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.reshape(flat.shape[0], -1, size).mean(2) * math.sqrt(size)
