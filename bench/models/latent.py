"""Latent diffusion models on a discrete VP schedule, through diffusers: LSUN-Bedroom LDM and Stable Diffusion v1.5.

Both predict noise, eps(z_t, t), for z_t = sqrt(abar_t) x + sqrt(1 - abar_t) n at integer steps t = 0..T-1. With
sigma_t = sqrt((1 - abar_t) / abar_t) and x_edm = z_t / sqrt(abar_t) = x + sigma n (EDM's variance-exploding view):

    D(x; sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma)),

where t(sigma) is the fractional step found by interpolating the discrete log-sigmas (and sigma(tau) maps the paper's
'discrete' grid, tau uniform in [1e-3, 1], onto those log-sigmas: solvers.schedules.vp_discrete_sigma_fn). Stable
Diffusion adds classifier-free guidance, eps = eps_u + g (eps_c - eps_u) with g = 7.5: two network evaluations per
denoiser call (evals_per_call = 2), run as one batch of 2B.

The models are read from diffusers folders (LSUN: unet/ UNet2DModel + vqvae/ VQModel + scheduler/; SD v1.5: unet/,
vae/, text_encoder/, tokenizer/, scheduler/); LSUN also straight from CompVis' model.ckpt (bench.models.ldm_convert).
Tests build the same classes from tiny configs with random weights.

Precision (the reference's, by default): weights in float32 (`torch_dtype`) and the network calls, text encoding and
decoding under fp16 autocast on CUDA (`autocast = "float16"`, as its sample.py's `with autocast("cuda")`);
`autocast = "none"` gives full float32. Autocast is a CUDA feature: on other devices the calls run in float32. The
networks loaded from a path are shared with every model reading the same files and released one model at a time
(bench.models.loaded).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Sequence

import torch

from bench import weights
from solvers import schedules
from solvers.errors import InputError

from . import conditions, devices, loaded
from .base import Bottleneck, Model, Requirement
from .loaded import SAFE

LSUN_BETAS = {"beta_start": 0.0015, "beta_end": 0.0195, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def alphas_cumprod(config: dict) -> torch.Tensor:
    """abar_t of a DDPM-family scheduler config ('linear' or 'scaled_linear' betas), in float64."""
    T = int(config.get("num_train_timesteps", 1000))
    b0, b1 = float(config["beta_start"]), float(config["beta_end"])
    kind = config.get("beta_schedule", "linear")
    if kind == "scaled_linear":
        betas = torch.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(b0, b1, T, dtype=torch.float64)
    else:
        raise InputError(f"beta_schedule {kind!r} is not supported yet; accepted: linear, scaled_linear")
    return torch.cumprod(1 - betas, dim=0)


def sigma_to_t(log_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Fractional step t with log sigma linearly interpolated between the two neighbouring discrete steps."""
    ls = torch.log(sigma.to(torch.float64)).clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, ls.contiguous()).clamp(1, len(log_sigmas) - 1)
    lo = hi - 1
    w = (ls - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    return lo.to(torch.float64) + w


class DiscreteEpsModel(loaded.LoadedNetworks, Model):
    packages = (("diffusers", "models"), ("transformers", "models"))
    """An eps-prediction network on a discrete VP schedule, seen as the EDM denoiser above."""

    schedule = "discrete"
    schedule_options: dict = {}

    def set_schedule(self, scheduler_config: dict) -> None:
        ac = alphas_cumprod(scheduler_config)
        self.log_sigmas = torch.log(((1 - ac) / ac).sqrt())            # increasing in t
        self._sigma_fn = schedules.vp_discrete_sigma_fn(ac)
        ends = self._sigma_fn(torch.tensor([1e-3, 1.0], dtype=torch.float64))
        self.sigma_min, self.sigma_max = float(ends[0]), float(ends[1])

    def sigma_fn(self, tau: torch.Tensor) -> torch.Tensor:
        return self._sigma_fn(tau)

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma_to_t(self.log_sigmas, sigma)

    def eps(self, x_in: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        raise NotImplementedError

    def denoiser(self, cond=None):
        """D(x, sigma); its `features` expose the U-Net's middle block (AMED-Solver's official input for LDM and
        Stable Diffusion, solvers_amed.py `init_hook`)."""
        self.load()
        module = getattr(getattr(self, "unet", None), "mid_block", None)
        features = Bottleneck(module) if module is not None else None

        def D(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
            s = s.expand(x.shape[0]) if s.numel() == 1 else s
            t = self.t_of_sigma(s.cpu()).to(x.device)
            c_in = (1 / (1 + s ** 2).sqrt()).reshape(-1, *[1] * (x.dim() - 1))
            x_in = (x.to(torch.float64) * c_in).to(self.net_dtype)
            with self.precision():
                call = lambda: self.eps(x_in, t.to(torch.float32), cond)  # noqa: E731
                e = features.around(x.shape[0], call) if features is not None else call()
            return (x.to(torch.float64) - s.reshape(c_in.shape) * e.to(torch.float64)).to(x.dtype)

        D.features = features
        return D

    # ---- precision and loading -------------------------------------------------------------------------------
    net_dtype = torch.float32
    autocast: str | None = "float16"
    NETWORKS: tuple = ()                  # attribute names of the loaded modules

    def _setup(self, device, torch_dtype, autocast, components) -> None:
        self.device, self.net_dtype = devices.device(device), devices.dtype(torch_dtype)
        self.autocast = None if autocast in (None, "none") else autocast
        if self.autocast is not None:
            devices.dtype(self.autocast)
        self._hold(components)

    def precision(self):
        """Mixed precision for network calls (fp16 autocast on CUDA by default; nothing elsewhere, nor inside
        devices.full_precision(), where a distillation's student runs)."""
        if self.autocast is None or torch.device(self.device).type != "cuda" or not devices.autocast_allowed():
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=devices.dtype(self.autocast))


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class LSUNBedroomLDM(DiscreteEpsModel):
    name = "lsun_bedroom"
    description = "LSUN-Bedroom 256x256 latent diffusion (VQ-f4 latents 3x64x64)"
    shape = (3, 64, 64)
    released_key = "lsun_bedroom_ldm"
    distill_lr = 1e-2                 # docs/solver-conventions.md, "Training"
    fid_reference = "fid-ref-lsun_bedroom"       # weights entry of the FID reference statistics

    NETWORKS = ("unet", "vqvae")
    nominal_parameters = {"unet": 274e6, "vqvae": 55e6}
    batch_hint = 32
    # saved activations per sample: one UNet call (measured on the architecture with random weights), the VQ
    # decoder at 256x256 and TF-Inception of the image loss (estimates); a run probes both on its device
    activation_bytes = 343 * 2 ** 20
    loss_bytes = (768 + 256) * 2 ** 20

    def __init__(self, path: str | Path | None = None, components: dict | None = None, device: str | None = None,
                 torch_dtype: torch.dtype | str = torch.float32, autocast: str | None = "float16"):
        self._path = Path(path).expanduser() if path else None
        self._setup(device, torch_dtype, autocast, components)
        cfg = dict(LSUN_BETAS)
        if components:
            cfg.update(components.get("scheduler_config", {}))
        elif self.path.joinpath("scheduler", "scheduler_config.json").is_file():
            cfg.update(_read_json(self.path / "scheduler" / "scheduler_config.json"))
        self.set_schedule(cfg)
        self.shape = tuple(shape_of(self.unet)) if self.unet is not None else self.shape

    @property
    def path(self) -> Path:
        return self._path or weights.path("ldm-lsun-bedroom")

    def requirements(self) -> list[Requirement]:
        if self._given:
            return []
        req = weights.requirement("ldm-lsun-bedroom")
        req.path = self.path
        return [req]

    def read_networks(self) -> dict:
        if self.path.is_file():                     # the CompVis checkpoint: rename its weights into diffusers
            from . import ldm_convert
            unet, vqvae = ldm_convert.build(ldm_convert.read_state_dict(self.path))
            return {"unet": unet.to(self.net_dtype), "vqvae": vqvae.to(self.net_dtype)}
        from diffusers import UNet2DModel, VQModel
        return {"unet": UNet2DModel.from_pretrained(self.path, subfolder="unet", **SAFE, torch_dtype=self.net_dtype),
                "vqvae": VQModel.from_pretrained(self.path, subfolder="vqvae", **SAFE, torch_dtype=self.net_dtype)}

    def eps(self, x_in, t, cond):
        return self.unet(x_in, t).sample

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        self.load()
        if self.vqvae is None:
            raise InputError("this LSUN-Bedroom model was built without its VQ autoencoder, so it cannot decode")
        with self.precision():                     # differentiable (the VQ layer passes gradients straight through)
            return self.vqvae.decode(x.to(self.net_dtype)).sample.float().clamp(-1, 1)


def shape_of(unet) -> tuple:
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (unet.config.in_channels, *size)


class StableDiffusion(DiscreteEpsModel):
    NETWORKS = ("unet", "vae", "text_encoder", "tokenizer")
    nominal_parameters = {"unet": 860e6, "vae": 84e6, "text_encoder": 123e6}
    batch_hint = 16
    activation_bytes = 2 * 1476 * 2 ** 20   # one guided call (two UNet evaluations) per prompt, measured as above
    name = "sd15"
    description = "Stable Diffusion v1.5, 512x512 (latents 4x64x64), classifier-free guidance 7.5"
    shape = (4, 64, 64)
    evals_per_call = 2
    released_key = "ms_coco"
    distill_lr = 5e-4                 # docs/solver-conventions.md, "Training"
    fid_reference = "fid-ref-ms_coco"

    def __init__(self, path: str | Path | None = None, prompts: str = "coco30k", prompts_path: str | Path | None = None,
                 prompt_mode: str | None = None, prompt_seed_start: int = 0, guidance: float = 7.5,
                 components: dict | None = None, device: str | None = None,
                 torch_dtype: torch.dtype | str = torch.float32, autocast: str | None = "float16"):
        if prompts not in PROMPT_SETS:
            raise InputError(f"unknown prompt set {prompts!r}; accepted: {', '.join(PROMPT_SETS)}")
        self._path = Path(path).expanduser() if path else None
        self.prompt_set = prompts
        self._prompts_path = Path(prompts_path).expanduser() if prompts_path else None
        self.prompt_mode = prompt_mode or PROMPT_SETS[prompts][1]
        self.prompt_seed_start = int(prompt_seed_start)
        self.guidance = float(guidance)
        self._setup(device, torch_dtype, autocast, components)
        self._prompts = None
        cfg = dict(SD_BETAS)
        if components:
            cfg.update(components.get("scheduler_config", {}))
        elif self.path.joinpath("scheduler", "scheduler_config.json").exists():
            cfg.update(_read_json(self.path / "scheduler" / "scheduler_config.json"))
        self.set_schedule(cfg)
        if self.unet is not None:
            self.shape = shape_of(self.unet)
        if self.guidance == 1.0:
            self.evals_per_call = 1

    @property
    def path(self) -> Path:
        return self._path or weights.path("sd-v1.5")

    @property
    def prompts_path(self) -> Path:
        return self._prompts_path or weights.path(PROMPT_SETS[self.prompt_set][0])

    def requirements(self) -> list[Requirement]:
        reqs = []
        if not self._given:
            reqs.append(weights.requirement("sd-v1.5"))
            reqs[-1].path = self.path
        reqs.append(weights.requirement(PROMPT_SETS[self.prompt_set][0]))
        reqs[-1].path = self.prompts_path
        return reqs

    def read_networks(self) -> dict:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel
        dt = self.net_dtype
        return {"unet": UNet2DConditionModel.from_pretrained(self.path, subfolder="unet", **SAFE, torch_dtype=dt),
                "vae": AutoencoderKL.from_pretrained(self.path, subfolder="vae", **SAFE, torch_dtype=dt),
                "text_encoder": CLIPTextModel.from_pretrained(self.path, subfolder="text_encoder", **SAFE,
                                                              torch_dtype=dt),
                "tokenizer": AutoTokenizer.from_pretrained(self.path, subfolder="tokenizer")}

    # ---- conditions: prompts drawn per seed, encoded once per batch ------------------------------------------
    def prompts(self) -> list[str]:
        if self._prompts is None:
            self._prompts = conditions.prompt_set(self.prompt_set, self.prompts_path)
        return self._prompts

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP text-encoder hidden states (B, 77, C) of the prompts, padded to the tokenizer's max length."""
        self.load()
        max_len = min(int(getattr(self.tokenizer, "model_max_length", 77) or 77), 77)
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        with self.precision():
            return self.text_encoder(ids)[0].to(self.net_dtype)

    def conditions(self, seeds: Sequence[int]) -> conditions.Prompts:
        """The seeds' prompts; encoded on first use as {"cond": (B, 77, C), "uncond": (1, 77, C)}."""
        prompts = conditions.prompts_for_seeds(self.prompts(), seeds, self.prompt_mode, self.prompt_seed_start)
        return conditions.Prompts(prompts, lambda p: {"cond": self.encode(p), "uncond": self.encode([""])})

    def eps(self, x_in, t, cond):
        if cond is None:
            raise InputError("Stable Diffusion needs conditions (prompt embeddings): call model.conditions(seeds)")
        c = cond["cond"]
        if self.guidance == 1.0:
            return self.unet(x_in, t, encoder_hidden_states=c).sample
        B = x_in.shape[0]
        u = cond["uncond"].expand(B, *cond["uncond"].shape[1:])
        e_u, e_c = self.unet(torch.cat([x_in, x_in]), torch.cat([t, t]),
                             encoder_hidden_states=torch.cat([u, c])).sample.chunk(2)
        return e_u + self.guidance * (e_c - e_u)      # classifier-free guidance

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        self.load()
        if self.vae is None:
            raise InputError("this Stable Diffusion model was built without its VAE, so it cannot decode")
        scale = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        with self.precision():                     # differentiable; the runner decodes under no_grad
            return self.vae.decode((x / scale).to(self.net_dtype)).sample.float().clamp(-1, 1)


# prompt set -> (weights entry of the prompt file, default way seeds pick prompts); see conditions.prompts_for_seeds
PROMPT_SETS = {
    # SD's reference: MS-COCO_val2014_30k_captions.csv, seed s takes row s
    "coco30k": ("coco-30k-captions", "index"),
    "coco": ("coco-captions-val2014", "random"),        # the first caption of every val2014 image, shuffled
    "coco30k_seed2024": ("coco-captions-val2014", "index"),   # FLUX's reference 30k subset (conditions.py)
    "drawbench": ("drawbench-prompts", "cycle"),        # the DrawBench sheet, in its order
    "drawbench_dyweight": ("drawbench-dyweight", "index"),  # DyWeight's FLUX DrawBench list (drawbench.txt)
    "flux_train": ("flux-train-prompts", "random"),      # the 5k train2014 captions DyWeight's FLUX code trains on
}


def lsun_bedroom(**options) -> LSUNBedroomLDM:
    return LSUNBedroomLDM(**options)


def sd15(**options) -> StableDiffusion:
    return StableDiffusion(**options)


def sd15_drawbench(**options) -> StableDiffusion:
    m = StableDiffusion(prompts="drawbench", **options)
    m.name = "sd15_drawbench"
    return m
