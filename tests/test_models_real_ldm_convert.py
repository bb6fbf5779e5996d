"""CompVis latent-diffusion checkpoint -> diffusers: renamed weights reproduce an independent openaimodel forward."""
from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from bench.models import latent, ldm_convert

diffusers = pytest.importorskip("diffusers")

MC, MULT, NRB, ATTN_DS, HEAD = 32, (1, 2), 1, (2,), 16        # a tiny openaimodel.UNetModel
TINY_UNET = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                 attention_head_dim=HEAD, norm_num_groups=32, norm_eps=1e-5,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 flip_sin_to_cos=True, freq_shift=0, downsample_padding=1)


# ---- random weights under latent-diffusion's names, and that architecture's forward pass -----------------------
def _ldm_unet_weights(g):
    sd = {}

    def p(name, *shape):
        sd[name] = torch.randn(*shape, generator=g) * (0.5 / math.sqrt(max(1, math.prod(shape[1:]))) if
                                                        len(shape) > 1 else 0.1)

    def norm(name, c):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)

    def res(name, cin, cout):
        norm(f"{name}.in_layers.0", cin)
        p(f"{name}.in_layers.2.weight", cout, cin, 3, 3), p(f"{name}.in_layers.2.bias", cout)
        p(f"{name}.emb_layers.1.weight", cout, 4 * MC), p(f"{name}.emb_layers.1.bias", cout)
        norm(f"{name}.out_layers.0", cout)
        p(f"{name}.out_layers.3.weight", cout, cout, 3, 3), p(f"{name}.out_layers.3.bias", cout)
        if cin != cout:
            p(f"{name}.skip_connection.weight", cout, cin, 1, 1), p(f"{name}.skip_connection.bias", cout)

    def attn(name, c):
        norm(f"{name}.norm", c)
        p(f"{name}.qkv.weight", 3 * c, c, 1), p(f"{name}.qkv.bias", 3 * c)
        p(f"{name}.proj_out.weight", c, c, 1), p(f"{name}.proj_out.bias", c)

    def conv(name, cout, cin):
        p(f"{name}.weight", cout, cin, 3, 3), p(f"{name}.bias", cout)

    p("time_embed.0.weight", 4 * MC, MC), p("time_embed.0.bias", 4 * MC)
    p("time_embed.2.weight", 4 * MC, 4 * MC), p("time_embed.2.bias", 4 * MC)
    conv("input_blocks.0.0", MC, 3)
    chans, ch, ds, k = [MC], MC, 1, 1
    for level, mult in enumerate(MULT):
        for _ in range(NRB):
            res(f"input_blocks.{k}.0", ch, mult * MC)
            ch = mult * MC
            if ds in ATTN_DS:
                attn(f"input_blocks.{k}.1", ch)
            chans.append(ch)
            k += 1
        if level < len(MULT) - 1:
            conv(f"input_blocks.{k}.0.op", ch, ch)
            chans.append(ch)
            ds, k = ds * 2, k + 1
    res("middle_block.0", ch, ch), attn("middle_block.1", ch), res("middle_block.2", ch, ch)
    k = 0
    for level, mult in reversed(list(enumerate(MULT))):
        for i in range(NRB + 1):
            res(f"output_blocks.{k}.0", ch + chans.pop(), mult * MC)
            ch = mult * MC
            sub = 1
            if ds in ATTN_DS:
                attn(f"output_blocks.{k}.1", ch)
                sub = 2
            if level and i == NRB:
                conv(f"output_blocks.{k}.{sub}.conv", ch, ch)
                ds //= 2
            k += 1
    norm("out.0", ch)
    conv("out.2", 3, ch)
    return {f"model.diffusion_model.{k}": v for k, v in sd.items()}


