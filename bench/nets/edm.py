"""The EDM networks, implemented here: the DDPM++ / NCSN++ U-Net (`SongUNet`, Song et al. 2021), the ADM U-Net
(`DhariwalUNet`, Dhariwal and Nichol 2021) and the preconditionings of Karras et al. 2022, Table 1 (`EDMPrecond`,
`VPPrecond`, `VEPrecond`), in the form EDM's released checkpoints use.

A checkpoint's tensors load into these modules by name (bench.models.edm_pickle builds a module from the
pickled constructor arguments and copies the tensors in; it never runs the source a pickle carries), so the modules,
their registration order and their parameter names follow EDM's layout: a network is `model` inside its
preconditioning, its encoder and decoder are ordered dicts `enc` / `dec` of blocks named by resolution
("32x32_block0", "16x16_down", ...), each block holds `norm0, conv0, affine, norm1, conv1[, skip][, norm2, qkv,
proj]`. tests/test_edm_networks.py checks the outputs against NVIDIA's own implementation on random weights.

Equations (Karras et al. 2022, Table 1), with sigma_data = 0.5 for EDM:

    EDM:  c_skip = s_d^2 / (s^2 + s_d^2), c_out = s s_d / sqrt(s^2 + s_d^2), c_in = 1 / sqrt(s^2 + s_d^2),
          c_noise = ln(s) / 4
    VP:   c_skip = 1, c_out = -s, c_in = 1 / sqrt(s^2 + 1), c_noise = (M - 1) sigma^-1(s)
          with sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)
    VE:   c_skip = 1, c_out = s, c_in = 1, c_noise = ln(s / 2)
    D(x; s) = c_skip x + c_out F(c_in x; c_noise)

The U-Nets' blocks: GroupNorm (min(32, C/4) groups) -> SiLU -> 3x3 conv (optionally up/down-sampled with a
separable [1, 1] or [1, 3, 3, 1] filter) -> the embedding added (DDPM++) or as scale and shift (ADM) -> GroupNorm
-> SiLU -> dropout -> 3x3 conv, a (1x1 or resampling) skip, times `skip_scale`; then optionally multi-head
self-attention over the pixels, added and scaled again.
"""
from __future__ import annotations

import math

import torch
from torch.nn.functional import silu

from solvers.errors import InputError


def _init(shape, fan_in: int) -> torch.Tensor:
    """A random initial weight (a loaded checkpoint overwrites it; stand-ins keep it)."""
    return torch.randn(*shape) / math.sqrt(max(1, fan_in))


class Linear(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = torch.nn.Parameter(_init([out_features, in_features], in_features))
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        y = x @ self.weight.to(x.dtype).t()
        return y if self.bias is None else y + self.bias.to(x.dtype)


def _filter(taps) -> torch.Tensor:
    """The 2-D resampling filter f f^T / (sum f)^2 as a (1, 1, k, k) kernel."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


class Conv2d(torch.nn.Module):
    """A k x k convolution (k = 0: none, resampling only), optionally after 2x up- or down-sampling with a
    separable filter; `fused_resample` does the resampling and the convolution in one strided pass."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter=(1, 1), fused_resample: bool = False):
        super().__init__()
        if up and down:
            raise InputError("a convolution samples up or down, not both")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight = torch.nn.Parameter(_init([out_channels, in_channels, kernel, kernel],
                                               in_channels * kernel * kernel)) if kernel else None
        self.bias = torch.nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        self.register_buffer("resample_filter", _filter(resample_filter) if up or down else None)

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        F = torch.nn.functional
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, (4 * f).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2,
                                   padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (4 * f).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(torch.nn.Module):
    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return torch.nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype),
                                              self.eps)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax over keys of q^T k / sqrt(c), computed in float32 and returned in q's dtype; q, k: (N, C, L)."""
    w = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(k.shape[1])).float())
    return w.softmax(dim=2).to(q.dtype)


