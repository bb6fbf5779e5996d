"""Distances between student and teacher outputs (paper Eq. 10's dist(., .)), pluggable by name or callable.

A distance takes (student, teacher), two tensors of shape (B, ...), and returns one value per sample, shape (B,);
the training loss is its batch mean. "mse" (the default, the paper's choice for latent models) is built in; other
code registers more, e.g. an Inception-feature distance for pixel images:

    from bench.distill import losses
    losses.register("inception", my_feature_mse)
    distill("dyweight", model, sigmas, loss="inception")
"""
from __future__ import annotations

from typing import Callable

import torch

from solvers.errors import InputError
from solvers.registry import Registry

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample: mean over every non-batch dimension of (student - teacher)^2."""
    return (student - teacher).pow(2).flatten(1).mean(1)


def relative_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||student - teacher|| / ||teacher|| per sample: the analytic models' endpoint-error metric as a distance
    (bench.metrics.analytic.relative_l2; an ablation of the distance in the `distill_study` grid)."""
    from bench.metrics.analytic import relative_l2 as formula
    return formula(student, teacher)


def inception(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The paper's pixel-space distance: per-sample MSE of TF-Inception pool features of images in [-1, 1]
    (bench.metrics.features.inception_feature_mse; the network file is loaded once per device, on first use).
    It reads images: for latent models the distillation decodes both sides first (`reads_images`)."""
    from bench.metrics.features import inception_feature_mse
    return inception_feature_mse(student, teacher)


inception.reads_images = True


def reads_images(distance) -> bool:
    """Whether a distance compares decoded images (attribute `reads_images = True` on the callable) rather than
    the model's states; the distillation then decodes student and teacher with the model's decoder."""
    return bool(getattr(distance, "reads_images", False))


REGISTRY = Registry("loss", {"mse": mse, "relative_l2": relative_l2, "inception": inception})


def register(name: str, distance: Distance) -> None:
    """Make `distance(student, teacher) -> (B,)` available as loss=<name> (set `distance.reads_images = True` for
    one that compares decoded images)."""
    if not callable(distance):
        raise InputError(f"distance {name!r} must be callable as distance(student, teacher) -> per-sample tensor")
    REGISTRY.register(name, distance)


def names() -> list[str]:
    return REGISTRY.names()


def get(loss) -> tuple[str, Distance]:
    """(name, distance) for a registered name or a callable (named after its __name__)."""
    if callable(loss):
        return getattr(loss, "__name__", type(loss).__name__), loss
    if isinstance(loss, str) and loss in REGISTRY:
        return loss, REGISTRY.load(loss)
    raise InputError(f"unknown loss {loss!r}; accepted: {', '.join(REGISTRY.names())} or a callable "
                     "distance(student, teacher) -> per-sample tensor")


def per_sample(distance: Distance, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Call a distance and check it returned one finite-shaped value per sample."""
    d = distance(student, teacher)
    if not isinstance(d, torch.Tensor) or d.shape != (student.shape[0],):
        got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
        raise InputError(f"a distance must return one value per sample, shape ({student.shape[0]},); got {got}")
    return d
