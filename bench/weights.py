"""Registry of the local files the benchmark needs: checkpoints, reference statistics, prompt lists.

Nothing here downloads at run time. Every entry knows where it is looked for and where it officially comes from;
`python -m bench download NAME` fetches it for users with internet (bench/commands/download.py).

Where an entry is looked for (first match wins):
  1. its environment variable, e.g. FEWSTEP_EDM_CIFAR10=/data/edm-cifar10-32x32-uncond-vp.pkl;
  2. the config file ~/.config/fewstep-bench/paths.toml ($FEWSTEP_CONFIG overrides its location), keys are entry
     names, either at top level or under a [paths] table:   edm-cifar10 = "/data/edm-cifar10-32x32-uncond-vp.pkl"
  3. $FEWSTEP_WEIGHTS/<filename> (default root ~/.cache/fewstep-bench).

An entry is one file or a directory of files (a diffusers model folder). sha256 is recorded where the publisher
gives one (Hugging Face LFS ids) or where it was measured; `download` refuses a file whose checksum differs, and
says plainly when an entry has no recorded checksum.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.models.base import Requirement
from solvers.errors import InputError
from solvers.registry import Registry

try:
    import tomllib
except ModuleNotFoundError:             # Python 3.10
    import tomli as tomllib

CONFIG_ENV = "FEWSTEP_CONFIG"
ROOT_ENV = "FEWSTEP_WEIGHTS"
DEFAULT_CONFIG = "~/.config/fewstep-bench/paths.toml"
DEFAULT_ROOT = "~/.cache/fewstep-bench"


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: its URL, checksum, and where it goes inside a directory entry."""

    url: str
    sha256: str | None = None
    path: str = ""                  # relative path inside a directory entry; "" for a single-file entry
    member: str | None = None       # the file is this member of the zip archive at `url`


@dataclass(frozen=True)
class Entry:
    name: str                       # registry name, e.g. "edm-cifar10"
    filename: str                   # file (or directory) name under the weights root
    description: str
    env: str                        # environment variable that overrides the path
    files: tuple[RemoteFile, ...] = ()
    homepage: str = ""              # where a human reads about it (licence, gating)
    note: str = ""                  # e.g. "gated: accept the licence on the model page and set HF_TOKEN"

    @property
    def is_dir(self) -> bool:
        return any(f.path for f in self.files)

    @property
    def path(self) -> Path:
        return resolve(self)

    def requirement(self, description: str | None = None) -> Requirement:
        single = len(self.files) == 1 and not self.is_dir
        url = self.files[0].url if single else (self.homepage if self.files else None)
        sha = self.files[0].sha256 if single else None
        where = f"from {url}" if url else f"see {self.homepage}: {self.note}"
        return Requirement(name=self.name, path=self.path, env=self.env, url=url, sha256=sha,
                           description=description or f"{self.description} ({self.name}, {where})")


REGISTRY = Registry("weights entry")


def register(entry: Entry) -> Entry:
    REGISTRY.register(entry.name, entry)
    return entry


def names() -> list[str]:
    return REGISTRY.names()


def get(name: str) -> Entry:
    return REGISTRY.load(name)


def path(name: str) -> Path:
    return resolve(get(name))


def requirement(name: str, description: str | None = None) -> Requirement:
    return get(name).requirement(description)


def config_file() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG).expanduser()


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser()


def configured_paths() -> dict[str, str]:
    """The name -> path table of the config file ({} if there is none); a malformed file is a one-line error."""
    f = config_file()
    if not f.exists():
        return {}
    try:
        data = tomllib.loads(f.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"cannot read the paths config {f}: {e}") from None
    table = dict(data.get("paths", {}))
    table.update({k: v for k, v in data.items() if isinstance(v, str)})
    return table


def resolve(entry: Entry) -> Path:
    if os.environ.get(entry.env):
        return Path(os.environ[entry.env]).expanduser()
    configured = configured_paths().get(entry.name)
    if configured:
        p = Path(configured).expanduser()
        return p if p.is_absolute() else (config_file().parent / p)
    return root() / entry.filename


# ---- the entries ---------------------------------------------------------------------------------------------
_EDM = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
for _key, _file, _what in [
    ("cifar10", "edm-cifar10-32x32-uncond-vp.pkl", "EDM CIFAR-10 32x32 unconditional (VP) checkpoint"),
    ("ffhq", "edm-ffhq-64x64-uncond-vp.pkl", "EDM FFHQ 64x64 unconditional (VP) checkpoint"),
    ("afhqv2", "edm-afhqv2-64x64-uncond-vp.pkl", "EDM AFHQv2 64x64 unconditional (VP) checkpoint"),
    ("imagenet64", "edm-imagenet-64x64-cond-adm.pkl", "EDM ImageNet 64x64 class-conditional (ADM) checkpoint"),
]:
    register(Entry(f"edm-{_key}", _file, _what, f"FEWSTEP_EDM_{_key.upper()}", (RemoteFile(_EDM + _file),),
                   homepage="https://github.com/NVlabs/edm"))

