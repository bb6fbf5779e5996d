"""AMED-Solver (Zhou et al., CVPR 2024): a learned mean-direction intermediate point per step, predicted per sample
by a small network (official code github:zju-pi/diff-sampler at commit 68d5ce4, folder `amed-solver-main`:
solvers_amed.py `amed_sampler`, `get_amed_prediction`; training/networks.py `AMED_predictor`; launch.sh).

Step i from t_i to t_{i+1} (x_0 = t_0 z):

    d_i = d(x_i, t_i)                        (AFS at i = 0: d_0 = x_0 / sqrt(1 + t_0^2))
    (r, c, a) = predictor(f_i, t_i, t_{i+1})   per sample; r in (0, 1), c in (1 - b_d, 1 + b_d), a in (1 - b_t, 1 + b_t)
    s = t_{i+1}^r t_i^(1 - r)                geometric interpolation
    y = x_i + (s - t_i) d_i
    g = (y - D(y, a s)) / s                  the divisor is s, not a s (as the official code)
    x_{i+1} = x_i + c (t_{i+1} - t_i) g

NFE: 2 (N - 1) - [afs]. The grid must end above 0.

The predictor (the official architecture): the positional embedding (8 channels, endpoint, max 10000, sin and cos
swapped) of t_i and of t_{i+1}, each through one shared Linear(8, 8) + SiLU (xavier-uniform init); the features f_i
through Linear(F, 128) + SiLU + Linear(128, 4) (EDM's kaiming-normal init, zero biases); the 20 values concatenated
into one Linear head per output: r = sigmoid(.), c = 2 b_d sigmoid(.) + 1 - b_d, a = 2 b_t sigmoid(.) + 1 - b_t
(b = 0: no head, the factor is 1). At the first step with AFS the features are zeros, as the official code's.

Features (`features`, recorded in the solver's options and state).
  * "bottleneck" (official): the network's bottleneck read during the step's first evaluation, through the
    denoiser's `features` (solvers.base.Features). The EDM adapter hooks the official module (encoder block
    `8x8_block3`, class-conditional `8x8_block2`), the LDM and Stable Diffusion adapters the U-Net's middle block;
    its channel mean on 8 x 8 gives 64 values (bench.models.base.Bottleneck). A denoiser without them is an error.
  * "pooled" (default; any denoiser, e.g. the analytic models): six statistics of the step's first evaluation,
    pooled over all non-batch dimensions, mean, standard deviation and mean absolute value of x_i / sqrt(1 + t_i^2)
    and of D(x_i, t_i).

The predictor's parameters stay where they are built (CPU, float64); its inputs are moved to them and its
outputs back to the samples' device and dtype.

Training follows bench.distill's shared loop with the official settings where they fit: teacher Heun with one
inserted point per interval (`supervision = "path"`, `path_substeps = 2`: the teacher's states at the student's
grid points supervise every step), lr 5e-3, b_d = 0.01, b_t = 0 (launch.sh, CIFAR-10 AMED-Solver row). The
official step-by-step optimisation (each step trained from the detached previous student state) is not replicated;
the shared loop backpropagates through the whole trajectory.
"""
from __future__ import annotations

import math

import torch

from .base import afs_pair, combine, reached
from .errors import InputError
from .learned import LearnedSolver

FEATURES = ("pooled", "bottleneck")
FEATURE_SIZES = {"pooled": 6, "bottleneck": 64}
HIDDEN, BOTTLENECK, NOISE_CHANNELS = 128, 4, 8


def _positional(t: torch.Tensor, channels: int = NOISE_CHANNELS, max_positions: float = 10000.0) -> torch.Tensor:
    """EDM's PositionalEmbedding(endpoint=True) of a (1,) tensor, with the sin and cos halves swapped."""
    half = channels // 2
    freqs = (1 / max_positions) ** (torch.arange(half, dtype=t.dtype) / (half - 1))
    x = t[:, None] * freqs[None]
    return torch.cat([x.sin(), x.cos()], dim=1)


def _init_linear(gen, fan_in: int, fan_out: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    if mode == "xavier_uniform":
        u = torch.rand(fan_out, fan_in, generator=gen, dtype=torch.float64)
        w = math.sqrt(6 / (fan_in + fan_out)) * (u * 2 - 1)
    else:                                                         # EDM's default, kaiming_normal
        w = math.sqrt(1 / fan_in) * torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64)
    return w, torch.zeros(fan_out, dtype=torch.float64)


