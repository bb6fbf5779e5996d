"""CLIP score and HPSv2.1 through OpenCLIP on a tiny random-weight CLIP saved to a local file (no downloads).

Runs where OpenCLIP (and so torchvision) is installed: the `metrics` tox env. Elsewhere the module is skipped.
"""
from __future__ import annotations

import json

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
T = pytest.importorskip("torchvision.transforms")

from bench.metrics.clip_score import CLIPScore  # noqa: E402
from bench.metrics.hpsv2 import HPSv21  # noqa: E402
from bench.metrics.text_image import pil_images, prompts_of  # noqa: E402
from bench.models.base import Cell, Model  # noqa: E402

TINY = "tiny-test-clip"
PROMPTS = ["a red cube on a table", "two dogs playing in the snow", "a watercolor of a lighthouse",
           "a photo of an astronaut riding a horse", "text that says hello"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Register a tiny OpenCLIP architecture and save random weights for it: (arch, state dict file)."""
    root = tmp_path_factory.mktemp("clip")
    (root / f"{TINY}.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}))
    open_clip.add_model_config(root / f"{TINY}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    path = root / "tiny-clip.bin"
    torch.save(model.state_dict(), path)
    return TINY, path


class PromptModel(Model):
    name = "tiny-t2i"
    shape = (3, 40, 40)


def cell(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    samples = torch.rand(n, 3, 40, 40, generator=g) * 2 - 1
    return Cell(model=PromptModel(), samples=samples, conditions=PROMPTS[:n])


def reference_cosines(arch, path, c, transform=None):
    """Independent route: the OpenCLIP model's own forward (normalised features) on the same PIL images."""
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path))
    model.eval()
    preprocess = transform or preprocess
    tokenizer = open_clip.get_tokenizer(arch)
    with torch.no_grad():
        images = torch.stack([preprocess(im) for im in pil_images(c.samples)])
        f_img, f_txt, _ = model(images, tokenizer(prompts_of(c)))
    return torch.diagonal(f_img @ f_txt.T).double()


def test_clip_score_is_100_times_cosine(tiny_clip):
    arch, path = tiny_clip
    c = cell()
    metric = CLIPScore(arch=arch, weights=path, batch_size=2)
    cos = reference_cosines(arch, path, c)
    per_sample = metric.scores(c.samples, prompts_of(c))
    torch.testing.assert_close(per_sample, 100 * cos, rtol=1e-4, atol=1e-4)
    assert metric.compute(c) == pytest.approx(float(100 * cos.mean()), abs=1e-4)


def test_clip_score_can_clip_negative_cosines(tiny_clip):
    arch, path = tiny_clip
    c = cell()
    cos = reference_cosines(arch, path, c)
    clipped = CLIPScore(arch=arch, weights=path, clip_negative=True).scores(c.samples, prompts_of(c))
    torch.testing.assert_close(clipped, 100 * cos.clamp(min=0), rtol=1e-4, atol=1e-4)


def test_clip_model_is_loaded_once(tiny_clip, monkeypatch):
    arch, path = tiny_clip
    metric = CLIPScore(arch=arch, weights=path, batch_size=2)
    calls = []
    original = metric.load
    monkeypatch.setattr(metric, "load", lambda: calls.append(1) or original())
    metric.compute(cell())
    metric.compute(cell(seed=1))
    assert len(calls) == 1


def test_clip_defaults_to_the_papers_backbone_and_names_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_WEIGHTS", str(tmp_path))
    monkeypatch.delenv("FEWSTEP_CLIP_VIT_G_14", raising=False)
    monkeypatch.setenv("FEWSTEP_CONFIG", str(tmp_path / "none.toml"))
    metric = CLIPScore()
    assert metric.arch == "ViT-g-14"
    (req,) = metric.requirements(PromptModel())
    assert not req.present and "FEWSTEP_CLIP_VIT_G_14" in req.missing_message()
    with pytest.raises(FileNotFoundError, match="open_clip-ViT-g-14-laion2b_s34b_b88k.bin"):
        metric.compute(cell())


def test_prompts_are_required():
    c = cell()
    c.conditions = None
    with pytest.raises(ValueError, match="no prompts"):
        prompts_of(c)


def test_hps_is_the_cosine_of_the_hps_checkpoint(tiny_clip, tmp_path):
    arch, path = tiny_clip
    hps_file = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": torch.load(path, weights_only=True)}, hps_file)
    c = cell()
    metric = HPSv21(weights=hps_file, arch=arch, batch_size=3)
    # hpsv2's preprocess_val: to tensor first, then resize the tensor (unlike OpenCLIP, which resizes the PIL image)
    hpsv2_val = T.Compose([T.ToTensor(), T.Resize(32, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                           T.CenterCrop(32), T.Normalize((0.48145466, 0.4578275, 0.40821073),
                                                         (0.26862954, 0.26130258, 0.27577711))])
    cos = reference_cosines(arch, path, c, hpsv2_val)
    assert not torch.allclose(cos, reference_cosines(arch, path, c), atol=1e-4)     # the transforms do differ
    torch.testing.assert_close(metric.scores(c.samples, prompts_of(c)), cos, rtol=1e-5, atol=1e-5)
    assert metric.compute(c) == pytest.approx(float(cos.mean()), abs=1e-5)


def test_hps_refuses_a_foreign_checkpoint(tiny_clip, tmp_path):
    arch, _ = tiny_clip
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}}, bad)
    with pytest.raises(ValueError, match="bad.pt: the HPS checkpoint does not fit the architecture"):
        HPSv21(weights=bad, arch=arch).compute(cell())
    with pytest.raises(FileNotFoundError, match="HPS_v2.1_compressed.pt"):
        HPSv21(weights=tmp_path / "HPS_v2.1_compressed.pt", arch=arch).compute(cell())