_FID = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/"
for _key, _file in [("cifar10", "cifar10-32x32.npz"), ("ffhq", "ffhq-64x64.npz"), ("afhqv2", "afhqv2-64x64.npz"),
                    ("imagenet64", "imagenet-64x64.npz")]:
    register(Entry(f"fid-ref-{_key}", _file, f"EDM FID reference statistics (mu, sigma) for {_key}",
                   f"FEWSTEP_FID_REF_{_key.upper()}", (RemoteFile(_FID + _file),),
                   homepage="https://github.com/NVlabs/edm"))

register(Entry(
    "fid-ref-lsun_bedroom", "VIRTUAL_lsun_bedroom256.npz",
    "LSUN-Bedroom 256x256 FID reference batch (guided-diffusion evaluation suite: mu, sigma of TF-Inception pool "
    "features)", "FEWSTEP_FID_REF_LSUN_BEDROOM",
    (RemoteFile("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/lsun/bedroom/"
                "VIRTUAL_lsun_bedroom256.npz"),),
    homepage="https://github.com/openai/guided-diffusion/tree/main/evaluations"))
register(Entry(
    "fid-ref-ms_coco", "ms_coco_val2014_512.npz",
    "MS-COCO val2014 FID reference statistics for Stable Diffusion (mu, sigma of TF-Inception pool features)",
    "FEWSTEP_FID_REF_MS_COCO", (), homepage="https://cocodataset.org/#download",
    note="no official statistics are published and the DyWeight repository does not pin how its SD reference was "
         "made (its eval/fid.py `ref` computes EDM statistics of a folder of images): compute them from the val2014 "
         "images with `python -m bench fid-ref --recipe sd --images val2014/ --captions "
         "MS-COCO_val2014_30k_captions.csv --out PATH` (the 30k images the prompts describe, centre crop, 512x512; "
         "this project's recipe) and point this entry at the .npz"))
register(Entry(
    "fid-ref-coco30k-flux", "coco30k_val2014_seed2024.npz",
    "MS-COCO val2014 FID reference statistics of FLUX's protocol: the 30k images of the seed-2024 subset "
    "(dyweight_flux/preprocess/prepare_coco_fid_subset.py) at their native resolution",
    "FEWSTEP_FID_REF_COCO30K_FLUX", (), homepage="https://github.com/Westlake-AGI-Lab/DyWeight",
    note="compute them with `python -m bench fid-ref --recipe flux --images val2014/ --captions "
         "captions_val2014.json --out PATH` (the same 30k images the prompts come from); the reference computes "
         "pytorch_fid features, this project TF-Inception features (the network pytorch_fid ports; its resize "
         "differs), so values can differ slightly from the paper's"))

_DYWEIGHT_RAW = "https://raw.githubusercontent.com/Westlake-AGI-Lab/DyWeight/620534e32eab5235077a4a0545b8d59b7076fcec/"
register(Entry(
    "coco-30k-captions", "MS-COCO_val2014_30k_captions.csv",
    "the 30k MS-COCO val2014 captions of DyWeight's Stable Diffusion evaluation (seed s takes row s; column 'text')",
    "FEWSTEP_COCO_30K_CAPTIONS",
    (RemoteFile("https://github.com/boomb0om/text2image-benchmark/releases/download/v0.0.1/"
                "MS-COCO_val2014_30k_captions.csv"),),
    homepage="https://github.com/boomb0om/text2image-benchmark"))
register(Entry(
    "drawbench-dyweight", "drawbench_dyweight.txt",
    "the DrawBench prompts of DyWeight's FLUX evaluation, one per line (prompt i with seed 42 + i)",
    "FEWSTEP_DRAWBENCH_DYWEIGHT", (RemoteFile(_DYWEIGHT_RAW + "dyweight_flux/dataset/eval/drawbench.txt"),),
    homepage="https://github.com/Westlake-AGI-Lab/DyWeight"))
register(Entry(
    "flux-train-prompts", "train2014_N5000.jsonl",
    "the 5,000 MS-COCO train2014 captions DyWeight's FLUX coefficients were distilled on",
    "FEWSTEP_FLUX_TRAIN_PROMPTS", (RemoteFile(_DYWEIGHT_RAW + "dyweight_flux/dataset/train/train2014_N5000.jsonl"),),
    homepage="https://github.com/Westlake-AGI-Lab/DyWeight"))


def _hf(repo: str, paths: list[str], revision: str = "main") -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(f"https://huggingface.co/{repo}/resolve/{revision}/{p}", None, p) for p in paths)


_TOKENIZER = ["tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
              "tokenizer/vocab.json"]
register(Entry(
    "sd-v1.5", "stable-diffusion-v1-5", "Stable Diffusion v1.5 (diffusers folder: unet, vae, text_encoder, tokenizer)",
    "FEWSTEP_SD15",
    _hf("stable-diffusion-v1-5/stable-diffusion-v1-5", [
        "model_index.json", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors", *_TOKENIZER,
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]),
    homepage="https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"))

