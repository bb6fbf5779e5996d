"""The shipped trained network: a small EDM-preconditioned UNet on scikit-learn's digits (16x16, [-1, 1]).

A real learned denoiser that runs anywhere in milliseconds, so solver behaviour is measured on learned (not
Gaussian-mixture) dynamics without downloads. Weights: bench/assets/digits/unet.pt, made by
`python -m bench train-model digits-unet --out bench/assets/digits` (record in unet.json beside it);
FEWSTEP_DIGITS_DIR=<dir> (or get("digits", weights_dir=...)) points at a retrained copy. Sampled like EDM:
polynomial grid (rho = 7) over [0.002, 80]. Its metrics are fd_digits, fd_pixels (bench/metrics/digits.py) and
the endpoint error against the teacher (`reference`).

AFS and the data mean. The analytical first step takes D(x_T, sigma_max) = E[x], which the solvers write as 0:
true for centred data, not for the digits, whose mean image has a norm near 10 (mean pixel about -0.4). With
`centred = true` (the registered model `digits_centred`) the model presents itself in mean-centred coordinates
x' = x - mu, where mu is the training split's mean image:

    x'_T = x_T - mu,     D'(x', sigma) = D(x' + mu, sigma) - mu,     decode(x') = clamp(x' + mu, -1, 1).

This is the same ODE (x' + mu follows the original trajectory from x_T exactly), so every solver without AFS
gives the same samples as on `digits`; with AFS, D'(x'_T) = 0 is D(x_T) = mu, the data mean. `digits` keeps the
uncentred reading (AFS substitutes 0).

Reference and noise floors. `reference(seeds, ...)` is the teacher's solution from each seed's x_T: iPNDM with
`teacher_steps` = 35 steps (bench.distill's teacher), no AFS, on the model's grid, cached on disk; the endpoint
error of a cell is measured against it and it is the "teacher" noise floor. The "real" floor is the training
split's images (seed s -> training image s mod 1,297, so at most 1,297 distinct ones): the real-vs-real score
at the cell's sample count against the held-out 500 the FD metrics read.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from solvers import schedules
from solvers.errors import InputError

from .base import Model, Requirement

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "digits"
ENV = "FEWSTEP_DIGITS_DIR"


def weights_dir() -> Path:
    return Path(os.environ[ENV]).expanduser() if os.environ.get(ENV) else ASSETS


def load_state(path: Path) -> dict:
    """{"config", "state_dict"} of a weights file written by bench.nets.train.save (float16 -> float32)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    data["state_dict"] = {k: (v.float() if v.is_floating_point() else v) for k, v in data["state_dict"].items()}
    return data


def load_unet(path: Path | None = None):
    from bench.nets.unet import EDMPrecond

    data = load_state(Path(path) if path else weights_dir() / "unet.pt")
    net = EDMPrecond.from_config(data["config"])
    net.load_state_dict(data["state_dict"])
    return net.eval().requires_grad_(False)


def load_classifier(path: Path | None = None):
    from bench.nets.classifier import DigitsClassifier

    data = load_state(Path(path) if path else weights_dir() / "classifier.pt")
    net = DigitsClassifier(**data["config"])
    net.load_state_dict(data["state_dict"])
    return net.eval().requires_grad_(False)


