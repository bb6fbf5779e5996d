"""Metric registry: name -> metric. A metric maps a `bench.models.Cell` (all samples of a cell) to one number."""
from __future__ import annotations

import importlib

from .base import Metric
from solvers.errors import InputError

_REGISTRY: dict[str, str] = {
    "fd_exact": "bench.metrics.analytic:FDExact",
    "endpoint_error": "bench.metrics.analytic:EndpointError",
    "fd_digits": "bench.metrics.digits:FDDigits",
    "fd_pixels": "bench.metrics.digits:FDPixels",
    "fid": "bench.metrics.fid:FID",
    "fid_30k": "bench.metrics.fid:fid_30k",
    "clip_score": "bench.metrics.clip_score:CLIPScore",
    "clip_score_b16": "bench.metrics.clip_score:clip_score_b16",
    "hpsv2": "bench.metrics.hpsv2:HPSv21",
    "image_reward": "bench.metrics.image_reward:ImageReward",
}


def register(name: str, target: str) -> None:
    _REGISTRY[name] = target


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str, **options) -> Metric:
    if name not in _REGISTRY:
        raise InputError(f"unknown metric {name!r}; accepted: {', '.join(_REGISTRY)}")
    module, attr = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)(**options)


__all__ = ["Metric", "get", "names", "register"]
