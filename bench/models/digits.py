"""The shipped trained network: a small EDM-preconditioned UNet on scikit-learn's digits (16x16, [-1, 1]).

A real learned denoiser that runs anywhere in milliseconds, so solver behaviour is measured on learned (not
Gaussian-mixture) dynamics without downloads. Weights: bench/assets/digits/unet.pt, made by
`python -m bench train-model digits-unet --out bench/assets/digits` (record in unet.json beside it);
FEWSTEP_DIGITS_DIR=<dir> (or get("digits", weights_dir=...)) points at a retrained copy. Sampled like EDM:
polynomial grid (rho = 7) over [0.002, 80]. Its metrics are fd_digits and fd_pixels (bench/metrics/digits.py).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

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

    def __init__(self, weights_dir: str | Path | None = None):
        self.dir = Path(weights_dir).expanduser() if weights_dir else None
        self._net = None

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
        """Identity of the weights for teacher caches: the weights file's SHA-256."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:24]

    def denoiser(self, cond=None):
        # The network's parameters are frozen, but D stays differentiable in x (distillation backpropagates).
        return self.network()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1]."""
        return x.float().clamp(-1, 1)


def digits(weights_dir: str | Path | None = None) -> Digits:
    return Digits(weights_dir)