class UNetBlock(torch.nn.Module):
    """The residual block shared by DDPM++, NCSN++ and ADM (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5, resample_filter=(1, 1),
                 resample_proj: bool = False, adaptive_scale: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        heads = (num_heads if num_heads is not None else out_channels // channels_per_head) if attention else 0
        self.num_heads, self.dropout, self.skip_scale, self.adaptive_scale = heads, dropout, skip_scale, adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter)
        if heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        e = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:                       # ADM: the embedding as a scale and a shift
            scale, shift = e.chunk(2, dim=1)
            h = silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:                                         # DDPM++: the embedding added
            h = silu(self.norm1(h + e))
        h = self.conv1(torch.nn.functional.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if self.num_heads:                            # self-attention over the pixels
            n, c = h.shape[0], h.shape[1]
            q, k, v = self.qkv(self.norm2(h)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            a = torch.einsum("nqk,nck->ncq", attention_weights(q, k), v)
            h = (self.proj(a.reshape(h.shape)) + h) * self.skip_scale
        return h


class PositionalEmbedding(torch.nn.Module):
    """[cos(x w_j), sin(x w_j)] with w_j = (1 / max_positions)^(j / (C/2 - [endpoint])), j < C/2."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        j = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        x = torch.outer(x, ((1 / self.max_positions) ** j).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """[cos(2 pi x f), sin(2 pi x f)] with random frequencies f ~ N(0, scale^2) (NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


def _decoder_level(dec: torch.nn.ModuleDict, res: int, lowest: bool, c: int, out: int, skips: list, num_blocks: int,
                   attention, kw: dict) -> int:
    """One decoder resolution of both U-Nets (NVIDIA's names and order): at the lowest resolution two blocks (the
    first with attention), elsewhere an up-sampling block; then num_blocks + 1 blocks that each take one encoder
    skip, with attention in those whose index is in `attention`. Returns the channel count after them."""
    if lowest:
        dec[f"{res}x{res}_in0"] = UNetBlock(c, c, attention=True, **kw)
        dec[f"{res}x{res}_in1"] = UNetBlock(c, c, **kw)
    else:
        dec[f"{res}x{res}_up"] = UNetBlock(c, c, up=True, **kw)
    for i in range(num_blocks + 1):
        dec[f"{res}x{res}_block{i}"] = UNetBlock(c + skips.pop(), out, attention=i in attention, **kw)
        c = out
    return c


class SongUNet(torch.nn.Module):
    """DDPM++ (positional embedding, standard encoder) and NCSN++ (Fourier embedding, residual encoder)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult=(1, 2, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.10, label_dropout: float = 0,
                 embedding_type: str = "positional", channel_mult_noise: int = 1, encoder_type: str = "standard",
                 decoder_type: str = "standard", resample_filter=(1, 1)):
        super().__init__()
        if embedding_type not in ("fourier", "positional") or encoder_type not in ("standard", "skip", "residual") \
                or decoder_type not in ("standard", "skip"):
            raise InputError(f"SongUNet: unsupported embedding/encoder/decoder type {embedding_type!r}, "
                             f"{encoder_type!r}, {decoder_type!r}")
        self.label_dropout = label_dropout
        emb, noise = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        kw = dict(emb_channels=emb, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                  resample_filter=resample_filter, resample_proj=True, adaptive_scale=False)
        self.map_noise = (PositionalEmbedding(noise, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise))
        self.map_label = Linear(label_dim, noise) if label_dim else None
        self.map_augment = Linear(augment_dim, noise, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise, emb)
        self.map_layer1 = Linear(emb, emb)

        self.enc = torch.nn.ModuleDict()
        c, caux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(c, model_channels, 3)
                c = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(c, c, down=True, **kw)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, c, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, c, 3, down=True, fused_resample=True,
                                                                   resample_filter=resample_filter)
                    caux = c
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(c, model_channels * mult,
                                                              attention=res in attn_resolutions, **kw)
                c = model_channels * mult
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            c = _decoder_level(self.dec, res, level == len(channel_mult) - 1, c, model_channels * mult, skips,
                               num_blocks, {num_blocks} if res in attn_resolutions else (), kw)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(c, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(c, out_channels, 3)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)        # [sin, cos]
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))
        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class DhariwalUNet(torch.nn.Module):
    """ADM: positional embedding, adaptive group norm (scale and shift), attention with 64 channels per head."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult=(1, 2, 3, 4), channel_mult_emb: int = 4,
                 num_blocks: int = 3, attn_resolutions=(32, 16, 8), dropout: float = 0.10, label_dropout: float = 0):
        super().__init__()
        self.label_dropout = label_dropout
        emb = model_channels * channel_mult_emb
        kw = dict(emb_channels=emb, channels_per_head=64, dropout=dropout)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb)
        self.map_layer1 = Linear(emb, emb)
        self.map_label = Linear(label_dim, emb, bias=False) if label_dim else None

        self.enc = torch.nn.ModuleDict()
        c = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(c, model_channels * mult, 3)
                c = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(c, c, down=True, **kw)
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(c, model_channels * mult,
                                                              attention=res in attn_resolutions, **kw)
                c = model_channels * mult
        skips = [b.out_channels for b in self.enc.values()]

        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            c = _decoder_level(self.dec, res, level == len(channel_mult) - 1, c, model_channels * mult, skips,
                               num_blocks, range(num_blocks + 1) if res in attn_resolutions else (), kw)
        self.out_norm = GroupNorm(c)
        self.out_conv = Conv2d(c, out_channels, 3)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        emb = silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(silu(self.out_norm(x)))


ARCHITECTURES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


class _Precond(torch.nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) around a U-Net `model` (module docstring)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__()
        if model_type not in ARCHITECTURES:
            raise InputError(f"unsupported EDM model_type {model_type!r}; implemented: {', '.join(ARCHITECTURES)}")
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = (img_resolution, img_channels,
                                                                                 label_dim, use_fp16)
        self.model = ARCHITECTURES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                               out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def coefficients(self, sigma):
        raise NotImplementedError

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim:
            class_labels = (torch.zeros([1, self.label_dim], device=x.device) if class_labels is None
                            else class_labels.to(torch.float32).reshape(-1, self.label_dim))
        else:
            class_labels = None
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class EDMPrecond(_Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
                 sigma_data=0.5, model_type="DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma):
        sd = self.sigma_data
        return (sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / (sigma ** 2 + sd ** 2).sqrt(),
                1 / (sd ** 2 + sigma ** 2).sqrt(), sigma.log() / 4)


class VPPrecond(_Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1, M=1000,
                 epsilon_t=1e-5, model_type="SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min, self.sigma_max = float(self.sigma(epsilon_t)), float(self.sigma(1))

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Precond):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type="SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()


PRECONDITIONINGS = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond}
# the class names a checkpoint may hold inside a network, and the class each builds here
MODULES = {"Linear": Linear, "Conv2d": Conv2d, "GroupNorm": GroupNorm, "UNetBlock": UNetBlock,
           "PositionalEmbedding": PositionalEmbedding, "FourierEmbedding": FourierEmbedding, **ARCHITECTURES,
           **PRECONDITIONINGS}
