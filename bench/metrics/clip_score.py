"""CLIP score through OpenCLIP, from local weights.

    CLIP score = mean over samples of 100 * cos(E_img(image), E_txt(prompt))

This is the convention of the paper's evaluation code (DyWeight's eval/clip_score.py and its FLUX clipscore.py):
the cosine is NOT clipped at zero, unlike Hessel et al.'s CLIPScore (w * max(cos, 0)) and torchmetrics; pass
`clip_negative=True` for that variant. Images go through the backbone's own PIL preprocessing (resize the short side
to 224 bicubic, centre crop, CLIP normalisation), prompts through its tokenizer (77 tokens, truncated).

Backbones (the paper's text does not name one; its released code does):
  * `clip_score`        OpenCLIP ViT-g-14, laion2b_s34b_b88k: the SD-v1.5 evaluation (Table 1f, Table 4);
  * `clip_score_b16`    OpenAI CLIP ViT-B/16 (OpenCLIP port, QuickGELU): the FLUX evaluation (Tables 2, 3).
"""
from __future__ import annotations

from typing import Sequence

import torch

from solvers.errors import InputError

from .text_image import PromptImageMetric, entry_requirement, open_clip_weights, require

BACKBONES = {
    # name: (OpenCLIP architecture, weights entry, force QuickGELU)
    "ViT-g-14": ("ViT-g-14", "clip-vit-g-14", False),
    "ViT-B-16-openai": ("ViT-B-16", "clip-vit-b-16-openai", True),
}


def load_open_clip(arch: str, weights, device: str = "cpu", quick_gelu: bool = False):
    """(model, image preprocess, tokenizer) of an OpenCLIP architecture with weights from a local file.

    The weights are read with torch's weights-only loader (text_image.open_clip_weights), not OpenCLIP's own
    loader, so the file cannot run code; the tokenizer is OpenCLIP's bundled BPE vocabulary; nothing is fetched.
    """
    import open_clip
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, device="cpu",
                                                                 force_quick_gelu=quick_gelu)
    open_clip_weights(model, weights)
    return model.to(device).eval(), preprocess, open_clip.get_tokenizer(arch)


class CLIPScore(PromptImageMetric):
    name = "clip_score"
    label = "CLIP score"

    def __init__(self, backbone: str = "ViT-g-14", weights=None, arch: str | None = None,
                 clip_negative: bool = False, batch_size: int = 32, device: str = "cpu"):
        super().__init__(batch_size, device)
        if arch is None and backbone not in BACKBONES:
            raise InputError(f"unknown CLIP backbone {backbone!r}; accepted: {', '.join(BACKBONES)} "
                             f"(or arch=<OpenCLIP architecture> with weights=<local file>)")
        if arch is not None and weights is None:
            raise InputError(f"arch={arch!r} needs weights=<local OpenCLIP checkpoint file>")
        self.arch, self.entry, self.quick_gelu = (arch, arch, False) if arch else BACKBONES[backbone]
        self.weights = weights
        self.clip_negative = clip_negative
        self.label = f"CLIP score ({backbone if arch is None else arch})"

    def requirements(self, model):
        return [entry_requirement(self.entry, self.weights)]

    def load(self):
        path = require(entry_requirement(self.entry, self.weights)).path
        return load_open_clip(self.arch, path, self.device, self.quick_gelu)

    def score(self, images: list, prompts: Sequence[str]) -> torch.Tensor:
        model, preprocess, tokenizer = self.scorer()
        pixels = torch.stack([preprocess(im) for im in images]).to(self.device)
        img = model.encode_image(pixels)
        txt = model.encode_text(tokenizer(list(prompts)).to(self.device))
        cos = torch.nn.functional.cosine_similarity(img.double(), txt.double(), dim=-1)
        return 100 * (cos.clamp(min=0) if self.clip_negative else cos)


def clip_score_b16(**options) -> CLIPScore:
    options.setdefault("backbone", "ViT-B-16-openai")
    return CLIPScore(**options)
