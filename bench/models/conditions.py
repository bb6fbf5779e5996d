"""Conditions drawn per seed: class labels and text prompts.

A sample's condition depends only on its seed (one CPU generator per seed, as its noise does), so every solver, batch
size and run sees the same label or prompt for seed s. The generators are salted so that a condition is not the first
draw of the very stream that made the seed's noise.
"""
from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from solvers.errors import InputError

LABEL_SALT = 1 << 40
PROMPT_SALT = 2 << 40


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) + salt)


def class_labels(seeds: Sequence[int], num_classes: int) -> torch.Tensor:
    """One label per seed, uniform over num_classes: a (B,) long tensor."""
    return torch.tensor([int(torch.randint(num_classes, (1,), generator=_generator(s, LABEL_SALT)))
                         for s in seeds], dtype=torch.long)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """EDM's conditional networks read labels as one-hot rows (class_labels of shape (B, label_dim))."""
    return torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)


def load_prompts(path: str | Path) -> list[str]:
    """Read prompts from a COCO caption file (.json; the first caption of each image), a CSV with a
    'Prompts'/'prompt'/'caption'/'text' column, a .jsonl of {"prompt": ...} lines, or a text file with one prompt per
    line. Raises a one-line error naming the file when it holds no prompts."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "annotations" in data:        # COCO captions_*.json: one caption per image
            first = {}
            for a in sorted(data["annotations"], key=lambda a: a.get("id", 0)):
                first.setdefault(a.get("image_id", id(a)), a["caption"])
            prompts = list(first.values())
        elif isinstance(data, list):
            prompts = [p if isinstance(p, str) else p.get("caption") or p.get("prompt") for p in data]
        else:
            raise InputError(f"{path}: expected COCO annotations ({{'annotations': [...]}}) or a list of prompts")
    elif suffix == ".jsonl":
        prompts = [json.loads(line).get("prompt", "") for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        columns = {c.lower(): c for c in (rows[0].keys() if rows else [])}
        key = next((columns[c] for c in ("prompts", "prompt", "caption", "text") if c in columns), None)
        if key is None:
            raise InputError(f"{path}: no 'Prompts', 'prompt', 'caption' or 'text' column (found {list(columns)})")
        prompts = [r[key] for r in rows]
    else:
        prompts = path.read_text(encoding="utf-8").splitlines()
    prompts = [" ".join(p.split()) for p in prompts if p and p.strip()]
    if not prompts:
        raise InputError(f"{path} holds no prompts")
    return prompts


def coco_fid_subset(path: str | Path, n: int = 30_000, seed: int = 2024) -> list[str]:
    """The prompts of DyWeight's FLUX FID protocol (dyweight_flux/preprocess/prepare_coco_fid_subset.py): the
    captions of `coco_fid_subset_images`. Prompt i goes with generation seed 42 + i there (prompt_seed_start = 42)."""
    return [caption for _, caption in coco_fid_subset_images(path, n, seed)]


def coco_fid_subset_images(path: str | Path, n: int = 30_000, seed: int = 2024) -> list[tuple[str, str]]:
    """(image file name, caption) of the FLUX FID subset: from a COCO captions_val2014.json, one caption per image
    (the first in the annotation list), images in the file's `images` order; Python's random.seed(seed) shuffles
    their indices and the first n are kept. The reference also drops images whose file is missing on disk; with the
    complete val2014 folder (40,504 images) none is, which this assumes."""
    import random
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise InputError(f"{path}: the FLUX FID subset needs COCO's captions_val2014.json (images and annotations)")
    first: dict = {}
    for a in data["annotations"]:
        first.setdefault(a["image_id"], a["caption"])
    pool = [(im["file_name"], str(first.get(im["id"], "")).strip()) for im in data["images"]]
    pool = [p for p in pool if p[1]]
    if len(pool) < n:
        raise InputError(f"{path}: {len(pool)} captioned images, fewer than the {n} the subset takes")
    idxs = list(range(len(pool)))
    random.Random(seed).shuffle(idxs)          # the same order as the reference's random.seed(seed); shuffle
    return [pool[i] for i in idxs[:n]]


@lru_cache(maxsize=8)
def _prompt_set(name: str, path: str, stamp: float) -> tuple:
    if name == "coco30k_seed2024":
        return tuple(coco_fid_subset(path))
    return tuple(load_prompts(path))


def prompt_set(name: str, path: str | Path) -> list[str]:
    """The prompts of a named prompt set read from its file (cached per file and modification time)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    return list(_prompt_set(name, str(path), path.stat().st_mtime))


@lru_cache(maxsize=8)
def _permutation(n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(PROMPT_SALT))


def prompts_for_seeds(prompts: Sequence[str], seeds: Sequence[int], mode: str = "random",
                      seed_start: int = 0) -> list[str]:
    """The prompt of each seed. 'index': seed s takes entry s - seed_start (mod len) in file order, as the
    references do (SD: row s of MS-COCO_val2014_30k_captions.csv; FLUX: prompt i with generation seed 42 + i, so
    seed_start = 42). 'random': seed s takes entry s (mod len) of one fixed shuffle of the list, so seeds 0..n-1
    get n distinct prompts in random order. 'cycle': prompt s mod len in file order."""
    n = len(prompts)
    if mode == "index":
        return [prompts[(int(s) - seed_start) % n] for s in seeds]
    if mode == "random":
        perm = _permutation(n)
        return [prompts[int(perm[int(s) % n])] for s in seeds]
    if mode == "cycle":
        return [prompts[int(s) % n] for s in seeds]
    raise InputError(f"unknown prompt mode {mode!r}; accepted: index, random, cycle")


class Prompts:
    """The prompts of a batch of seeds; their text-encoder embeddings are computed on first use.

    `cond["prompts"]` or `cond.prompts` gives the strings (what prompt-image metrics read); any other key (e.g.
    "cond", "uncond" for Stable Diffusion, "pooled", "txt" for FLUX) triggers `encode(prompts)` once. So the
    conditions of a whole cell cost nothing until a denoiser needs them.
    """

    def __init__(self, prompts: Sequence[str], encode):
        self.prompts = list(prompts)
        self._encode = encode
        self._encoded = None

    def __len__(self) -> int:
        return len(self.prompts)

    def encoded(self) -> dict:
        if self._encoded is None:
            self._encoded = self._encode(self.prompts)
        return self._encoded

    def __getitem__(self, key: str):
        return self.prompts if key == "prompts" else self.encoded()[key]

    def select(self, idx) -> "Prompts":
        """The prompts of rows `idx` (a batch of a larger set, e.g. of distillation pairs): encoded lazily again, or
        by slicing the per-prompt entries (leading dimension = number of prompts) of an already encoded set."""
        idx = [int(i) for i in (idx.tolist() if isinstance(idx, torch.Tensor) else idx)]
        out = Prompts([self.prompts[i] for i in idx], self._encode)
        if self._encoded is not None:
            n = len(self.prompts)
            rows = torch.tensor(idx)
            out._encoded = {k: v[rows.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n
                            else v for k, v in self._encoded.items()}
        return out

    def __repr__(self) -> str:
        return f"Prompts({len(self.prompts)} prompts, encoded={self._encoded is not None})"