register(Entry(
    "flux.1-dev", "FLUX.1-dev", "FLUX.1-dev (diffusers folder: transformer, vae, CLIP and T5 text encoders)",
    "FEWSTEP_FLUX_DEV",
    _hf("black-forest-labs/FLUX.1-dev", [
        "model_index.json", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors", *_TOKENIZER,
        "text_encoder_2/config.json", "text_encoder_2/model.safetensors.index.json",
        "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model-00002-of-00002.safetensors",
        "tokenizer_2/special_tokens_map.json", "tokenizer_2/spiece.model", "tokenizer_2/tokenizer.json",
        "tokenizer_2/tokenizer_config.json",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors.index.json",
        *[f"transformer/diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)],
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]),
    homepage="https://huggingface.co/black-forest-labs/FLUX.1-dev",
    note="gated on Hugging Face: accept the licence on the model page, then set HF_TOKEN for the download"))

register(Entry(
    "ldm-lsun-bedroom", "ldm-lsun-bedrooms-model.ckpt",
    "LSUN-Bedroom latent diffusion checkpoint (CompVis latent-diffusion lsun_bedrooms/model.ckpt, converted to "
    "diffusers modules on load; a diffusers folder with unet/ and vqvae/ also works)",
    "FEWSTEP_LDM_LSUN_BEDROOM",
    (RemoteFile("https://ommer-lab.com/files/latent-diffusion/lsun_bedrooms.zip", member="model.ckpt"),),
    homepage="https://github.com/CompVis/latent-diffusion"))

register(Entry(
    "coco-captions-val2014", "captions_val2014.json", "MS-COCO 2014 validation captions (COCO annotation JSON)",
    "FEWSTEP_COCO_CAPTIONS",
    (RemoteFile("http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                member="annotations/captions_val2014.json"),),
    homepage="https://cocodataset.org/#download"))

register(Entry(
    "drawbench-prompts", "drawbench.csv", "DrawBench prompts (CSV with a 'Prompts' column, or one prompt per line)",
    "FEWSTEP_DRAWBENCH",
    (RemoteFile("https://docs.google.com/spreadsheets/d/1y7nAbmR4FREi6npB1u-Bo3GFdwdOPYJc617rBOxIRHY/export?format=csv"),),
    homepage="https://imagen.research.google/"))

# ---- the real metrics' files: TF-Inception, CLIP, HPSv2.1, ImageReward, the BERT vocabulary -----------------------
_HF = "https://huggingface.co/{repo}/resolve/main/{file}"

for _entry in [
    Entry("inception-2015-12-05", "inception-2015-12-05.pt",
          "TF-Inception 2015-12-05 as TorchScript (NVIDIA's port; EDM/StyleGAN FID feature network)",
          "FEWSTEP_INCEPTION",
          (RemoteFile("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                      "inception-2015-12-05.pt"),),
          homepage="https://github.com/NVlabs/stylegan2-ada-pytorch"),
    Entry("clip-vit-g-14", "open_clip-ViT-g-14-laion2b_s34b_b88k.bin",
          "OpenCLIP ViT-g-14 (laion2b_s34b_b88k) weights, the CLIP score backbone of the paper's SD-v1.5 code",
          "FEWSTEP_CLIP_VIT_G_14",
          (RemoteFile(_HF.format(repo="laion/CLIP-ViT-g-14-laion2B-s34B-b88K", file="open_clip_pytorch_model.bin")),),
          homepage="https://huggingface.co/laion/CLIP-ViT-g-14-laion2B-s34B-b88K"),
    Entry("clip-vit-b-16-openai", "open_clip-ViT-B-16-openai.bin",
          "OpenAI CLIP ViT-B/16 weights in OpenCLIP format, the CLIP score backbone of the paper's FLUX code",
          "FEWSTEP_CLIP_VIT_B_16",
          (RemoteFile(_HF.format(repo="timm/vit_base_patch16_clip_224.openai", file="open_clip_pytorch_model.bin")),),
          homepage="https://huggingface.co/timm/vit_base_patch16_clip_224.openai"),
    Entry("hpsv2.1", "HPS_v2.1_compressed.pt", "HPSv2.1 checkpoint (OpenCLIP ViT-H-14 fine-tuned on human preferences)",
          "FEWSTEP_HPSV2",
          (RemoteFile(_HF.format(repo="xswu/HPSv2", file="HPS_v2.1_compressed.pt")),),
          homepage="https://github.com/tgxs002/HPSv2"),
    Entry("imagereward", "ImageReward.pt", "ImageReward v1.0 checkpoint (BLIP ViT-L + BERT + MLP head)",
          "FEWSTEP_IMAGEREWARD",
          (RemoteFile(_HF.format(repo="THUDM/ImageReward", file="ImageReward.pt")),),
          homepage="https://github.com/THUDM/ImageReward"),
    Entry("bert-base-uncased-vocab", "bert-base-uncased-vocab.txt",
          "the bert-base-uncased WordPiece vocabulary (vocab.txt) that ImageReward's BLIP tokenizer uses",
          "FEWSTEP_BERT_VOCAB",
          (RemoteFile(_HF.format(repo="google-bert/bert-base-uncased", file="vocab.txt")),),
          homepage="https://huggingface.co/google-bert/bert-base-uncased"),
]:
    register(_entry)
