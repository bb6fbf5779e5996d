"""LD3 (Tong et al., ICLR 2025): learned time steps and decoupled model-input times on a base multistep solver
(docs/learned-solvers.md, section 3; official code github:vinhsuhi/LD3 at commit 9e4a66f, trainer.py
`discretize_model_wrapper` (lambda mode) and samplers/uni_pc.py, samplers/ipndm.py).

Two learned vectors of N = S + 1 entries (S steps), p1 (logits, official init ones) and p2 (offsets, init zeros).
On a grid from t_max = t_0 to t_min = t_{N-1} (only its endpoints and its number of points are used), in
lambda = -log t:

    q = cumsum(softmax(p1)),  n_k = (q_k - min q) / (max q - min q)    positions: n_0 = 0 < ... < n_S = 1
    lambda_k = lambda(t_max) + n_k (lambda(t_min) - lambda(t_max)),  xi_k = exp(-lambda_k)   the solver's grid
    m = win_rate * min_k |p1_{k+1} - p1_k|   (on the detached logits, applied in lambda units, as the official)
    lambda'_k = lambda_k + clamp(p2_k, -m, m) [0 < k < S],  s_k = exp(-lambda'_k)           the model's times

At p1 all equal the grid is logSNR-uniform and m = 0, so s = xi. The endpoints are the given grid's, exactly.

Sampling. The base solver (`base`, with `base_options`) runs unchanged on xi: every coefficient (h, r_k, ratios)
uses xi, and only the network sees s_k. The base's network calls are rewritten:
  * data-prediction bases (UniPC): M_k = D(x_k, s_k), the denoiser at the model time;
  * noise-prediction bases (iPNDM, Euler): the noise eps_k = (x_k - D(x_k, s_k)) / s_k enters as the derivative,
    i.e. the base sees D' = x_k - (xi_k / s_k)(x_k - D(x_k, s_k)) (LD3's iPNDM divides by s_k, not xi_k).
UniPC's coefficients are differentiable in the grid (solvers.unipc.coefficients), so backpropagation through
`sample` reaches p1 through xi and the network's inputs, and p2 through s.

Explicit parameters (constrained form): `positions` (n_0 = 0 < n_1 < ... < n_S = 1, the grid's normalised lambda
positions) and `offsets` (lambda'_k - lambda_k, 0 at both ends). They are inverted to logits with
p1_k = log(n_k - n_{k-1}) for k >= 1 and p1_0 = p1_1 - (1 + max gap), which leaves the positions and the window
of the logits k >= 1 unchanged; an offset outside that window is an error.

NFE: the base's calls on N points (UniPC: S; official UniPC spends one more call after the last step whose result
is unused, which is not made here). No final denoise, as the official samplers.

Deviations, stated: only lambda mode (`mode = "lambda"`; the official "time" mode, in the VP time of its latent
configs, is not supported yet). Distillation uses bench.distill's shared loop (Adam, warm-up/cosine, endpoint
supervision) with LD3's official data sizes (50 training + 50 validation teacher pairs, batch 2), teacher
(UniPC bh1 order 3, 20 steps, no final denoise) and relaxed objective (`relaxed_ball`: the training noises move
within a ball, bench/distill/train.py); the official RMSprop/SGD split, the moves of the validation noises, the
frozen-p2 first phase and the patience/decay schedule are not replicated.
"""
from __future__ import annotations

import math

import torch

from .errors import InputError
from .learned import LearnedSolver

#: what the base solver's network calls predict: "data" (D itself) or "noise" (eps, entering as the derivative)
PREDICTION = {"unipc": "data", "ipndm": "noise", "euler": "noise"}
MODES = ("lambda",)
OFFICIAL_BASE_OPTIONS = {"unipc": {"order": 3, "variant": "bh1"}}


