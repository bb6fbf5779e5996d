"""Model registry: name -> adapter. Heavy adapters are imported only when asked for."""
from __future__ import annotations

from solvers.registry import Registry

from .base import Cell, Model, Requirement, noise

# name -> "module:factory"; the factory takes keyword options and returns a Model
REGISTRY = Registry("model", {
    "gmm2d": "bench.models.gmm:gmm2d",
    "gmm64": "bench.models.gmm:gmm64",
    "gmm_scales": "bench.models.gmm:gmm_scales",
    "digits": "bench.models.digits:digits",
    "digits_centred": "bench.models.digits:digits_centred",
    "cifar10": "bench.models.edm:cifar10",
    "ffhq": "bench.models.edm:ffhq",
    "afhqv2": "bench.models.edm:afhqv2",
    "imagenet64": "bench.models.edm:imagenet64",
    "lsun_bedroom": "bench.models.latent:lsun_bedroom",
    "sd15": "bench.models.latent:sd15",
    "flux": "bench.models.flux:flux",
    "flux_drawbench": "bench.models.flux:flux_drawbench",
    # random-weight stand-ins of the real architectures, scaled down (bench/standins.py; `bench gpu-check`)
    "standin_edm": "bench.standins:edm",
    "standin_edm_cond": "bench.standins:edm_cond",
    "standin_lsun": "bench.standins:lsun",
    "standin_sd": "bench.standins:sd",
    "standin_flux": "bench.standins:flux",
})


def register(name: str, target: str) -> None:
    REGISTRY.register(name, target)


def names() -> list[str]:
    return REGISTRY.names()


def get(name: str, **options) -> Model:
    return REGISTRY.load(name)(**options)


__all__ = ["Model", "Cell", "Requirement", "noise", "get", "names", "register"]
