"""The official EDM checkpoints (Karras et al. 2022): CIFAR-10, FFHQ, AFHQv2 and class-conditional ImageNet-64.

The pickled network (key "ema") is the EDM denoiser: net(x, sigma, class_labels) = D(x; sigma), with
c_skip/c_out/c_in/c_noise preconditioning inside. bench.models.edm_pickle reads the pickle as data (class names,
constructor arguments, tensors) and builds the project's own implementation of the network (bench.nets.edm); the
source the pickle carries never runs. The paper samples on the polynomial grid (rho = 7) over
[0.002, 80] and uses the analytical first step for these models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from bench import weights
from solvers.errors import InputError

from . import conditions, devices
from .base import Bottleneck, Model


class EDMModel(Model):
    sigma_min = 0.002
    sigma_max = 80.0
    schedule = "polynomial"
    schedule_options = {"rho": 7.0}

    batch_hint = 250

    def __init__(self, name: str, weights_name: str, shape: tuple, label_dim: int = 0, released_key: str | None = None,
                 description: str = "", path: str | Path | None = None, device: str | None = None,
                 distill_lr: float | None = None, parameters: float = 0.0, network: torch.nn.Module | None = None):
        """`network`: an EDM preconditioned network given in memory (a stand-in, bench.standins) instead of the
        pickle at `path`."""
        self.name = name
        self.nominal_parameters = {"network": parameters}
        self.distill_lr = distill_lr
        self.weights_name = weights_name
        self.shape = tuple(shape)
        self.label_dim = label_dim
        self.released_key = released_key
        self.description = description
        self.device = devices.device(device)
        self._path = Path(path).expanduser() if path else None
        self._net = None
        self._given = network                # moved to the device on first use (after torchrun picked the GPU)
        if network is not None:
            self._check_shape(network, "the given network")

    # ---- files ---------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path or weights.path(self.weights_name)

    def requirements(self):
        if self._given is not None:
            return []
        req = weights.requirement(self.weights_name)
        req.path = self.path
        return [req]

    def network(self) -> torch.nn.Module:
        """The EDM network (loaded once): checks it is an EDM preconditioned net of the expected shape."""
        if self._net is None and self._given is not None:
            self._net = self._given.eval().requires_grad_(False).to(self.device)
        if self._net is None:
            self.check_available()
            from . import edm_pickle
            net = edm_pickle.load_network(self.path)
            self._check_shape(net, str(self.path))
            self._net = net.eval().requires_grad_(False).to(self.device)
        return self._net

    def networks(self) -> list:
        return [self._net] if self._net is not None else []

    def preflight(self) -> None:
        self.network()

    def _check_shape(self, net, where: str) -> None:
        got = (int(net.img_channels), int(net.img_resolution), int(net.img_resolution))
        if got != self.shape or int(getattr(net, "label_dim", 0)) != self.label_dim:
            raise InputError(f"{where}: network is {got} with label_dim {getattr(net, 'label_dim', 0)}, "
                             f"but model {self.name!r} expects {self.shape} with label_dim {self.label_dim}")

    # ---- what the runner calls --------------------------------------------------------------------------------
    def conditions(self, seeds: Sequence[int]):
        """One-hot ImageNet labels drawn per seed (None for the unconditional models)."""
        if not self.label_dim:
            return None
        return conditions.one_hot(conditions.class_labels(seeds, self.label_dim), self.label_dim).to(self.device)

    def denoiser(self, cond=None):
        """D(x, sigma); its `features` expose the network's bottleneck (`bottleneck_module`) to learned solvers
        that read it."""
        net = self.network()
        labels = cond
        module = bottleneck_module(net, labels is not None)
        features = Bottleneck(module) if module is not None else None

        def D(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
            s = s.expand(x.shape[0]) if s.numel() == 1 else s
            call = lambda: net(x.to(torch.float32), s, class_labels=labels)  # noqa: E731
            return (features.around(x.shape[0], call) if features is not None else call()).to(x.dtype)

        D.features = features
        return D

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """EDM networks work in image space scaled to [-1, 1]; samples are clipped to it."""
        return x.clamp(-1, 1)


def bottleneck_module(net: torch.nn.Module, conditional: bool) -> torch.nn.Module | None:
    """The module whose output AMED-Solver's official predictor reads: EDM's encoder block `8x8_block3`
    (unconditional SongUNet) or `8x8_block2` (class-conditional DhariwalUNet), solvers_amed.py `init_hook`;
    None when the network has no such block."""
    enc = getattr(getattr(net, "model", None), "enc", None)
    key = "8x8_block2" if conditional else "8x8_block3"
    return enc[key] if enc is not None and key in enc else None


MiB = 2 ** 20
INCEPTION_LOSS_BYTES = 256 * MiB    # TF-Inception's saved activations per 299x299 image (an estimate; runs probe it)


def _factory(name, weights_name, shape, label_dim, released_key, description, distill_lr, parameters, activation):
    def make(**options) -> EDMModel:
        options.setdefault("distill_lr", distill_lr)
        options.setdefault("parameters", parameters)
        m = EDMModel(name, weights_name, shape, label_dim, released_key, description, **options)
        m.activation_bytes, m.loss_bytes = int(activation * MiB), INCEPTION_LOSS_BYTES
        return m
    make.__doc__ = description
    return make


# The last three arguments: the DyWeight learning rate of the lineage for the dataset (docs/solver-conventions.md,
# "Training"), the network's parameter count (EDM's DDPM++ at 32 and 64 px, ADM at 64 px) and the activations one
# network call saves per sample in float32 training, in MiB (measured on the real architectures with random
# weights through a saved-tensor hook): the memory estimates of `--dry-run`.
cifar10 = _factory("cifar10", "edm-cifar10", (3, 32, 32), 0, "cifar10", "EDM CIFAR-10 32x32 (unconditional, VP)", 3e-2,
                   55.7e6, 113)
ffhq = _factory("ffhq", "edm-ffhq", (3, 64, 64), 0, "ffhq", "EDM FFHQ 64x64 (unconditional, VP)", 1e-2, 61.8e6, 292)
afhqv2 = _factory("afhqv2", "edm-afhqv2", (3, 64, 64), 0, "afhqv2", "EDM AFHQv2 64x64 (unconditional, VP)", 1e-2,
                  61.8e6, 292)
imagenet64 = _factory("imagenet64", "edm-imagenet64", (3, 64, 64), 1000, "imagenet64",
                      "EDM ImageNet 64x64 (class-conditional, ADM)", 5e-3, 295.9e6, 645)
