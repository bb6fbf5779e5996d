"""The CompVis LSUN-Bedroom LDM checkpoint (latent-diffusion `lsun_bedrooms/model.ckpt`) as diffusers modules.

The checkpoint holds the UNet under `model.diffusion_model.` (ldm openaimodel.UNetModel: model_channels 224,
channel_mult 1-2-3-4, 2 res-blocks per level, attention at 8/16/32 px with 32 channels per head, legacy QKV order,
no scale-shift norm) and the VQ-f4 autoencoder under `first_stage_model.` (ch 128, ch_mult 1-2-4, 2 res-blocks,
z 3 channels, 8192 codes). Both are renamed here to diffusers' UNet2DModel and VQModel of the same architecture;
`load_state_dict(strict=True)` then checks every name and shape.

EMA weights: latent-diffusion's LatentDiffusion keeps an exponential moving average of the UNet under `model_ema.`
(LitEma: the parameter's name inside `model` with its dots removed, e.g. `model_ema.diffusion_modelout2weight`
for `model.diffusion_model.out.2.weight`), and the reference samples inside `ema_scope()`, which swaps those in
(use_ema = True in its config). `ema_weights` does the same swap on the state dict, so the converted UNet holds
the EMA weights wherever the checkpoint has them; a checkpoint without `model_ema.` keys keeps `model.*`.

The file is a PyTorch Lightning checkpoint; it is read with the allow-list unpickler of bench.models.safe_pickle
(tensors, storages, plain containers, numpy values); Lightning callback/hyper-parameter objects become inert
placeholders, anything else is refused in one line.
"""
from __future__ import annotations

import pickle
import re
import types
from pathlib import Path

import torch

from solvers.errors import InputError, one_line

from . import safe_pickle

UNET_CONFIG = dict(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(224, 448, 672, 896),
                   layers_per_block=2, attention_head_dim=32, norm_num_groups=32, norm_eps=1e-5,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                   flip_sin_to_cos=True, freq_shift=0, downsample_padding=1)
VQ_CONFIG = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512), layers_per_block=2,
                 down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                 latent_channels=3, num_vq_embeddings=8192, vq_embed_dim=3, norm_num_groups=32, sample_size=256,
                 scaling_factor=1.0)
SCHEDULER_CONFIG = {"beta_start": 0.0015, "beta_end": 0.0195, "beta_schedule": "scaled_linear",
                    "num_train_timesteps": 1000}


# ---- reading the Lightning checkpoint -------------------------------------------------------------------------
class _Inert:
    """Stands for a Lightning/OmegaConf object in the checkpoint's bookkeeping; never used."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _CkptUnpickler(safe_pickle.Unpickler):
    """The shared allow-list (tensors, containers, numpy values) plus Lightning's bookkeeping as inert objects."""

    what = "LDM checkpoint"
    _INERT = ("pytorch_lightning", "lightning", "lightning_fabric", "omegaconf", "pathlib", "argparse", "typing")

    def extra(self, module, name):
        return _Inert if module.split(".")[0] in self._INERT else None


_PICKLE = types.SimpleNamespace(Unpickler=_CkptUnpickler, load=lambda f, **kw: _CkptUnpickler(f, **kw).load(),
                                __name__="fewstep_ckpt_pickle")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, read through the allow-list; a refused or unreadable file is one line."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except safe_pickle.UnsafePickleError as e:
        raise InputError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError, TypeError,
            AttributeError, IndexError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {one_line(e)})") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise InputError(f"{path}: not a latent-diffusion checkpoint (no state_dict)")
    return sd


def ema_weights(sd: dict, prefix: str = "model.") -> dict:
    """The state dict with every parameter under `prefix` replaced by its EMA copy (`model_ema.<name without
    dots>`) where the checkpoint holds one (LitEma's naming; what LatentDiffusion.ema_scope() swaps in)."""
    ema = {k[len("model_ema."):]: v for k, v in sd.items() if k.startswith("model_ema.")}
    if not ema:
        return sd
    out = dict(sd)
    for k in sd:
        if k.startswith(prefix):
            key = k[len(prefix):].replace(".", "")
            if key in ema:
                out[k] = ema[key]
    return out


