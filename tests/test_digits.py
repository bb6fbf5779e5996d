"""The shipped digits model: weights load and sample, the classifier is accurate, the FD metrics behave."""
from __future__ import annotations

import math

import pytest
import torch

import solvers
from bench import metrics, models
from bench.metrics import digits as M
from bench.models.base import Cell
from bench.models.digits import load_classifier
from bench.nets import data
from bench.nets.train import accuracy


@pytest.fixture(scope="module")
def model():
    return models.get("digits")


def test_data_split_is_fixed_and_disjoint():
    x_train, y_train = data.digits("train")
    x_held, y_held = data.digits("heldout")
    assert x_train.shape == (1297, 1, 16, 16) and x_held.shape == (500, 1, 16, 16)
    assert x_train.min() >= -1 and x_train.max() <= 1
    assert torch.equal(data.digits("heldout")[0], x_held)                      # deterministic
    # no held-out image is a training image
    d = torch.cdist(x_held.flatten(1), x_train.flatten(1)).min(1).values
    assert (d > 0).float().mean() > 0.99
    with pytest.raises(ValueError, match="accepted: train, heldout, all"):
        data.digits("test")


def test_shipped_weights_load_and_sample(model):
    assert model.shape == (1, 16, 16) and model.requirements()[0].present
    seeds = range(6)
    solver = solvers.get("ipndm")
    sigmas = model.grid(solver.num_points(5, afs=True))
    with torch.no_grad():
        x = solver.sample(model.denoiser(), model.noise(seeds), sigmas, afs=True)
    assert x.shape == (6, 1, 16, 16) and torch.isfinite(x).all()
    img = model.decode(x)
    assert img.min() >= -1 and img.max() <= 1
    # D is the EDM denoiser: at sigma_min it (nearly) returns its input
    y = data.digits("heldout")[0][:4]
    out = model.denoiser()(y, torch.full((4,), 0.002))
    assert (out - y).abs().max() < 0.05


def test_denoiser_is_differentiable_in_x(model):
    """Distillation backpropagates through D; the frozen weights get no gradient."""
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    model.denoiser()(x, torch.full((2,), 1.0)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is None for p in model.network().parameters())


def test_classifier_accuracy_on_heldout_digits():
    x, y = data.digits("heldout")
    assert accuracy(load_classifier(), x, y) > 0.95


def test_fd_real_vs_real_small_noise_large():
    x_train, _ = data.digits("train")
    x_held, _ = data.digits("heldout")
    noise = torch.randn(500, 1, 16, 16, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    assert M.fd_features(x_held) < 1e-6 and M.fd_pixel_space(x_held) < 1e-9     # identical statistics
    real, far = M.fd_features(x_train), M.fd_features(noise)
    assert real < 0.05 * far, (real, far)
    real_px, far_px = M.fd_pixel_space(x_train), M.fd_pixel_space(noise)
    assert real_px < 0.02 * far_px, (real_px, far_px)


def test_metrics_registered(model):
    gmm = models.get("gmm64")
    for name in ("fd_digits", "fd_pixels"):
        metric = metrics.get(name)
        assert metric.supports(model) and not metric.supports(gmm)
        assert "FID" not in metric.label or "analogue" in metric.label
        value = metric.compute(Cell(model=model, samples=data.digits("train")[0][:200]))
        assert math.isfinite(value) and value >= 0
        with pytest.raises(ValueError, match="16x16"):
            metric.compute(Cell(model=model, samples=torch.zeros(4, 3, 16, 16)))


def test_teacher_far_better_than_three_step_euler(model):
    """Sample quality is real: the 35-step teacher's FD-digits is far below 3-step Euler's (same seeds)."""
    seeds = range(128)
    den = model.denoiser()
    with torch.no_grad():
        teacher = solvers.get("ipndm").sample(den, model.noise(seeds), model.grid(36), denoise_to_zero=True)
        euler = solvers.get("euler")
        cheap = euler.sample(den, model.noise(seeds), model.grid(euler.num_points(3, afs=True)), afs=True)
    fd_teacher, fd_euler = M.fd_features(model.decode(teacher)), M.fd_features(model.decode(cheap))
    assert fd_teacher < 0.5 * fd_euler, (fd_teacher, fd_euler)
