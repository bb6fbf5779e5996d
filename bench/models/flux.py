"""FLUX.1-dev (rectified flow, guidance-distilled) through diffusers, seen as an EDM denoiser.

Flow matching interpolates x_t = (1 - t) x_0 + t n for t in [0, 1]; the transformer predicts the velocity
v(x_t, t) = n - x_0. Divide by (1 - t):

    x_edm = x_t / (1 - t) = x_0 + t / (1 - t) n,    so    sigma = t / (1 - t),   t = sigma / (1 + sigma),
    x_t   = (1 - t) x_edm = x_edm / (1 + sigma),
    D(x_edm; sigma) = E[x_0 | x_t] = x_t - t v(x_t, t).

An Euler step in sigma on this D is exactly FLUX's Euler step in t (the scaling is linear in x), so the official
sampler is the 'euler' solver on the grid below. Grid (FLUX's sampler): t_i = linspace(1, 0, N) shifted by
t' = s t / (1 + (s - 1) t) with s = exp(mu), mu interpolated linearly in the image's token count between
(256 tokens, 0.5) and (4096 tokens, 1.15) (s ~ 1.878 at 512x512), mapped to sigma. t = 1 is sigma = inf, so the grid
starts at sigma_max = 1000 (t = 1000/1001; x_T = sigma_max z, i.e. x_t = 0.999 z); it ends at sigma = 0 exactly,
as FLUX's sampler does. FLUX.1-dev has no classifier-free guidance at sampling time: the guidance scale (3.5 by
default) is an input of the network, so each call is one evaluation.

Flow time (`time = "flow"` in a grid; solvers/flow.py): `flow_view()` is FLUX as its own sampler and DyWeight's
dyweight_flux/ code run it, from t = 1 exactly (x_T = z) to t = 0, with the velocity straight from the transformer.
The multistep solvers (iPNDM, DyWeight) there combine velocities in t, which is the paper's FLUX method; the
exponential integrators (DPM-Solver++, UniPC) are the same method in sigma and run on the EDM view above, which
starts at t = 1000/1001 instead of 1 (a difference of order 1e-3 in the first step). The reference's released FLUX
DyWeight coefficients (NFE 3, 5, 7) are released_key "flux_dev".

Defaults follow the reference: bfloat16 weights (`torch_dtype`; float32 is an option), prompts of its FID protocol
(`coco30k_seed2024`: the 30k val2014 captions drawn with seed 2024, prompt i with generation seed 42 + i, so grids
start at seed 42), and DrawBench from its drawbench.txt with seeds 42 + i (`flux_drawbench`). Noise comes from one
CPU generator per seed, as the reference's sample_flux.py does. Networks loaded from a path are shared between
`flux` and `flux_drawbench` (bench.models.loaded).

Prompts are encoded with both text encoders: CLIP's pooled output (77 tokens) and T5's hidden states (512 tokens).
Latents are 16 x H/8 x W/8, fed to the transformer as 2x2 patches ("packed" tokens).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch

from bench import weights
from solvers import schedules
from solvers.errors import InputError

from . import conditions, devices, loaded
from .base import Model, Requirement
from .flow import FlowView
from .latent import PROMPT_SETS
from .loaded import SAFE

SHIFT_DEFAULTS = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def dynamic_shift(image_seq_len: int, config: dict | None = None) -> float:
    """s = exp(mu), mu linear in the number of image tokens (FLUX's resolution-dependent shift)."""
    c = dict(SHIFT_DEFAULTS, **{k: v for k, v in (config or {}).items() if k in SHIFT_DEFAULTS})
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    mu = c["base_shift"] + m * (image_seq_len - c["base_image_seq_len"])
    return math.exp(mu)


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens of 2x2 patches."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), C * 4)


def unpack(tokens: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    C, H, W = shape
    B = tokens.shape[0]
    return tokens.reshape(B, H // 2, W // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def image_ids(H: int, W: int) -> torch.Tensor:
    """Positions (0, row, col) of the packed latent tokens, for the rotary embedding."""
    ids = torch.zeros(H // 2, W // 2, 3)
    ids[..., 1] = torch.arange(H // 2)[:, None]
    ids[..., 2] = torch.arange(W // 2)[None, :]
    return ids.reshape(-1, 3)


class FluxModel(loaded.LoadedNetworks, Model):
    packages = (("diffusers", "models"), ("transformers", "models"))
    name = "flux"
    description = "FLUX.1-dev, 512x512 (latents 16x64x64), guidance embedding 3.5, flow matching as EDM"
    sigma_max = 1000.0
    sigma_min = 1e-3                  # only for schedules that cannot end at 0; the default grid ends at 0
    schedule = "flow_shift"
    evals_per_call = 1
    released_key = "flux_dev"         # dyweight_flux/checkpoints (baselines/data/dyweight_flux_released_...json)
    fid_reference = "fid-ref-coco30k-flux"
    batch_hint = 4                    # teacher and evaluation batches of the distillation
    NETWORKS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    nominal_parameters = {"transformer": 11.9e9, "text_encoder_2": 4.76e9, "text_encoder": 123e6, "vae": 84e6}
    # one transformer call's saved activations per 512x512 sample in bfloat16 training: an estimate (4,096 image and
    # 512 text tokens through 57 blocks of width 3,072); a run probes the real value on its device
    activation_bytes = 12 * 2 ** 30

    def __init__(self, path: str | Path | None = None, prompts: str = "coco30k_seed2024",
                 prompts_path: str | Path | None = None, prompt_mode: str | None = None, prompt_seed_start: int = 42,
                 guidance: float = 3.5, resolution: int = 512, shift: float | None = None,
                 max_sequence_length: int = 512, components: dict | None = None, device: str | None = None,
                 torch_dtype: torch.dtype | str | None = None, train_prompts: str | None = "flux_train",
                 train_prompts_path: str | Path | None = None):
        if prompts not in PROMPT_SETS:
            raise InputError(f"unknown prompt set {prompts!r}; accepted: {', '.join(PROMPT_SETS)}")
        self._path = Path(path).expanduser() if path else None
        self.prompt_set, self.guidance = prompts, float(guidance)
        self._prompts_path = Path(prompts_path).expanduser() if prompts_path else None
        self.prompt_mode = prompt_mode or PROMPT_SETS[prompts][1]
        self.prompt_seed_start = int(prompt_seed_start)
        self.max_sequence_length = max_sequence_length
        if train_prompts is not None and train_prompts not in PROMPT_SETS:
            raise InputError(f"unknown train_prompts {train_prompts!r}; accepted: {', '.join(PROMPT_SETS)} or none")
        self.train_prompts = train_prompts
        self._train_prompts_path = Path(train_prompts_path).expanduser() if train_prompts_path else None
        if torch_dtype is None:           # the reference's bfloat16, or the dtype of the given networks
            torch_dtype = next(components["transformer"].parameters()).dtype if components else torch.bfloat16
        self.device, self.net_dtype = devices.device(device), devices.dtype(torch_dtype)
        self._hold(components)
        self._prompts = None
        scheduler_cfg = {}
        if components:
            scheduler_cfg = components.get("scheduler_config", {})
            channels = self.transformer.config.in_channels // 4
            vae_factor = components.get("vae_scale_factor", 8)
        else:
            cfg_file = self.path / "scheduler" / "scheduler_config.json"
            scheduler_cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
            channels, vae_factor = 16, 8
        side = resolution // vae_factor
        self.shape = (channels, side, side)
        self.shift = float(shift) if shift is not None else dynamic_shift((side // 2) ** 2, scheduler_cfg)
        self.schedule_options = {"shift": self.shift}

    # ---- files ----------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path or weights.path("flux.1-dev")

    @property
    def prompts_path(self) -> Path:
        return self._prompts_path or weights.path(PROMPT_SETS[self.prompt_set][0])

    @property
    def train_prompts_path(self) -> Path | None:
        if self.train_prompts is None:
            return None
        return self._train_prompts_path or weights.path(PROMPT_SETS[self.train_prompts][0])

    def requirements(self) -> list[Requirement]:
        reqs = []
        if not self._given:
            reqs.append(weights.requirement("flux.1-dev"))
            reqs[-1].path = self.path
        reqs.append(weights.requirement(PROMPT_SETS[self.prompt_set][0]))
        reqs[-1].path = self.prompts_path
        return reqs

    def training_requirements(self) -> list[Requirement]:
        """Files a distillation on this model needs besides `requirements()` (its training prompts)."""
        if self.train_prompts is None:
            return []
        req = weights.requirement(PROMPT_SETS[self.train_prompts][0])
        req.path = self.train_prompts_path
        return [req]

    def read_networks(self) -> dict:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel
        dt = self.net_dtype
        return {"transformer": FluxTransformer2DModel.from_pretrained(self.path, subfolder="transformer", **SAFE,
                                                                      torch_dtype=dt),
                "vae": AutoencoderKL.from_pretrained(self.path, subfolder="vae", **SAFE, torch_dtype=dt),
                "text_encoder": CLIPTextModel.from_pretrained(self.path, subfolder="text_encoder", **SAFE,
                                                              torch_dtype=dt),
                "text_encoder_2": T5EncoderModel.from_pretrained(self.path, subfolder="text_encoder_2", **SAFE,
                                                                 torch_dtype=dt),
                "tokenizer": AutoTokenizer.from_pretrained(self.path, subfolder="tokenizer"),
                "tokenizer_2": AutoTokenizer.from_pretrained(self.path, subfolder="tokenizer_2")}

    # ---- the grid ---------------------------------------------------------------------------------------------
    def grid(self, num_points: int, schedule: str | None = None, **options) -> torch.Tensor:
        """FLUX's shifted grid from sigma_max to exactly 0 (other schedules span [sigma_min, sigma_max])."""
        if (schedule or self.schedule) != "flow_shift":
            return super().grid(num_points, schedule, **options)
        opts = {"shift": self.shift, **options}
        return schedules.flow_shift(num_points, t_max=1.0, t_min=0.0, sigma_max=self.sigma_max, **opts)

    def flow_view(self) -> "FluxFlowTime":
        return FluxFlowTime(self)

    # ---- conditions --------------------------------------------------------------------------------------------
    def prompts(self) -> list[str]:
        if self._prompts is None:
            self._prompts = conditions.prompt_set(self.prompt_set, self.prompts_path)
        return self._prompts

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> dict:
        """CLIP pooled embedding (B, 768) and T5 hidden states (B, L, 4096), as FLUX's pipeline builds them."""
        self.load()
        prompts = list(prompts)
        ids = self.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        pooled = self.text_encoder(ids, output_hidden_states=False).pooler_output
        ids2 = self.tokenizer_2(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                return_tensors="pt").input_ids.to(self.device)
        txt = self.text_encoder_2(ids2, output_hidden_states=False)[0]
        return {"pooled": pooled.to(self.net_dtype), "txt": txt.to(self.net_dtype)}

    def conditions(self, seeds: Sequence[int]) -> conditions.Prompts:
        """The seeds' prompts; encoded on first use as {"pooled": (B, 768), "txt": (B, L, 4096)}."""
        prompts = conditions.prompts_for_seeds(self.prompts(), seeds, self.prompt_mode, self.prompt_seed_start)
        return conditions.Prompts(prompts, self.encode)

    def training_conditions(self, seeds: Sequence[int]) -> conditions.Prompts:
        """Distillation prompts: DyWeight's 5k train2014 captions (`train_prompts`, one fixed shuffle over the
        seeds, so 5000 consecutive seeds see each caption once), or the evaluation prompts with train_prompts=None."""
        if self.train_prompts is None:
            return self.conditions(seeds)
        pool = conditions.prompt_set(self.train_prompts, self.train_prompts_path)
        return conditions.Prompts(conditions.prompts_for_seeds(pool, seeds, "random"), self.encode)

    # ---- the denoiser ------------------------------------------------------------------------------------------
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        C, H, W = x_t.shape[1:]
        B = x_t.shape[0]
        out = self.transformer(
            hidden_states=pack(x_t.to(self.net_dtype)), timestep=t.to(self.net_dtype),
            guidance=torch.full((B,), self.guidance, dtype=self.net_dtype, device=x_t.device),
            pooled_projections=cond["pooled"], encoder_hidden_states=cond["txt"],
            txt_ids=torch.zeros(cond["txt"].shape[1], 3, device=x_t.device, dtype=self.net_dtype),
            img_ids=image_ids(H, W).to(device=x_t.device, dtype=self.net_dtype), return_dict=False)[0]
        return unpack(out, (C, H, W))

    def denoiser(self, cond=None):
        self.load()
        if cond is None:
            raise InputError("FLUX needs conditions (prompt embeddings): call model.conditions(seeds)")

        def D(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
            s = (s.expand(x.shape[0]) if s.numel() == 1 else s).reshape(-1, 1, 1, 1)
            t = s / (1 + s)                                   # flow time
            x_t = x.to(torch.float64) / (1 + s)               # (1 - t) x_edm
            v = self.velocity(x_t.to(torch.float32), t.reshape(-1).to(torch.float32), cond)
            return (x_t - t * v.to(torch.float64)).to(x.dtype)  # x_0 estimate

        return D

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (differentiable; the runner decodes under no_grad)."""
        self.load()
        if self.vae is None:
            raise InputError("this FLUX model was built without its VAE, so it cannot decode")
        cfg = self.vae.config
        z = x / float(getattr(cfg, "scaling_factor", 0.3611)) + float(getattr(cfg, "shift_factor", 0.1159) or 0.0)
        return self.vae.decode(z.to(self.net_dtype)).sample.float().clamp(-1, 1)


def flow_times(num_points: int, shift: float) -> torch.Tensor:
    """FLUX's sampling times (its pipeline and DyWeight's dyweight_flux/): t = linspace(1, 0, N) shifted by
    t' = s t / (1 + (s - 1) t), from exactly 1 to exactly 0, float64."""
    t = torch.linspace(1.0, 0.0, num_points, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


class FluxFlowTime(FlowView):
    """FLUX in flow time, as its own sampler runs: state x_t, times from t = 1 (pure noise, x_T = z) to t = 0, and
    D_flow(x_t, t) = x_t - t v(x_t, t) straight from the transformer, valid at any t (a time-scaled DyWeight step
    queries s t > 1 at the start, as the reference does)."""

    def __init__(self, base: FluxModel):
        super().__init__(base)
        self.sigma_max, self.sigma_min = 1.0, 0.0

    def grid(self, num_points: int, schedule: str | None = None, **options) -> torch.Tensor:
        if (schedule or self.schedule) != "flow_shift":
            return super().grid(num_points, schedule, **options)
        return flow_times(num_points, options.get("shift", self.base.shift))

    def noise(self, seeds):
        from .base import noise
        return noise(seeds, self.shape, 1.0, self.dtype, self.device)

    def denoiser(self, cond=None):
        base = self.base
        base.load()
        if cond is None:
            raise InputError("FLUX needs conditions (prompt embeddings): call model.conditions(seeds)")

        def D_flow(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t = torch.as_tensor(t, dtype=torch.float64, device=y.device).reshape(-1)
            t = t.expand(y.shape[0]) if t.numel() == 1 else t
            v = base.velocity(y.to(torch.float32), t.to(torch.float32), cond)
            return (y.to(torch.float64) - t.reshape(-1, 1, 1, 1) * v.to(torch.float64)).to(y.dtype)

        return D_flow

    def to_base(self, y: torch.Tensor) -> torch.Tensor:
        return y                                          # t = 0: the flow state is x_0


def flux(**options) -> FluxModel:
    return FluxModel(**options)


def flux_drawbench(**options) -> FluxModel:
    options.setdefault("prompts", "drawbench_dyweight")
    m = FluxModel(**options)
    m.name = "flux_drawbench"
    return m
