"""Random-weight stand-ins of the paper's models, built from configs of their real architectures, scaled down.

They run every code path of the real models (the EDM adapter with the project's EDM networks, diffusers' UNet2DCondition
with classifier-free guidance and the VAE, FLUX's transformer with packing, guidance embedding and flow time,
diffusers' UNet2DModel + VQ for the LSUN LDM) with no download, so that a machine can be checked before the real
checkpoints arrive (`python -m bench gpu-check`) and the test suite can exercise them on the CPU.

`size = "tiny"` is the smallest configuration (the CPU tests); "small" is wider and larger (a GPU check whose
timings mean something). The models are registered as `standin_edm`, `standin_edm_cond`, `standin_lsun`,
`standin_sd` and `standin_flux`; their samples are noise-like images, and their numbers mean nothing.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from bench.models.edm import EDMModel
from solvers.errors import InputError

SIZES = ("tiny", "small")
PROMPTS = ["a photo of a cat", "a red dog", "an astronaut", "a bedroom", "a photo of a red cat", "an astronaut dog"]
WORDS = ["<pad>", "<unk>", "a", "photo", "of", "cat", "dog", "red", "bedroom", "an", "astronaut"]


def _width(size: str) -> int:
    if size not in SIZES:
        raise InputError(f"unknown stand-in size {size!r}; accepted: {', '.join(SIZES)}")
    return 32 if size == "tiny" else 64


def tokenizer(max_len: int = 77):
    """A word-level tokenizer over the stand-in prompts' words (the CLIP/T5 tokenizer interface)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                model_max_length=max_len)


def _clip_text(hidden: int, projection: int | None = None):
    import transformers
    cfg = dict(hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
               bos_token_id=0, eos_token_id=2, pad_token_id=1, max_position_embeddings=77)
    if projection is not None:
        cfg["projection_dim"] = projection
    return transformers.CLIPTextModel(transformers.CLIPTextConfig(**cfg)).eval()


def sd_components(seed: int = 0, size: str = "tiny") -> dict:
    """SD v1.5's architecture (UNet2DCondition with cross-attention, KL VAE, CLIP text encoder), scaled down."""
    import diffusers

    from bench.models.latent import SD_BETAS
    w = _width(size)
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(w, 2 * w), layers_per_block=1, sample_size=8 if size == "tiny" else 16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=32,
        attention_head_dim=(2, 4))
    vae = diffusers.AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  norm_num_groups=32, sample_size=16)
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": _clip_text(32), "tokenizer": tokenizer(),
            "scheduler_config": dict(SD_BETAS)}


def ldm_components(seed: int = 0, size: str = "tiny") -> dict:
    """The LSUN-Bedroom LDM's architecture (UNet2DModel with attention on VQ latents, VQ autoencoder), scaled down."""
    import diffusers
    w = _width(size)
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8 if size == "tiny" else 16, in_channels=3, out_channels=3,
                                 block_out_channels=(w, 2 * w), layers_per_block=1,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    vq = diffusers.VQModel(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=3,
                           down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                           norm_num_groups=32, num_vq_embeddings=16, vq_embed_dim=3)
    return {"unet": unet.eval(), "vqvae": vq.eval()}


FLUX_SCHEDULER = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def flux_components(seed: int = 0, size: str = "tiny", dtype: torch.dtype = torch.float32) -> dict:
    """FLUX.1-dev's architecture (FluxTransformer2D with double and single stream blocks and guidance embedding, KL
    VAE with shift and scale, CLIP and T5 text encoders), scaled down; the VAE downsamples by 2."""
    import diffusers
    import transformers
    torch.manual_seed(seed)
    heads = 2 if size == "tiny" else 4
    layers = 1 if size == "tiny" else 2
    _width(size)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=layers, num_single_layers=layers, attention_head_dim=16,
        num_attention_heads=heads, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=True)
    vae = diffusers.AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=1,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  norm_num_groups=32, sample_size=16, shift_factor=0.0609, scaling_factor=1.5035)
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=37, num_layers=1,
                                                           num_heads=4))
    nets = {"transformer": transformer, "vae": vae, "text_encoder": _clip_text(32, 32), "text_encoder_2": t5}
    quiet = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()        # casting random weights needs no keep-in-fp32 advice
    try:
        nets = {k: v.eval().to(dtype) for k, v in nets.items()}
    finally:
        diffusers.utils.logging.set_verbosity(quiet)
    return {**nets, "tokenizer": tokenizer(),
            "tokenizer_2": tokenizer(512), "scheduler_config": FLUX_SCHEDULER, "vae_scale_factor": 2}