class LD3(LearnedSolver):
    name = "ld3"
    row_name = "steps"
    ends_above_zero = "it spaces its steps in lambda = -log t"
    min_points = 2
    structure = ("base", "base_options", "win_rate", "mode")
    parameter_options = ("positions", "offsets")
    distill_defaults = {"teacher": "unipc", "teacher_steps": 20, "teacher_options": {"order": 3, "variant": "bh1"},
                        "teacher_denoise": False, "num_samples": 50, "eval_samples": 50, "batch_size": 2,
                        "steps": 175, "lr": 5e-3, "relaxed_ball": True}

    def __init__(self, p1, p2, afs: bool | None = None, base: str = "unipc", base_options: dict | None = None,
                 win_rate: float = 0.5, mode: str = "lambda"):
        super().__init__()
        from . import get
        if base not in PREDICTION:
            raise InputError(f"ld3 base must be one of {', '.join(PREDICTION)}, got {base!r}")
        if mode not in MODES:
            raise InputError(f"ld3 mode {mode!r} is not supported; accepted: {', '.join(MODES)} (the official "
                             "'time' mode works in the VP time of its latent configs, which is not supported yet)")
        if not isinstance(win_rate, (int, float)) or not win_rate >= 0:
            raise InputError(f"ld3 win_rate must be a number >= 0, got {win_rate!r}")
        self.p1, self.p2 = parameters(p1, p2, "ld3")
        self.grid_points, self.afs = self.p1.numel(), afs
        self.base_name = base
        self.base_options = dict(OFFICIAL_BASE_OPTIONS.get(base, {}) if base_options is None else base_options)
        self.base = get(base, **self.base_options)
        self.win_rate, self.mode = float(win_rate), mode

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_options(cls, positions=None, offsets=None, num_points: int | None = None, afs: bool | None = None,
                     base: str = "unipc", base_options: dict | None = None, win_rate: float = 0.5,
                     mode: str = "lambda"):
        """solvers.get("ld3", ...): the official initialisation for `num_points`, or explicit `positions` (and
        `offsets`) in constrained form."""
        if (positions is None) == (num_points is None):
            raise InputError("ld3 needs exactly one of positions=[0, ..., 1] (optionally offsets=[...]) or "
                             "num_points=<N>")
        rest = dict(afs=afs, base=base, base_options=base_options, win_rate=win_rate, mode=mode)
        if num_points is not None:
            if not isinstance(num_points, int) or num_points < 2:
                raise InputError(f"ld3 needs num_points >= 2, got {num_points!r}")
            return cls(torch.ones(num_points), torch.zeros(num_points), **rest)
        n = torch.as_tensor(positions, dtype=torch.float64)
        inc = n[1:] - n[:-1] if n.dim() == 1 else None
        if (inc is None or n.numel() < 2 or float(n[0]) != 0.0 or float(n[-1]) != 1.0 or bool((inc <= 0).any())):
            raise InputError("ld3 positions must be a list rising strictly from exactly 0 to exactly 1")
        off = torch.zeros_like(n) if offsets is None else torch.as_tensor(offsets, dtype=torch.float64)
        if off.shape != n.shape or float(off[0]) != 0.0 or float(off[-1]) != 0.0:
            raise InputError("ld3 offsets must have positions' length and be 0 at both ends")
        logits = torch.log(inc)
        gaps = (logits[1:] - logits[:-1]).abs()
        first = logits[:1] - (1 + (float(gaps.max()) if gaps.numel() else 0.0))
        p1 = torch.cat([first, logits])
        window = _window(p1, win_rate)
        if bool((off.abs() > window * (1 + 1e-12)).any()):
            raise InputError(f"ld3 offsets must lie within the window win_rate * min |p1_(k+1) - p1_k| = "
                             f"{window:.6g} (lambda units) of these positions")
        return cls(p1, off, **rest)

    # ---- the mapping -------------------------------------------------------------------------
    def positions(self) -> torch.Tensor:
        """n_k: the grid's normalised positions in lambda, from 0 (t_max) to 1 (t_min)."""
        return positions_of(self.p1)

    def offsets(self) -> torch.Tensor:
        """lambda'_k - lambda_k: p2 clamped to the window, 0 at both ends."""
        m = _window(self.p1, self.win_rate)
        mask = torch.ones_like(self.p2)
        mask[0] = mask[-1] = 0
        return torch.clamp(self.p2, -m, m) * mask

    def times(self, t_max: float, t_min: float) -> tuple[list, list]:
        """(xi, s): the solver's grid and the model's times on [t_min, t_max], N values each, as 0-d tensors
        (differentiable in p1, p2) with the endpoints exactly the given floats."""
        if not (t_max > t_min > 0):
            raise InputError(f"ld3 needs a grid with t_max > t_min > 0 (lambda mode), got [{t_min}, {t_max}]")
        lam_min, lam_max = -math.log(t_max), -math.log(t_min)
        lam = lam_min + self.positions() * (lam_max - lam_min)
        xi = torch.exp(-lam)
        s = torch.exp(-(lam + self.offsets()))
        last = self.grid_points - 1
        xi = [t_max] + list(xi[1:last]) + [t_min]
        s = [t_max] + list(s[1:last]) + [t_min]
        return xi, s

    def grid(self, t_max: float, t_min: float) -> dict[str, list[float]]:
        """The learned grid and model times on [t_min, t_max] as floats."""
        with torch.no_grad():
            xi, s = self.times(t_max, t_min)
        return {"timesteps": [float(v) for v in xi], "model_times": [float(v) for v in s]}

    def options(self) -> dict:
        return {"positions": self.positions().detach().tolist(), "offsets": self.offsets().detach().tolist(),
                "afs": self.afs, "base": self.base_name, "base_options": self.base_options,
                "win_rate": self.win_rate, "mode": self.mode}

    def artefacts(self) -> list:
        """Its learned grid and model times on the grid it was distilled for."""
        from .artefacts import TimeGrid
        return [TimeGrid(**self.grid(self.sigmas[0], self.sigmas[-1]))] if self.sigmas else []

    def learns(self) -> dict[str, int]:
        """The interior time steps and model times (p1's first logit and the normalisation leave N - 2 free)."""
        free = self.grid_points - 2
        return {"timesteps": free, "model_times": free} if self.p2.requires_grad else {"timesteps": free}

    # ---- the interface -----------------------------------------------------------------------
    def calls(self, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
        return self.base.calls(num_points, afs, ends_at_zero)

    def _sample(self, den, x, t, afs):
        xi, s = self.times(t[0], t[-1])
        if not (torch.is_grad_enabled() and self.p1.requires_grad):
            xi, s = [float(v) for v in xi], [float(v) for v in s]
        noise = PREDICTION[self.base_name] == "noise"
        last = len(xi) - 1

        def model(y, sigma):
            # the network at the model time s_k of the grid point xi_k the base evaluates at
            k = _index(xi, sigma, self.base_name)
            out = den(y, s[k])
            if noise and 0 < k < last:                       # eps(y, s_k) as the base's derivative at xi_k
                out = y - (xi[k] / s[k]) * (y - out)
            return out

        model.reached = getattr(den, "reached", None)       # the sampling callback sees the base's grid points
        return self.base._sample(model, x, xi, afs)

    # ---- persistence -------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything that rebuilds it, plus (once distilled for a grid) the learned grid on that grid's range."""
        learned = self.grid(self.sigmas[0], self.sigmas[-1]) if self.sigmas else {}
        return {**learned, "solver": self.name, "format": 1, "num_points": self.grid_points, **self.options(),
                "p1": self.p1.detach().tolist(), "p2": self.p2.detach().tolist(), "sigmas": self.sigmas,
                "metadata": self.metadata}

    @classmethod
    def from_state(cls, st: dict) -> "LD3":
        if st.get("solver") != "ld3":
            raise InputError(f"not a saved ld3 solver (solver={st.get('solver')!r})")
        out = cls(st["p1"], st["p2"], afs=st.get("afs"), base=st["base"], base_options=st.get("base_options"),
                  win_rate=st.get("win_rate", 0.5), mode=st.get("mode", "lambda"))
        out.sigmas, out.metadata = st.get("sigmas"), dict(st.get("metadata") or {})
        return out


def parameters(p1, p2, who: str) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """LD3's logits p1 and model-time offsets p2 as float64 Parameters, checked: both (N,), N >= 2, finite."""
    p1 = torch.as_tensor(p1, dtype=torch.float64)
    p2 = torch.as_tensor(p2, dtype=torch.float64)
    if p1.dim() != 1 or p1.numel() < 2 or p2.shape != p1.shape:
        raise InputError(f"{who} p1 and p2 must both have shape (N,) with N >= 2, got {tuple(p1.shape)} and "
                         f"{tuple(p2.shape)}")
    if not (torch.isfinite(p1).all() and torch.isfinite(p2).all()):
        raise InputError(f"{who} p1 and p2 must be finite")
    return torch.nn.Parameter(p1.clone()), torch.nn.Parameter(p2.clone())


def positions_of(logits: torch.Tensor) -> torch.Tensor:
    """n = (q - min q) / (max q - min q), q = cumsum(softmax(logits)), over the last dimension (one grid per row
    of a (B, N) tensor): rising from exactly 0 to exactly 1."""
    q = torch.cumsum(torch.softmax(logits, -1), -1)
    lo, hi = q.min(-1, keepdim=True).values, q.max(-1, keepdim=True).values
    return (q - lo) / (hi - lo)


def _window(p1: torch.Tensor, win_rate: float) -> float:
    """m = win_rate * min_k |p1_{k+1} - p1_k| on the detached logits."""
    p = p1.detach()
    return float(win_rate * (p[1:] - p[:-1]).abs().min())


def _index(xi: list, sigma, base: str) -> int:
    """The position of the grid point `sigma` the base solver evaluates at (by identity, else by value)."""
    for k, v in enumerate(xi):
        if v is sigma:
            return k
    f = float(sigma)
    for k, v in enumerate(xi):
        if float(v) == f:
            return k
    raise InputError(f"ld3's base {base} evaluated the network at sigma {f:.6g}, off its grid")
