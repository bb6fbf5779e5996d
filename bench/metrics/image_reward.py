"""ImageReward (Xu et al. 2023) computed from its checkpoint with our own module: no hub, no image-reward package.

The image-reward package cannot serve here: it fetches the bert-base-uncased tokenizer (and med_config.json) from a
hub at load time and pins an old stack (timm 0.6.13, transformers 4.46, fairscale). The score it computes is

    image_embeds = ViT-L/16(image)                                  # BLIP visual encoder, LayerNorm eps 1e-6
    h = BERT(prompt tokens, cross-attending to image_embeds)        # BLIP text encoder (med.py), eps 1e-12
    reward = (MLP(h[:, 0]) - 0.16717362830052426) / 1.0333394966054072

with prompts tokenized by BERT's uncased WordPiece (padding to 35 tokens, truncated; [CLS] first, no [ENC]
substitution) and images preprocessed as CLIP does (resize the short side to 224 bicubic, centre crop, CLIP mean/std).
Both BLIP halves are the architectures transformers ships as BlipVisionModel / BlipTextModel (ported from the same
BLIP code), so we build those, copy ImageReward.pt's weights in by name, and read the WordPiece vocabulary from a
local vocab.txt. The same checkpoint thus gives the same score (checked against an independent transcription of the
formula in tests/test_metrics_real_imagereward.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from solvers.errors import InputError

from .text_image import PromptImageMetric, entry_requirement, require

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_TOKENS = 35
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_DIM = 64          # BLIP's ViT-B/L and BERT-base all use 64-d attention heads; heads = width // 64


def reward_head(sizes: Sequence[int]) -> torch.nn.Sequential:
    """ImageReward's MLP: Linear layers with Dropout between the first four (identity in eval), keys mlp.layers.*"""
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < 3:
            layers.append(torch.nn.Dropout(0.0))
    return torch.nn.Sequential(*layers)


def _count(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def vision_weights(state: dict) -> dict:
    """BLIP ViT keys (blip.visual_encoder.*) -> transformers BlipVisionModel keys."""
    p = "blip.visual_encoder."
    out = {"embeddings.class_embedding": state[p + "cls_token"],
           "embeddings.position_embedding": state[p + "pos_embed"],
           "embeddings.patch_embedding.weight": state[p + "patch_embed.proj.weight"],
           "embeddings.patch_embedding.bias": state[p + "patch_embed.proj.bias"],
           "post_layernorm.weight": state[p + "norm.weight"], "post_layernorm.bias": state[p + "norm.bias"]}
    names = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
             "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for i in range(_count(state, p + "blocks.")):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                out[f"encoder.layers.{i}.{theirs}.{kind}"] = state[f"{p}blocks.{i}.{ours}.{kind}"]
    return out


def text_weights(state: dict) -> dict:
    """BLIP med.py BertModel keys (blip.text_encoder.*) already match transformers BlipTextModel."""
    p = "blip.text_encoder."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p) and not k.endswith("position_ids")}


def build_reward_model(state: dict):
    """(vision, text, mlp) modules with ImageReward.pt's weights; sizes are read from the checkpoint."""
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    v = "blip.visual_encoder."
    width = state[v + "cls_token"].shape[-1]
    patch = state[v + "patch_embed.proj.weight"].shape[-1]
    grid = int(round((state[v + "pos_embed"].shape[1] - 1) ** 0.5))
    vision = BlipVisionModel(BlipVisionConfig(
        hidden_size=width, intermediate_size=state[v + "blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(state, v + "blocks."), num_attention_heads=width // HEAD_DIM,
        image_size=grid * patch, patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu"))

    t = "blip.text_encoder."
    words = state[t + "embeddings.word_embeddings.weight"]
    hidden = words.shape[1]
    text = BlipTextModel(BlipTextConfig(
        vocab_size=words.shape[0], hidden_size=hidden, num_hidden_layers=_count(state, t + "encoder.layer."),
        num_attention_heads=hidden // HEAD_DIM,
        intermediate_size=state[t + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state[t + "embeddings.position_embeddings.weight"].shape[0],
        encoder_hidden_size=width, layer_norm_eps=1e-12, hidden_act="gelu", is_decoder=True,
        bos_token_id=None, sep_token_id=None, pad_token_id=0, eos_token_id=None), add_pooling_layer=False)

    m = "mlp.layers."
    linear = sorted({int(k[len(m):].split(".")[0]) for k in state if k.startswith(m)})
    sizes = [state[f"{m}{linear[0]}.weight"].shape[1]] + [state[f"{m}{i}.weight"].shape[0] for i in linear]
    mlp = reward_head(sizes)

    vision.load_state_dict(vision_weights(state), strict=True)
    text.load_state_dict(text_weights(state), strict=True)
    mlp.load_state_dict({k[len("mlp.layers."):]: v for k, v in state.items() if k.startswith(m)}, strict=True)
    return vision.eval(), text.eval(), mlp.eval()


def blip_tokenizer(vocab_file):
    """BLIP's tokenizer from a local bert-base-uncased vocab.txt, with its two added tokens [DEC] and [ENC]."""
    import inspect

    from transformers import BertTokenizer
    if "vocab_file" in inspect.signature(BertTokenizer.__init__).parameters:      # transformers 4.x
        tokenizer = BertTokenizer(vocab_file=str(vocab_file), do_lower_case=True)
    else:                                                                       # 5.x takes the vocabulary itself
        lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        tokenizer = BertTokenizer(vocab={token.strip(): i for i, token in enumerate(lines)}, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def preprocess(image, size: int) -> torch.Tensor:
    """CLIP/ImageReward preprocessing of a PIL image: short side to `size` (bicubic), centre crop, normalise."""
    from PIL import Image
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    image = image.convert("RGB").resize((new_short, new_long) if w <= h else (new_long, new_short), Image.BICUBIC)
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(IMAGE_MEAN)[:, None, None]) / torch.tensor(IMAGE_STD)[:, None, None]


def load_checkpoint(path) -> dict:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or "blip.visual_encoder.cls_token" not in state:
        raise InputError(f"{path} is not an ImageReward checkpoint (no blip.visual_encoder.cls_token)")
    return state


class ImageReward(PromptImageMetric):
    name = "image_reward"
    label = "ImageReward"
    packages = (("transformers", "models"),)

    def __init__(self, weights=None, vocab=None, batch_size: int = 16, device: str = "cpu"):
        super().__init__(batch_size, device)
        self.weights = weights          # ImageReward.pt
        self.vocab = vocab              # bert-base-uncased vocab.txt

    def requirements(self, model):
        return [entry_requirement("imagereward", self.weights),
                entry_requirement("bert-base-uncased-vocab", self.vocab)]

    def load(self):
        ckpt, vocab = (require(r).path for r in self.requirements(None))
        vision, text, mlp = build_reward_model(load_checkpoint(ckpt))
        return vision.to(self.device), text.to(self.device), mlp.to(self.device), blip_tokenizer(vocab)

    def score(self, images: list, prompts: Sequence[str]) -> torch.Tensor:
        vision, text, mlp, tokenizer = self.scorer()
        size = vision.config.image_size
        pixels = torch.stack([preprocess(im, size) for im in images]).to(self.device)
        tokens = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                           return_tensors="pt").to(self.device)
        image_embeds = vision(pixel_values=pixels).last_hidden_state
        h = text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                 encoder_hidden_states=image_embeds,
                 encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device),
                 is_decoder=False).last_hidden_state
        reward = mlp(h[:, 0].float()).squeeze(-1)
        return (reward - REWARD_MEAN) / REWARD_STD
