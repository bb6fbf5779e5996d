"""`python -m bench fid-ref`: FID reference statistics (mu, sigma of TF-Inception pool features, float64, .npz as
EDM's fid-refs) from a folder of real images, by the recipe of the model they serve.

  --recipe flux   DyWeight's FLUX protocol (dyweight_flux/preprocess/prepare_coco_fid_subset.py): the 30k val2014
                  images of the seed-2024 subset (`conditions.coco_fid_subset_images` of --captions, the COCO
                  captions_val2014.json), each at its native resolution (the network resizes to 299 itself).
  --recipe sd     the Stable Diffusion rows: the images named by --captions (a CSV with an `image_id` column, as
                  MS-COCO_val2014_30k_captions.csv; files COCO_val2014_<id:012d>.jpg), or every image of the folder
                  without --captions; each centre-cropped to a square and resized to 512x512 (bicubic), the size SD
                  samples at. The DyWeight repository does not pin this recipe; it is this project's choice.
  --recipe folder every image of the folder, as it is (EDM's `fid.py ref`).

Images are read with Pillow, converted to RGB uint8 and fed one at a time (native sizes differ) on --device.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from bench.cli import UsageError

HELP = "compute FID reference statistics from real images (recipes: flux, sd, folder)"
RECIPES = ("flux", "sd", "folder")
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", required=True, help=f"one of {', '.join(RECIPES)}")
    parser.add_argument("--images", type=Path, required=True, help="folder of the real images (e.g. val2014/)")
    parser.add_argument("--captions", type=Path, help="flux: captions_val2014.json; sd: the 30k captions CSV")
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--num", type=int, default=30_000, help="flux: the subset size (default 30000)")
    parser.add_argument("--inception", type=Path, help="TF-Inception TorchScript (default: the weights entry)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def image_files(recipe: str, images: Path, captions: Path | None, num: int) -> list[Path]:
    """The image files a recipe reads, in order."""
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist")
    if recipe == "flux":
        if captions is None:
            raise UsageError("--recipe flux needs --captions captions_val2014.json (the subset is drawn from it)")
        from bench.models.conditions import coco_fid_subset_images
        files = [images / name for name, _ in coco_fid_subset_images(captions, num)]
    elif recipe == "sd" and captions is not None:
        with captions.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or "image_id" not in rows[0]:
            raise UsageError(f"{captions}: no 'image_id' column (found {list(rows[0]) if rows else []})")
        files = [images / f"COCO_val2014_{int(r['image_id']):012d}.jpg" for r in rows]
    else:
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in SUFFIXES)
    missing = [p for p in files if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(files)} images are missing, e.g. {missing[0]}")
    if not files:
        raise UsageError(f"no images ({', '.join(SUFFIXES)}) in {images}")
    return files


def read_image(path: Path, recipe: str) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] from uint8 RGB; the sd recipe centre-crops and resizes to 512x512."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("bench fid-ref reads images with Pillow: pip install pillow") from None
    im = Image.open(path).convert("RGB")
    if recipe == "sd":
        w, h = im.size
        side = min(w, h)
        im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        im = im.resize((512, 512), Image.BICUBIC)
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(im.size[1], im.size[0], 3)
    return x.permute(2, 0, 1)[None].to(torch.float32) / 127.5 - 1


def statistics(files: list[Path], recipe: str, inception=None, device: str = "cpu"):
    from bench.metrics.features import InceptionFeatures, inception_requirement
    from bench.metrics.frechet import RunningStatistics
    req = inception_requirement(inception)
    if not req.present:
        raise FileNotFoundError(req.missing_message())
    net, stats = InceptionFeatures(req.path, device=device), None
    with torch.no_grad():
        for path in files:
            features = net(read_image(path, recipe)).cpu().numpy()
            stats = stats or RunningStatistics(features.shape[1])       # 2048 for TF-Inception
            stats.update(features)
    return stats.result()


def main(args) -> int:
    if args.recipe not in RECIPES:
        raise UsageError(f"unknown recipe {args.recipe!r}; accepted: {', '.join(RECIPES)}")
    from bench.metrics.frechet import save_statistics
    from bench.models import devices
    files = image_files(args.recipe, args.images, args.captions, args.num)
    mu, sigma = statistics(files, args.recipe, args.inception, str(devices.device(args.device)))
    save_statistics(args.out, mu, sigma)
    print(f"{args.out}: mu, sigma of {len(files)} images ({args.recipe} recipe)")
    return 0
