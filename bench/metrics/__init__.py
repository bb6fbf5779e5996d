"""Metric registry: name -> metric. A metric maps a `bench.models.Cell` (all samples of a cell) to one number."""
from __future__ import annotations

from solvers.errors import InputError
from solvers.registry import Registry

from .base import Metric

REGISTRY = Registry("metric", {
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
})


def register(name: str, target: str) -> None:
    REGISTRY.register(name, target)


def names() -> list[str]:
    return REGISTRY.names()


def get(name: str, **options) -> Metric:
    return REGISTRY.load(name)(**options)


def build(name: str, options: dict, where: str = "") -> Metric:
    """`get(name, **options)` with one-line errors naming the options the metric accepts."""
    import inspect
    if name not in REGISTRY:
        raise InputError(f"{where + ': ' if where else ''}{REGISTRY.unknown(name)}")
    factory = REGISTRY.load(name)
    params = inspect.signature(factory).parameters
    accepted = [p for p in params if p != "self"]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())   # a factory passing options on
    unknown = [] if open_ended else [k for k in options if k not in accepted]
    if unknown:
        raise InputError(f"{where + ': ' if where else ''}metric {name!r} has no option "
                         f"{', '.join(map(repr, unknown))}; accepted: {', '.join(accepted) or '(none)'}")
    try:
        return factory(**options)
    except TypeError as err:
        raise InputError(f"{where + ': ' if where else ''}metric {name!r} does not take options {options}: "
                         f"{err}") from None


def identity(name: str, options: dict) -> dict:
    """What determines a metric's value besides the samples: its name and the options that change its value (all
    but the metric class's `neutral_options`, such as its batch size and device)."""
    neutral = getattr(REGISTRY.load(name), "neutral_options", ())
    return {"metric": name, "options": {k: v for k, v in sorted(options.items()) if k not in neutral}}


__all__ = ["Metric", "build", "get", "identity", "names", "register"]