class Digits(Model):
    name = "digits"
    description = "EDM-preconditioned UNet trained here on scikit-learn digits (16x16, 1 channel), shipped"
    sigma_min = 0.002
    sigma_max = 80.0
    shape = (1, 16, 16)
    schedule = "polynomial"
    schedule_options = {"rho": 7.0}

    floor_sources = {"teacher": "Teacher (iPNDM, 35 steps)", "real": "Real digits (training split)"}
    teacher_steps = 35
    threads = 1                                   # tiny problems: one torch thread is fastest beside other work

    def __init__(self, weights_dir: str | Path | None = None, centred: bool = False):
        if not isinstance(centred, bool):
            raise InputError(f"digits: centred must be true or false, got {centred!r}")
        self.dir = Path(weights_dir).expanduser() if weights_dir else None
        self.centred = centred
        if centred:
            self.name = "digits_centred"
        self._net = None
        self._mu = None

    def data_mean(self) -> torch.Tensor:
        """mu, the mean image of the training split (1, 16, 16); zero unless `centred` (the coordinates' origin)."""
        if self._mu is None:
            if self.centred:
                from bench.nets import data
                self._mu = data.digits("train")[0].mean(0).float()
            else:
                self._mu = torch.zeros(self.shape)
        return self._mu

    @property
    def path(self) -> Path:
        return (self.dir or weights_dir()) / "unet.pt"

    def requirements(self) -> list[Requirement]:
        return [Requirement("digits-unet", self.path, env=ENV,
                            description="the digits UNet weights (shipped in bench/assets/digits; "
                                        "retrain with `python -m bench train-model digits-unet`)")]

    def network(self):
        if self._net is None:
            self.check_available()
            self._net = load_unet(self.path)
        return self._net

    def cache_key(self) -> str:
        """Identity of the weights (the file's SHA-256) and of the coordinates, for teacher caches."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:24] + ("-centred" if self.centred else "")

    def noise(self, seeds):
        x = super().noise(seeds)
        return x - self.data_mean().to(x) if self.centred else x

    def denoiser(self, cond=None):
        # The network's parameters are frozen, but D stays differentiable in x (distillation backpropagates).
        net = self.network()
        if not self.centred:
            return net
        mu = self.data_mean()
        return lambda x, sigma: net(x + mu.to(x), sigma) - mu.to(x)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1]."""
        return (x.float() + self.data_mean().to(x.device)).clamp(-1, 1) if self.centred else x.float().clamp(-1, 1)

    def data_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.data_mean().to(x) if self.centred else x

    # --- reference and noise floors ----------------------------------------------------------------
    def reference(self, seeds, sigma_start: float, sigma_end: float, cache_dir=None) -> torch.Tensor:
        """The teacher's final states (CPU, float64) from x_T = noise(seeds) over [sigma_start, sigma_end]
        (module doc), solved in batches of `batch_hint` and cached under `cache_dir`/reference."""
        import solvers
        seeds = [int(s) for s in seeds]
        h = hashlib.sha256(f"{self.cache_key()}|{sigma_start!r}|{sigma_end!r}|ipndm-{self.teacher_steps}|"
                           f"{','.join(map(str, seeds))}".encode()).hexdigest()[:20]

        def solve():
            grid = schedules.get(self.schedule, self.teacher_steps + 1, float(sigma_end), float(sigma_start),
                                 **self.schedule_options)
            teacher, den = solvers.get("ipndm"), self.denoiser()
            with torch.no_grad():
                return torch.cat([teacher.sample(den, self.noise(seeds[i:i + self.batch_hint]), grid).double().cpu()
                                  for i in range(0, len(seeds), self.batch_hint)])
        return self.cached_reference(h, cache_dir, solve)

    def floor_samples(self, source: str, seeds, sigma_start: float, sigma_end: float, cache_dir=None):
        """Final states (in the model's coordinates) of a noise-floor source (`floor_sources`) for `seeds`."""
        if source == "teacher":
            return self.reference(seeds, sigma_start, sigma_end, cache_dir)
        if source == "real":
            from bench.nets import data
            x = data.digits("train")[0]
            self.check_floor(source, len(seeds))
            return x[[int(s) % len(x) for s in seeds]] - self.data_mean()
        return super().floor_samples(source, seeds, sigma_start, sigma_end, cache_dir)

    def check_floor(self, source: str, count: int) -> None:
        super().check_floor(source, count)
        from bench.nets import data
        n = len(data.digits("train")[0])
        if source == "real" and count > n:
            raise InputError(f"{self.name}: the real-data floor has {n} training digits, fewer than the {count} "
                             "samples a cell draws (lower num_samples x replicas, or drop the \"real\" floor)")


def digits(weights_dir: str | Path | None = None, centred: bool = False) -> Digits:
    return Digits(weights_dir, centred)


def digits_centred(weights_dir: str | Path | None = None) -> Digits:
    """The digits network in mean-centred coordinates (AFS takes D(x_T) = the data mean; module doc)."""
    return Digits(weights_dir, centred=True)