def edm_network(resolution: int, label_dim: int = 0, width: int = 32) -> torch.nn.Module:
    """The project's EDM network (bench.nets.edm, the classes EDM's checkpoints load into), narrowed: EDM's
    preconditioning over DDPM++ (SongUNet, the CIFAR-10/FFHQ/AFHQv2 architecture) when unconditional, over ADM
    (DhariwalUNet, the ImageNet-64 architecture) with `label_dim` classes; random weights. The block counts are
    the real ones (4 per level for DDPM++, 3 for ADM), so the encoder block AMED reads (`8x8_block3`,
    `8x8_block2`) exists as in the checkpoints."""
    if label_dim:
        return edm_network_of(resolution, label_dim, dict(model_type="DhariwalUNet", model_channels=width,
                                                          channel_mult=[1, 2], num_blocks=3,
                                                          attn_resolutions=[resolution // 2], dropout=0.0))
    return edm_network_of(resolution, 0, dict(model_type="SongUNet", model_channels=width, channel_mult=[1, 2, 2],
                                              num_blocks=4, attn_resolutions=[resolution // 2], dropout=0.0))


def edm_network_of(resolution: int, label_dim: int, kwargs: dict) -> torch.nn.Module:
    from bench.nets.edm import EDMPrecond
    return EDMPrecond(resolution, 3, label_dim, **kwargs)


def _prompts_file(name: str, prompts: list[str]) -> Path:
    folder = Path(tempfile.gettempdir()) / "fewstep-standins"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if name.endswith(".jsonl"):
        text = "".join(json.dumps({"prompt": p}) + "\n" for p in prompts)
    else:
        text = json.dumps({"annotations": [{"caption": p} for p in prompts]})
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


# ---- the registered models --------------------------------------------------------------------------------------
def edm(size: str = "tiny", device: str | None = None, seed: int = 0) -> EDMModel:
    """An unconditional EDM pixel model (CIFAR-10-like, 3 x 16 x 16 tiny, 3 x 32 x 32 small); released_key cifar10."""
    res = 16 if size == "tiny" else 32
    torch.manual_seed(seed)
    net = edm_network(res, width=_width(size))
    m = EDMModel("standin_edm", "edm-cifar10", (3, res, res), 0, "cifar10",
                 f"EDM stand-in ({size}, random weights)", device=device, network=net, distill_lr=3e-2,
                 parameters=float(sum(p.numel() for p in net.parameters())))
    return m


def edm_cond(size: str = "tiny", device: str | None = None, seed: int = 0) -> EDMModel:
    """A class-conditional EDM pixel model (ImageNet-64-like with 10 classes)."""
    res = 16 if size == "tiny" else 32
    torch.manual_seed(seed)
    net = edm_network(res, label_dim=10, width=_width(size))
    return EDMModel("standin_edm_cond", "edm-imagenet64", (3, res, res), 10, "imagenet64",
                    f"class-conditional EDM stand-in ({size}, random weights)", device=device, network=net,
                    distill_lr=5e-3, parameters=float(sum(p.numel() for p in net.parameters())))


def lsun(size: str = "tiny", device: str | None = None, seed: int = 0, **options):
    from bench.models.latent import LSUNBedroomLDM
    m = LSUNBedroomLDM(components=ldm_components(seed, size), device=device, **options)
    m.name, m.description = "standin_lsun", f"LSUN-Bedroom LDM stand-in ({size}, random weights, VQ latents)"
    return m


def sd(size: str = "tiny", device: str | None = None, seed: int = 0, **options):
    from bench.models.latent import StableDiffusion
    m = StableDiffusion(components=sd_components(seed, size), prompts="coco",
                        prompts_path=_prompts_file("captions.json", PROMPTS), device=device, **options)
    m.name, m.description = "standin_sd", f"Stable Diffusion stand-in ({size}, random weights, CFG 7.5)"
    return m


def flux(size: str = "tiny", device: str | None = None, seed: int = 0, torch_dtype: str = "bfloat16", **options):
    """FLUX in the reference's bfloat16 by default (`torch_dtype = "float32"` for full precision)."""
    from bench.models import devices
    from bench.models.flux import FluxModel
    m = FluxModel(components=flux_components(seed, size, devices.dtype(torch_dtype)), prompts="coco",
                  prompts_path=_prompts_file("captions.json", PROMPTS), resolution=16 if size == "tiny" else 32,
                  max_sequence_length=16, train_prompts_path=_prompts_file("train.jsonl", PROMPTS[::-1]),
                  device=device, **options)
    m.name, m.description = "standin_flux", f"FLUX.1-dev stand-in ({size}, random weights, flow time)"
    return m


# ---- full width: the real architectures at their real sizes (gpu-check's memory plans) -----------------------
DDPMPP_CIFAR10 = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                      decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], model_channels=128,
                      channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.13)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def full_edm(device: str | None = None, seed: int = 0) -> EDMModel:
    """EDM's CIFAR-10 network at full size (DDPM++ under EDM's preconditioning, 56M parameters; the arguments of
    EDM's train.py for --arch=ddpmpp), random weights: `cifar10`'s network but for its weights."""
    torch.manual_seed(seed)
    net = edm_network_of(32, 0, DDPMPP_CIFAR10)
    return EDMModel("full_edm", "edm-cifar10", (3, 32, 32), 0, "cifar10", "EDM CIFAR-10 architecture, random weights",
                    device=device, network=net, distill_lr=3e-2,
                    parameters=float(sum(p.numel() for p in net.parameters())))


def full_sd(device: str | None = None, seed: int = 0, **options):
    """Stable Diffusion v1.5's UNet at full size (860M parameters, 64 x 64 latents, CFG 7.5), random weights; a
    narrow CLIP text encoder of SD's width (768) and a small KL VAE of 4 latent channels, which a DyWeight
    distillation on latents (loss mse) does not train through."""
    import diffusers

    from bench.models.latent import SD_BETAS, StableDiffusion
    torch.manual_seed(seed)
    components = {"unet": diffusers.UNet2DConditionModel(**SD15_UNET).eval(),
                  "vae": sd_components(seed, "tiny")["vae"], "text_encoder": _clip_text(768),
                  "tokenizer": tokenizer(), "scheduler_config": dict(SD_BETAS)}
    m = StableDiffusion(components=components, prompts="coco", prompts_path=_prompts_file("captions.json", PROMPTS),
                        device=device, **options)
    m.name, m.description = "full_sd", "Stable Diffusion v1.5 UNet architecture, random weights, CFG 7.5"
    return m


class InceptionStandIn(torch.nn.Module):
    """The call convention of NVIDIA's TorchScript TF-Inception (uint8-valued images in, resized inside; pool
    features with return_features=True) on a small random convolutional network with `dim` features."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32 * 4 * 4, dim)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x.to(torch.float32), size=(64, 64), mode="bilinear", align_corners=False)
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv((x - 128.0) / 128.0)), 4)
        features = torch.relu(self.fc(x.flatten(1)))
        return features if return_features else features[:, :10]


def write_inception(path: str | Path, seed: int = 0, dim: int = 64) -> Path:
    """Save an InceptionStandIn as TorchScript, loadable where inception-2015-12-05.pt is (FEWSTEP_INCEPTION)."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(InceptionStandIn(dim).eval()).save(str(path))
    return path