def _ldm_forward(sd, x, t):
    """latent-diffusion's UNetModel forward (GroupNorm32, ResBlock, legacy QKV attention), written out."""
    s = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    gn = lambda h, n: F.group_norm(h, 32, s[f"{n}.weight"], s[f"{n}.bias"], 1e-5)  # noqa: E731
    cv = lambda h, n, **kw: F.conv2d(h, s[f"{n}.weight"], s[f"{n}.bias"], **kw)    # noqa: E731

    def res(h, n, emb):
        y = cv(F.silu(gn(h, f"{n}.in_layers.0")), f"{n}.in_layers.2", padding=1)
        y = y + F.linear(F.silu(emb), s[f"{n}.emb_layers.1.weight"], s[f"{n}.emb_layers.1.bias"])[:, :, None, None]
        y = cv(F.silu(gn(y, f"{n}.out_layers.0")), f"{n}.out_layers.3", padding=1)
        return (cv(h, f"{n}.skip_connection") if f"{n}.skip_connection.weight" in s else h) + y

    def attn(h, n):
        B, C, H, W = h.shape
        qkv = F.conv1d(gn(h, f"{n}.norm").reshape(B, C, -1), s[f"{n}.qkv.weight"], s[f"{n}.qkv.bias"])
        heads = C // HEAD
        q, k, v = qkv.reshape(B * heads, 3 * HEAD, -1).split(HEAD, dim=1)        # QKVAttentionLegacy
        scale = 1 / math.sqrt(math.sqrt(HEAD))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(B, C, -1)
        return h + F.conv1d(a, s[f"{n}.proj_out.weight"], s[f"{n}.proj_out.bias"]).reshape(B, C, H, W)

    half = MC // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    emb = F.linear(F.silu(F.linear(emb, s["time_embed.0.weight"], s["time_embed.0.bias"])),
                   s["time_embed.2.weight"], s["time_embed.2.bias"])
    h = cv(x, "input_blocks.0.0", padding=1)
    hs, k, ds = [h], 1, 1
    for level, _mult in enumerate(MULT):
        for _ in range(NRB):
            h = res(h, f"input_blocks.{k}.0", emb)
            if ds in ATTN_DS:
                h = attn(h, f"input_blocks.{k}.1")
            hs.append(h)
            k += 1
        if level < len(MULT) - 1:
            h = cv(h, f"input_blocks.{k}.0.op", stride=2, padding=1)
            hs.append(h)
            ds, k = ds * 2, k + 1
    h = res(attn(res(h, "middle_block.0", emb), "middle_block.1"), "middle_block.2", emb)
    k = 0
    for level, _mult in reversed(list(enumerate(MULT))):
        for i in range(NRB + 1):
            h = res(torch.cat([h, hs.pop()], dim=1), f"output_blocks.{k}.0", emb)
            sub = 1
            if ds in ATTN_DS:
                h = attn(h, f"output_blocks.{k}.1")
                sub = 2
            if level and i == NRB:
                h = cv(F.interpolate(h, scale_factor=2, mode="nearest"), f"output_blocks.{k}.{sub}.conv", padding=1)
                ds //= 2
            k += 1
    return cv(F.silu(gn(h, "out.0")), "out.2", padding=1)


def test_unet_conversion_matches_the_openaimodel_forward():
    sd = _ldm_unet_weights(torch.Generator().manual_seed(0))
    unet = diffusers.UNet2DModel(**TINY_UNET)
    unet.load_state_dict(ldm_convert.convert_unet(sd, TINY_UNET), strict=True)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([17.0, 803.5])
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t).sample, _ldm_forward(sd, x, t), rtol=1e-4, atol=1e-4)


def _ldm_vq_weights(cfg):
    """Random weights under latent-diffusion's VQModel names, shaped after `cfg` (via a diffusers model)."""
    ref = diffusers.VQModel(**cfg).state_dict()
    inverse = {v: k for k, v in _names(cfg).items()}
    return {f"first_stage_model.{inverse[k]}": torch.randn(v.shape) * 0.1 for k, v in ref.items()}


def _names(cfg):
    """ldm name -> diffusers name, built from latent-diffusion's module layout (not from the converter)."""
    m = {"quantize.embedding.weight": "quantize.embedding.weight"}
    for n in ("quant_conv", "post_quant_conv", "encoder.conv_in", "encoder.conv_out", "decoder.conv_in",
              "decoder.conv_out"):
        m.update({f"{n}.{p}": f"{n}.{p}" for p in ("weight", "bias")})
    for part in ("encoder", "decoder"):
        m.update({f"{part}.norm_out.{p}": f"{part}.conv_norm_out.{p}" for p in ("weight", "bias")})
    L, per = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    ch = list(cfg["block_out_channels"])

    def res(a, b, cin, cout):
        for x, y in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2")):
            m.update({f"{a}.{x}.{p}": f"{b}.{y}.{p}" for p in ("weight", "bias")})
        if cin != cout:
            m.update({f"{a}.nin_shortcut.{p}": f"{b}.conv_shortcut.{p}" for p in ("weight", "bias")})

    cin = ch[0]
    for i in range(L):
        for j in range(per):
            res(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", cin, ch[i])
            cin = ch[i]
        if i < L - 1:
            m.update({f"encoder.down.{i}.downsample.conv.{p}": f"encoder.down_blocks.{i}.downsamplers.0.conv.{p}"
                      for p in ("weight", "bias")})
    for part in ("encoder", "decoder"):
        for a, b in (("block_1", "resnets.0"), ("block_2", "resnets.1")):
            res(f"{part}.mid.{a}", f"{part}.mid_block.{b}", 1, 1)
        for x, y in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
            m.update({f"{part}.mid.attn_1.{x}.{p}": f"{part}.mid_block.attentions.0.{y}.{p}"
                      for p in ("weight", "bias")})
    cin = ch[-1]
    for level in reversed(range(L)):                  # ldm builds decoder.up[level] from the lowest resolution
        k = L - 1 - level
        for j in range(per + 1):
            res(f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{k}.resnets.{j}", cin, ch[level])
            cin = ch[level]
        if level != 0:
            m.update({f"decoder.up.{level}.upsample.conv.{p}": f"decoder.up_blocks.{k}.upsamplers.0.conv.{p}"
                      for p in ("weight", "bias")})
    return m


def test_vq_conversion_fills_every_weight_with_the_right_tensor():
    cfg = dict(ldm_convert.VQ_CONFIG, block_out_channels=(32, 64, 96), num_vq_embeddings=16, sample_size=16)
    sd = _ldm_vq_weights(cfg)
    out = ldm_convert.convert_vq(sd, cfg)
    names = _names(cfg)
    assert len(out) == len(names)
    for a, b in names.items():
        src = sd[f"first_stage_model.{a}"]
        assert torch.equal(out[b].reshape(src.shape), src), (a, b)
    vq = diffusers.VQModel(**cfg)
    vq.load_state_dict(out, strict=True)


def _lightning_ckpt(tmp_path, state_dict, monkeypatch):
    """A checkpoint shaped like PyTorch Lightning's, with a callback object from a (fake) Lightning module."""
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.best = "epoch=3"
    ModelCheckpoint.__module__ = mod.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state_dict, "global_step": 10, "callbacks": {"cb": ModelCheckpoint()}}, path)
    return path