# ---- renaming -------------------------------------------------------------------------------------------------
def _resnet(src: str, dst: str, sd: dict, out: dict, ldm_unet: bool) -> None:
    """openaimodel ResBlock (in_layers/emb_layers/out_layers/skip_connection) or the autoencoder's ResnetBlock
    (norm1/conv1/norm2/conv2/nin_shortcut) -> diffusers ResnetBlock2D."""
    names = ({"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
              "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"} if ldm_unet else
             {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"})
    for a, b in names.items():
        for p in ("weight", "bias"):
            if f"{src}.{a}.{p}" in sd:
                out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]


def _attention_legacy(src: str, dst: str, sd: dict, out: dict, head_channels: int) -> None:
    """openaimodel AttentionBlock with QKVAttentionLegacy: qkv rows are per head [q_h; k_h; v_h]."""
    w, b = sd[f"{src}.qkv.weight"], sd[f"{src}.qkv.bias"]
    C = w.shape[1]
    heads = C // head_channels
    w = w.reshape(heads, 3, head_channels, C)
    b = b.reshape(heads, 3, head_channels)
    for i, n in enumerate(("to_q", "to_k", "to_v")):
        out[f"{dst}.{n}.weight"] = w[:, i].reshape(C, C)
        out[f"{dst}.{n}.bias"] = b[:, i].reshape(C)
    out[f"{dst}.to_out.0.weight"] = sd[f"{src}.proj_out.weight"].reshape(C, C)
    out[f"{dst}.to_out.0.bias"] = sd[f"{src}.proj_out.bias"]
    out[f"{dst}.group_norm.weight"] = sd[f"{src}.norm.weight"]
    out[f"{dst}.group_norm.bias"] = sd[f"{src}.norm.bias"]


def _attention_ae(src: str, dst: str, sd: dict, out: dict) -> None:
    """The autoencoder's single-head AttnBlock (1x1 conv q, k, v, proj_out) -> diffusers Attention."""
    for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        w = sd[f"{src}.{a}.weight"]
        out[f"{dst}.{b}.weight"] = w.reshape(w.shape[0], w.shape[1])
        out[f"{dst}.{b}.bias"] = sd[f"{src}.{a}.bias"]
    out[f"{dst}.group_norm.weight"] = sd[f"{src}.norm.weight"]
    out[f"{dst}.group_norm.bias"] = sd[f"{src}.norm.bias"]


def convert_unet(sd: dict, config: dict = UNET_CONFIG, prefix: str = "model.diffusion_model.") -> dict:
    """openaimodel.UNetModel weights (keys under `prefix`) -> diffusers UNet2DModel weights for `config`."""
    s = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not s:
        raise InputError(f"no UNet weights under {prefix!r} in the checkpoint")
    out = {}
    for a, b in (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
                 ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")):
        out[f"{b}.weight"], out[f"{b}.bias"] = s[f"{a}.weight"], s[f"{a}.bias"]
    head = config["attention_head_dim"]
    levels, per = len(config["block_out_channels"]), config["layers_per_block"]
    attn_down = [t.startswith("Attn") for t in config["down_block_types"]]
    k = 1                                                         # input_blocks index
    for i in range(levels):
        for j in range(per):
            _resnet(f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", s, out, True)
            if attn_down[i]:
                _attention_legacy(f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}", s, out, head)
            k += 1
        if i < levels - 1:
            for p in ("weight", "bias"):
                out[f"down_blocks.{i}.downsamplers.0.conv.{p}"] = s[f"input_blocks.{k}.0.op.{p}"]
            k += 1
    _resnet("middle_block.0", "mid_block.resnets.0", s, out, True)
    _attention_legacy("middle_block.1", "mid_block.attentions.0", s, out, head)
    _resnet("middle_block.2", "mid_block.resnets.1", s, out, True)
    attn_up = [t.startswith("Attn") for t in config["up_block_types"]]
    for i in range(levels):                                       # up_blocks[0] is the lowest resolution
        for j in range(per + 1):
            k = i * (per + 1) + j
            _resnet(f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", s, out, True)
            if attn_up[i]:
                _attention_legacy(f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", s, out, head)
        if i < levels - 1:
            k = i * (per + 1) + per
            sub = 2 if attn_up[i] else 1
            for p in ("weight", "bias"):
                out[f"up_blocks.{i}.upsamplers.0.conv.{p}"] = s[f"output_blocks.{k}.{sub}.conv.{p}"]
    return out


def convert_vq(sd: dict, config: dict = VQ_CONFIG, prefix: str = "first_stage_model.") -> dict:
    """latent-diffusion VQModel (encoder/decoder/quantize) -> diffusers VQModel weights."""
    s = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not s:
        raise InputError(f"no autoencoder weights under {prefix!r} in the checkpoint")
    out = {}
    for n in ("quant_conv", "post_quant_conv", "encoder.conv_in", "encoder.conv_out", "decoder.conv_in",
              "decoder.conv_out"):
        out[f"{n}.weight"], out[f"{n}.bias"] = s[f"{n}.weight"], s[f"{n}.bias"]
    for a, b in (("encoder.norm_out", "encoder.conv_norm_out"), ("decoder.norm_out", "decoder.conv_norm_out")):
        out[f"{b}.weight"], out[f"{b}.bias"] = s[f"{a}.weight"], s[f"{a}.bias"]
    out["quantize.embedding.weight"] = s["quantize.embedding.weight"]
    levels, per = len(config["block_out_channels"]), config["layers_per_block"]
    for i in range(levels):
        for j in range(per):
            _resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", s, out, False)
        if i < levels - 1:
            for p in ("weight", "bias"):
                out[f"encoder.down_blocks.{i}.downsamplers.0.conv.{p}"] = s[f"encoder.down.{i}.downsample.conv.{p}"]
    for part in ("encoder", "decoder"):
        _resnet(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", s, out, False)
        _attention_ae(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", s, out)
        _resnet(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", s, out, False)
    for i in range(levels):                        # diffusers up_blocks[i] = ldm up[levels - 1 - i] (low res first)
        src = levels - 1 - i
        for j in range(per + 1):
            _resnet(f"decoder.up.{src}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", s, out, False)
        if i < levels - 1:
            for p in ("weight", "bias"):
                out[f"decoder.up_blocks.{i}.upsamplers.0.conv.{p}"] = s[f"decoder.up.{src}.upsample.conv.{p}"]
    return out


def build(sd: dict, unet_config: dict = UNET_CONFIG, vq_config: dict = VQ_CONFIG, use_ema: bool = True):
    """(UNet2DModel, VQModel) with the checkpoint's weights (the UNet's EMA weights where present, as the
    reference samples); strict loading names any key that does not fit."""
    from diffusers import UNet2DModel, VQModel
    unet = UNet2DModel(**unet_config)
    unet.load_state_dict(convert_unet(ema_weights(sd) if use_ema else sd, unet_config), strict=True)
    vq = VQModel(**vq_config)
    vq.load_state_dict(convert_vq(sd, vq_config), strict=True)
    return unet.eval(), vq.eval()


def is_ldm_checkpoint(path: Path) -> bool:
    return path.is_file() and re.search(r"\.(ckpt|pt|pth)$", path.name) is not None
