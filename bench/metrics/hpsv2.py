"""HPSv2.1 (Wu et al. 2023, "Human Preference Score v2") computed through OpenCLIP from the HPS checkpoint.

HPSv2.1 is OpenCLIP ViT-H-14 fine-tuned on human preference pairs; its score for (image, prompt) is the cosine of
the normalised image and text embeddings (hpsv2's img_score.py: diag(image_features @ text_features.T), no logit
scale), so the paper's Table 3 values are around 0.27-0.29. The hpsv2 wheel cannot serve here: it lacks its
tokenizer vocabulary (bpe_simple_vocab_16e6.txt.gz; OpenCLIP bundles the same file) and reloads the checkpoint on
every call. We build the same network with OpenCLIP (`ViT-H-14`, no pretrained tag), load
`HPS_v2.1_compressed.pt` (`{"state_dict": ...}`) strictly, tokenize with OpenCLIP's ViT-H-14 tokenizer, and
preprocess images exactly as hpsv2's validation transform does, which differs from OpenCLIP's: the image becomes a
float tensor first and is then resized on the tensor (torch bicubic, antialiased, short side to 224), centre
cropped and CLIP-normalised (OpenCLIP resizes the PIL image; the two differ by up to ~0.5 in normalised pixels).
The network is loaded once per metric and scores in batches.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .text_image import PromptImageMetric, entry_requirement, open_clip_weights, require


def load_hps(path, arch: str = "ViT-H-14", device: str = "cpu"):
    """(model, preprocess, tokenizer): OpenCLIP `arch` with the HPS checkpoint's weights."""
    import open_clip
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, device="cpu")
    open_clip_weights(model, path, "HPS checkpoint")
    return model.to(device).eval(), preprocess, open_clip.get_tokenizer(arch)


def hps_preprocess(image, size) -> torch.Tensor:
    """hpsv2's preprocess_val: ToTensor, then Resize(short side, bicubic, antialias) on the tensor, CenterCrop,
    Normalize(CLIP mean, std)."""
    import numpy as np
    import torchvision.transforms.functional as TF
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = TF.resize(x, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [size, size])
    return TF.normalize(x, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


class HPSv21(PromptImageMetric):
    name = "hpsv2"
    label = "HPSv2.1"

    def __init__(self, weights=None, arch: str = "ViT-H-14", batch_size: int = 16, device: str = "cpu"):
        super().__init__(batch_size, device)
        self.weights = weights
        self.arch = arch

    def requirements(self, model):
        return [entry_requirement("hpsv2.1", self.weights)]

    def load(self):
        return load_hps(require(self.requirements(None)[0]).path, self.arch, self.device)

    def score(self, images: list, prompts: Sequence[str]) -> torch.Tensor:
        model, _, tokenizer = self.scorer()
        pixels = torch.stack([hps_preprocess(im, model.visual.image_size) for im in images]).to(self.device)
        img = torch.nn.functional.normalize(model.encode_image(pixels).double(), dim=-1)
        tokens = tokenizer(list(prompts)).to(self.device)
        txt = torch.nn.functional.normalize(model.encode_text(tokens).double(), dim=-1)
        return (img * txt).sum(dim=-1)