def pooled_features(x: torch.Tensor, denoised: torch.Tensor, t) -> torch.Tensor:
    """(B, 6): mean, std and mean |.| of x / sqrt(1 + t^2) and of D(x, t), over every non-batch dimension."""
    scaled = x.flatten(1) / math.sqrt(1.0 + float(t) ** 2)
    den = denoised.flatten(1)
    stats = [v for y in (scaled, den) for v in (y.mean(1), y.std(1, unbiased=False), y.abs().mean(1))]
    return torch.stack(stats, dim=1)


class AMED(LearnedSolver):
    name = "amed"
    row_name = "steps"
    ends_above_zero = "its points interpolate sigma geometrically"
    min_points = 2
    structure = ("scale_dir_bound", "scale_time_bound", "features", "seed")
    parameter_options = ("weights",)
    distill_defaults = {"supervision": "path", "teacher": "heun", "path_substeps": 2, "lr": 5e-3}

    def __init__(self, num_points: int, afs: bool | None = None, scale_dir_bound: float = 0.01,
                 scale_time_bound: float = 0.0, features: str = "pooled", seed: int = 0, weights: dict | None = None):
        super().__init__()
        if not isinstance(num_points, int) or num_points < 2:
            raise InputError(f"amed needs num_points >= 2, got {num_points!r}")
        if features not in FEATURES:
            raise InputError(f"unknown amed features {features!r}; accepted: {', '.join(FEATURES)}")
        for what, b in (("scale_dir_bound", scale_dir_bound), ("scale_time_bound", scale_time_bound)):
            if not isinstance(b, (int, float)) or not 0 <= b < 1:
                raise InputError(f"amed {what} must be a number in [0, 1), got {b!r}")
        self.grid_points, self.afs = num_points, afs
        self.scale_dir_bound, self.scale_time_bound = float(scale_dir_bound), float(scale_time_bound)
        self.features, self.seed = features, int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        joint = 2 * NOISE_CHANNELS + BOTTLENECK
        shapes = {"map_layer0": (NOISE_CHANNELS, NOISE_CHANNELS, "xavier_uniform"),
                  "enc_layer0": (FEATURE_SIZES[features], HIDDEN, "kaiming_normal"),
                  "enc_layer1": (HIDDEN, BOTTLENECK, "kaiming_normal"), "fc_r": (joint, 1, "kaiming_normal")}
        if self.scale_dir_bound:
            shapes["fc_scale_dir"] = (joint, 1, "kaiming_normal")
        if self.scale_time_bound:
            shapes["fc_scale_time"] = (joint, 1, "kaiming_normal")
        for layer, (fan_in, fan_out, mode) in shapes.items():
            w, b = _init_linear(gen, fan_in, fan_out, mode)
            setattr(self, layer, torch.nn.utils.skip_init(torch.nn.Linear, fan_in, fan_out, dtype=torch.float64))
            with torch.no_grad():
                getattr(self, layer).weight.copy_(w)
                getattr(self, layer).bias.copy_(b)
        if weights is not None:
            self._load_weights(weights)

    def _load_weights(self, weights: dict) -> None:
        own = self.state_dict()
        if not isinstance(weights, dict) or set(weights) != set(own):
            raise InputError(f"amed weights must give exactly {', '.join(sorted(own))}, got "
                             f"{', '.join(sorted(weights)) if isinstance(weights, dict) else type(weights).__name__}")
        for k, v in weights.items():
            v = torch.as_tensor(v, dtype=torch.float64)
            if v.shape != own[k].shape:
                raise InputError(f"amed weight {k} must have shape {tuple(own[k].shape)}, got {tuple(v.shape)}")
            own[k] = v
        self.load_state_dict(own)

    @classmethod
    def from_options(cls, weights: dict | None = None, num_points: int | None = None, afs: bool | None = None,
                     scale_dir_bound: float = 0.01, scale_time_bound: float = 0.0, features: str = "pooled",
                     seed: int = 0):
        """solvers.get("amed", num_points=N, ...): the official initialisation (seeded), or explicit `weights`
        (every predictor tensor by name, as `options()` gives them) with num_points."""
        if num_points is None:
            raise InputError("amed needs num_points=<N> (and optionally weights={...} from options())")
        return cls(num_points, afs, scale_dir_bound, scale_time_bound, features, seed, weights)

    # ---- the predictor -----------------------------------------------------------------------
    def predict(self, f: torch.Tensor, t_cur: float, t_next: float):
        """(r, c, a), each (B,), from features f (B, F) and the step's two times."""
        emb = [torch.nn.functional.silu(self.map_layer0(_positional(torch.tensor([float(t)], dtype=torch.float64,
                                                                                   device=f.device))))
               for t in (t_cur, t_next)]
        h = self.enc_layer1(torch.nn.functional.silu(self.enc_layer0(f)))
        out = torch.cat([h, *(e.expand(f.shape[0], -1) for e in emb)], dim=1)
        r = torch.sigmoid(self.fc_r(out))[:, 0]

        def scale(head: str, bound: float) -> torch.Tensor:       # in (1 - bound, 1 + bound); 1 without a head
            if not bound:
                return torch.ones_like(r)
            return 2 * bound * torch.sigmoid(getattr(self, head)(out))[:, 0] + 1 - bound
        return r, scale("fc_scale_dir", self.scale_dir_bound), scale("fc_scale_time", self.scale_time_bound)

    def options(self) -> dict:
        return {"weights": {k: v.tolist() for k, v in self.state_dict().items()}, "num_points": self.grid_points,
                "afs": self.afs, "scale_dir_bound": self.scale_dir_bound, "scale_time_bound": self.scale_time_bound,
                "features": self.features, "seed": self.seed}

    # ---- the interface -----------------------------------------------------------------------
    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return 2 * (num_points - 1) - int(afs)

    def _sample(self, den, x, t, afs):
        hook = None
        if self.features == "bottleneck":
            hook = getattr(den, "features", None)
            if hook is None:
                raise InputError("amed features='bottleneck' needs a denoiser that exposes its network's bottleneck "
                                 "(the EDM, LDM and Stable Diffusion adapters do); this one does not: use "
                                 "features='pooled'")
            hook.capture = True
        try:
            return self._steps(den, x, t, afs, hook)
        finally:
            if hook is not None:
                hook.capture, hook.latest = False, None

    def _steps(self, den, x, t, afs, hook):
        B = x.shape[0]
        view = (B,) + (1,) * (x.dim() - 1)
        home = self.fc_r.weight.device
        for i in range(len(t) - 1):
            # the derivative at t_i and the predictor's input
            if afs and i == 0:
                a0, g0 = afs_pair(x, t[0])
                f = torch.zeros(B, FEATURE_SIZES[self.features], dtype=torch.float64)
            else:
                denoised = den(x, t[i])
                a0, g0 = 1.0 / t[i], x - denoised
                f = hook.latest if hook is not None else pooled_features(x, denoised, t[i])
                if f.shape != (B, FEATURE_SIZES[self.features]):
                    raise InputError(f"amed {self.features} features have shape {tuple(f.shape)}, expected "
                                     f"{(B, FEATURE_SIZES[self.features])}")
            reached(den, i, t[i], x)
            r, c, a = (v.to(x.device, x.dtype) for v in self.predict(f.to(home, torch.float64), t[i], t[i + 1]))
            # the intermediate point and its derivative
            s = t[i + 1] ** r * t[i] ** (1 - r)
            y = combine((1, x), (((s - t[i]) * a0).reshape(view), g0))
            g = y - den(y, a * s)
            # the update
            x = combine((1, x), ((c * (t[i + 1] - t[i]) / s).reshape(view), g))
        return x

    # ---- persistence -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"solver": self.name, "format": 1, **self.options(), "sigmas": self.sigmas, "metadata": self.metadata}

    @classmethod
    def from_state(cls, st: dict) -> "AMED":
        if st.get("solver") != "amed":
            raise InputError(f"not a saved amed solver (solver={st.get('solver')!r})")
        out = cls(st["num_points"], st.get("afs"), st["scale_dir_bound"], st["scale_time_bound"], st["features"],
                  st.get("seed", 0), st["weights"])
        out.sigmas, out.metadata = st.get("sigmas"), dict(st.get("metadata") or {})
        return out
