"""Training loops for the shipped digits networks (behind `python -m bench train-model`).

Both are deterministic for a given seed and thread count: one torch.Generator drives batches, noise and sigmas.
Each writes `<name>.pt` ({"config", "state_dict"}) and `<name>.json` (how it was made: settings, data split,
loss curve, held-out figures, wall time, sha256 of the weights file).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data
from .classifier import DigitsClassifier, shift_augment
from .unet import EDMPrecond, UNet, edm_loss

UNET_DEFAULTS = dict(channels=32, mults=(1, 2, 2), blocks=1, attn_res=(4,))


def _lr(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def heldout_loss(model: EDMPrecond, x: torch.Tensor, seed: int = 1) -> float:
    """EDM loss on held-out images with a fixed draw of sigmas and noise (comparable across steps and runs)."""
    model.eval()
    loss = edm_loss(model, x, torch.Generator().manual_seed(seed)).mean().item()
    model.train()
    return loss


def train_unet(steps: int = 2000, batch_size: int = 256, lr: float = 2e-3, seed: int = 0, ema: float = 0.999,
               warmup: int = 100, eval_every: int = 100, unet: dict | None = None, sigma_data: float = 0.5,
               progress: bool = True) -> tuple[EDMPrecond, dict]:
    """Train the EDM-preconditioned UNet on the train split; return (EMA model, record)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_train, _ = data.digits("train")
    x_held, _ = data.digits("heldout")
    config = dict(UNET_DEFAULTS, resolution=x_train.shape[-1], **(unet or {}))
    model = EDMPrecond(UNet(**config), sigma_data=sigma_data)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    curve = {"step": [], "loss": [], "eval_step": [], "heldout_loss": []}
    curve["eval_step"].append(0)
    curve["heldout_loss"].append(heldout_loss(ema_model, x_held))
    t0, window = time.time(), []
    bar = tqdm(range(steps), desc="digits-unet", disable=not progress, dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup)
        idx = torch.randint(0, len(x_train), (batch_size,), generator=g)
        loss = edm_loss(model, x_train[idx], g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        beta = min(ema, (1 + step) / (10 + step))                  # EMA with warm-up
        with torch.no_grad():
            for pe, pm in zip(ema_model.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - beta)
        window.append(loss.item())
        if (step + 1) % 25 == 0 or step + 1 == steps:
            curve["step"].append(step + 1)
            curve["loss"].append(sum(window) / len(window))
            bar.set_postfix(loss=f"{curve['loss'][-1]:.4f}")
            window = []
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve["eval_step"].append(step + 1)
            curve["heldout_loss"].append(heldout_loss(ema_model, x_held))
    record = {
        "network": "digits-unet", "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "lr_schedule": f"linear warm-up {warmup} steps, cosine decay to 5%", "optimizer": "Adam(0.9, 0.99)",
        "grad_clip": 1.0, "ema": ema, "loss": "EDM: ln sigma ~ N(-1.2, 1.2^2), weight (s^2+sd^2)/(s sd)^2",
        "sigma_data": sigma_data, "config": model.config(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": data.split_record(), "curve": curve, "wall_time": time.time() - t0,
        "final_train_loss": curve["loss"][-1], "final_heldout_loss_ema": curve["heldout_loss"][-1],
    }
    return ema_model.eval(), record


def train_classifier(steps: int = 600, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     eval_every: int = 100, progress: bool = True) -> tuple[DigitsClassifier, dict]:
    """Train the digit classifier on the train split (1-pixel shift augmentation); return (model, record)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = data.digits("train")
    x_held, y_held = data.digits("heldout")
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve = {"step": [], "loss": [], "eval_step": [], "heldout_accuracy": []}
    t0, window = time.time(), []
    bar = tqdm(range(steps), desc="digits-classifier", disable=not progress, dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=20)
        idx = torch.randint(0, len(x_train), (batch_size,), generator=g)
        loss = F.cross_entropy(model(shift_augment(x_train[idx], g)), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        if (step + 1) % 25 == 0 or step + 1 == steps:
            curve["step"].append(step + 1)
            curve["loss"].append(sum(window) / len(window))
            bar.set_postfix(loss=f"{curve['loss'][-1]:.4f}")
            window = []
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve["eval_step"].append(step + 1)
            curve["heldout_accuracy"].append(accuracy(model, x_held, y_held))
    record = {
        "network": "digits-classifier", "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "augmentation": "random translation by up to 1 pixel", "config": model.config,
        "parameters": sum(p.numel() for p in model.parameters()), "data": data.split_record(), "curve": curve,
        "wall_time": time.time() - t0, "heldout_accuracy": curve["heldout_accuracy"][-1],
    }
    return model.eval(), record


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train(was)
    return acc


def save(model: torch.nn.Module, config: dict, record: dict, out_dir, name: str) -> Path:
    """Write <name>.pt (float16 weights: half the size, loaded back as float32) and <name>.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.pt"
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"config": config, "state_dict": state}, path)
    record = dict(record, weights_file=path.name, weights_dtype="float16 (loaded as float32)",
                  sha256=hashlib.sha256(path.read_bytes()).hexdigest(), torch_version=torch.__version__,
                  threads=torch.get_num_threads(), machine=platform.machine(),
                  created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return path
