"""A small UNet behind EDM's preconditioning (Karras et al. 2022, Table 1):

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)      c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)             c_noise = ln(sigma) / 4

trained with EDM's loss: sigma ~ exp(N(P_mean, P_std^2)), weight lambda(sigma) = (sigma^2 + sigma_data^2) /
(sigma sigma_data)^2 on ||D(y + sigma n, sigma) - y||^2.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise level c_noise."""

    def __init__(self, channels: int, max_positions: int = 10000):
        super().__init__()
        half = channels // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_positions) * torch.arange(half) / half),
                             persistent=False)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        a = c[:, None].float() * self.freqs[None]
        return torch.cat([a.cos(), a.sin()], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4), ch)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the noise embedding as a scale and shift in between; skip scaled by 1/sqrt 2."""

    def __init__(self, cin: int, cout: int, emb: int, attention: bool = False):
        super().__init__()
        self.norm0, self.conv0 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, 2 * cout)
        self.norm1, self.conv1 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = SelfAttention(cout) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        x = (self.skip(x) + self.conv1(h)) * math.sqrt(0.5)
        if self.attn is not None:
            x = self.attn(x)
        return x


class SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.norm, self.qkv, self.proj = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return (x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))) * math.sqrt(0.5)


class UNet(nn.Module):
    """F(x, c_noise): levels at R, R/2, R/4 with `mults` x `channels` channels, `blocks` ResBlocks per level,
    self-attention at the resolutions in `attn_res`."""

    def __init__(self, resolution: int = 16, in_channels: int = 1, channels: int = 32, mults=(1, 2, 2),
                 blocks: int = 2, attn_res=(4,)):
        super().__init__()
        self.config = dict(resolution=resolution, in_channels=in_channels, channels=channels, mults=list(mults),
                           blocks=blocks, attn_res=list(attn_res))
        emb = 4 * channels
        self.embed = PositionalEmbedding(channels)
        self.emb_mlp = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [channels]
        ch, res = channels, resolution
        for level, m in enumerate(mults):
            if level > 0:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))      # downsample
                res //= 2
                skips.append(ch)
            for _ in range(blocks):
                self.down.append(ResBlock(ch, channels * m, emb, attention=res in attn_res))
                ch = channels * m
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb, attention=True), ResBlock(ch, ch, emb)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mults))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), channels * m, emb, attention=res in attn_res))
                ch = channels * m
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                res *= 2
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = self.emb_mlp(self.embed(c_noise))
        h = self.stem(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h)


class EDMPrecond(nn.Module):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise), sigma of shape (B,)."""

    def __init__(self, net: UNet, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        s = sigma.reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * self.sigma_data / (s ** 2 + sd2).sqrt()
        c_in = 1 / (s ** 2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return (c_skip * x + c_out * self.net(c_in * x, c_noise)).to(dtype)

    def config(self) -> dict:
        return {"unet": self.net.config, "sigma_data": self.sigma_data}

    @classmethod
    def from_config(cls, config: dict) -> "EDMPrecond":
        return cls(UNet(**config["unet"]), sigma_data=config["sigma_data"])


def edm_loss(model: EDMPrecond, y: torch.Tensor, generator: torch.Generator, P_mean: float = -1.2,
             P_std: float = 1.2) -> torch.Tensor:
    """EDM's training loss (per sample): ln sigma ~ N(P_mean, P_std^2), lambda(sigma) ||D(y + sigma n) - y||^2."""
    B = y.shape[0]
    sigma = (P_mean + P_std * torch.randn(B, generator=generator)).exp()
    n = torch.randn(y.shape, generator=generator) * sigma.reshape(-1, 1, 1, 1)
    sd = model.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    D = model(y + n, sigma)
    return weight * ((D - y) ** 2).flatten(1).mean(1)