def test_reads_a_lightning_checkpoint_and_the_model_loads_it(tmp_path, monkeypatch):
    sd = _ldm_unet_weights(torch.Generator().manual_seed(0))
    vq_cfg = dict(ldm_convert.VQ_CONFIG, block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, num_vq_embeddings=16, sample_size=16)
    sd.update(_ldm_vq_weights(vq_cfg))
    path = _lightning_ckpt(tmp_path, sd, monkeypatch)
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"):
        monkeypatch.delitem(sys.modules, name)                 # reading needs no Lightning
    got = ldm_convert.read_state_dict(path)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    monkeypatch.setattr(ldm_convert, "UNET_CONFIG", TINY_UNET)
    monkeypatch.setattr(ldm_convert, "VQ_CONFIG", vq_cfg)
    monkeypatch.setattr(ldm_convert.build, "__defaults__", (TINY_UNET, vq_cfg, True))
    m = latent.LSUNBedroomLDM(path=path)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        D = m.denoiser()(x * 5, torch.tensor([5.0]))
        s = 5.0
        t = m.t_of_sigma(torch.tensor([s], dtype=torch.float64)).float()
        expect = x * 5 - s * _ldm_forward(sd, x * 5 / math.sqrt(1 + s * s), t)
        torch.testing.assert_close(D, expect, rtol=1e-4, atol=1e-4)
        assert m.decode(x).shape == (1, 3, 16, 16)


def test_refuses_foreign_objects_in_a_checkpoint(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match=r"evil\.ckpt: refusing to load (posix|os)\.system") as e:
        ldm_convert.read_state_dict(tmp_path / "evil.ckpt")
    assert not (tmp_path / "pwned").exists() and "\n" not in str(e.value)


def test_numpy_scalars_as_torch_save_writes_them_are_read(tmp_path):
    """torch.save pickles with protocol 2, which writes a numpy scalar's bytes through _codecs.encode."""
    import numpy as np
    w = torch.arange(4.0)
    torch.save({"state_dict": {"w": w}, "global_step": np.int64(7), "lr": np.float64(0.5)}, tmp_path / "np.ckpt")
    assert torch.equal(ldm_convert.read_state_dict(tmp_path / "np.ckpt")["w"], w)


@pytest.mark.parametrize("content", [b"", b"garbage" * 20, b"PK\x03\x04" + b"\0" * 40])
def test_a_garbage_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"model\.ckpt: not a readable PyTorch checkpoint") as e:
        ldm_convert.read_state_dict(path)
    assert "\n" not in str(e.value)


def test_the_unet_samples_with_its_ema_weights(tmp_path, monkeypatch):
    """A converted checkpoint that holds both weights gets the EMA ones (LitEma's dotless names under model_ema.),
    as the reference's use_ema = True and ema_scope() do; the autoencoder is unaffected."""
    sd = _ldm_unet_weights(torch.Generator().manual_seed(0))
    ema_sd = _ldm_unet_weights(torch.Generator().manual_seed(1))
    vq_cfg = dict(ldm_convert.VQ_CONFIG, block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, num_vq_embeddings=16, sample_size=16)
    both = dict(sd, **_ldm_vq_weights(vq_cfg))
    both.update({"model_ema." + k[len("model."):].replace(".", ""): v for k, v in ema_sd.items()})
    both["model_ema.decay"], both["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(10)
    path = _lightning_ckpt(tmp_path, both, monkeypatch)
    monkeypatch.setattr(ldm_convert.build, "__defaults__", (TINY_UNET, vq_cfg, True))
    m = latent.LSUNBedroomLDM(path=path)
    x = torch.randn(1, 3, 8, 8)
    s = 5.0
    t = m.t_of_sigma(torch.tensor([s], dtype=torch.float64)).float()
    with torch.no_grad():
        D = m.denoiser()(x * s, torch.tensor([s]))
        ema = x * s - s * _ldm_forward(ema_sd, x * s / math.sqrt(1 + s * s), t)
        plain = x * s - s * _ldm_forward(sd, x * s / math.sqrt(1 + s * s), t)
    torch.testing.assert_close(D, ema, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(D, plain, rtol=1e-3, atol=1e-3)
