"""ImageReward from an ImageReward-format checkpoint with our own module, on a tiny random-weight checkpoint and a
tiny local WordPiece vocabulary (no hub). The expected values come from an independent plain-torch transcription of
ImageReward's forward (BLIP ViT -> BERT with cross-attention -> MLP -> standardisation) reading the checkpoint's
original key names, so a wrong key mapping, LayerNorm epsilon, mask or token layout fails here.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from bench.metrics.image_reward import IMAGE_MEAN, IMAGE_STD, REWARD_MEAN, REWARD_STD, ImageReward  # noqa: E402
from bench.metrics.text_image import pil_images  # noqa: E402
from bench.models.base import Cell, Model  # noqa: E402

WORDS = ["a", "red", "cube", "on", "the", "table", "two", "dogs", "in", "snow", "photo", "of", "cat"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PROMPTS = ["A red cube on the table", "two dogs in the snow", "a photo of a cat"]
VW, VDEPTH, PATCH, SIZE = 128, 2, 16, 32          # vision width (2 heads of 64), depth, patch, image size
TW, TDEPTH, TMAX = 128, 2, 40                       # text width, depth, positions


def tiny_checkpoint(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix, width, out):
        out[prefix + ".weight"] = 1 + r(width)
        out[prefix + ".bias"] = r(width)

    def lin(prefix, n_in, n_out, out):
        out[prefix + ".weight"] = r(n_out, n_in, scale=n_in ** -0.5)
        out[prefix + ".bias"] = r(n_out)

    s: dict = {}
    v = "blip.visual_encoder."
    s[v + "cls_token"] = r(1, 1, VW)
    s[v + "pos_embed"] = r(1, (SIZE // PATCH) ** 2 + 1, VW)
    s[v + "patch_embed.proj.weight"] = r(VW, 3, PATCH, PATCH, scale=0.02)
    s[v + "patch_embed.proj.bias"] = r(VW)
    for i in range(VDEPTH):
        b = f"{v}blocks.{i}."
        ln(b + "norm1", VW, s), ln(b + "norm2", VW, s)
        lin(b + "attn.qkv", VW, 3 * VW, s), lin(b + "attn.proj", VW, VW, s)
        lin(b + "mlp.fc1", VW, 4 * VW, s), lin(b + "mlp.fc2", 4 * VW, VW, s)
    ln(v + "norm", VW, s)
    t = "blip.text_encoder."
    vocab = len(SPECIAL) + len(WORDS) + 2          # + [DEC] and [ENC], as BLIP's resized embeddings
    s[t + "embeddings.word_embeddings.weight"] = r(vocab, TW, scale=0.5)
    s[t + "embeddings.position_embeddings.weight"] = r(TMAX, TW, scale=0.5)
    s[t + "embeddings.position_ids"] = torch.arange(TMAX)[None]
    ln(t + "embeddings.LayerNorm", TW, s)
    for i in range(TDEPTH):
        b = f"{t}encoder.layer.{i}."
        for att, kv_width in (("attention", TW), ("crossattention", VW)):
            lin(b + att + ".self.query", TW, TW, s)
            lin(b + att + ".self.key", kv_width, TW, s)
            lin(b + att + ".self.value", kv_width, TW, s)
            lin(b + att + ".output.dense", TW, TW, s)
            ln(b + att + ".output.LayerNorm", TW, s)
        lin(b + "intermediate.dense", TW, 4 * TW, s)
        lin(b + "output.dense", 4 * TW, TW, s)
        ln(b + "output.LayerNorm", TW, s)
    for i, (a, o) in zip((0, 2, 4, 6, 7), ((TW, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        lin(f"mlp.layers.{i}", a, o, s)
    lin("blip.vision_proj", VW, 256, s)            # present in the real file, unused by the score
    return s


# --- the independent transcription ------------------------------------------------------------------------------
def attention(x_q, x_kv, s, p, heads, mask=None):
    q, k, v = (F.linear(x, s[f"{p}.{n}.weight"], s[f"{p}.{n}.bias"])
               for x, n in ((x_q, "query"), (x_kv, "key"), (x_kv, "value")))
    B, Lq, D = q.shape
    split = lambda y: y.view(B, y.shape[1], heads, D // heads).transpose(1, 2)  # noqa: E731
    logits = split(q) @ split(k).transpose(-1, -2) / (D // heads) ** 0.5
    if mask is not None:
        logits = logits + (1.0 - mask[:, None, None, :].float()) * -1e9
    return (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(B, Lq, D)


def reference_reward(s, pixels, ids, mask):
    v = "blip.visual_encoder."
    x = F.conv2d(pixels, s[v + "patch_embed.proj.weight"], s[v + "patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s[v + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + s[v + "pos_embed"]
    for i in range(VDEPTH):
        b = f"{v}blocks.{i}."
        h = F.layer_norm(x, (VW,), s[b + "norm1.weight"], s[b + "norm1.bias"], eps=1e-6)
        B, N, D = h.shape
        qkv = F.linear(h, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"])
        qkv = qkv.view(B, N, 3, 2, D // 2).permute(2, 0, 3, 1, 4)
        a = ((qkv[0] @ qkv[1].transpose(-1, -2)) * (D // 2) ** -0.5).softmax(-1) @ qkv[2]
        x = x + F.linear(a.transpose(1, 2).reshape(B, N, D), s[b + "attn.proj.weight"], s[b + "attn.proj.bias"])
        h = F.layer_norm(x, (VW,), s[b + "norm2.weight"], s[b + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"])),
                     s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"])
        x = x + h
    image = F.layer_norm(x, (VW,), s[v + "norm.weight"], s[v + "norm.bias"], eps=1e-6)

    t = "blip.text_encoder."
    lnorm = lambda y, p: F.layer_norm(y, (TW,), s[p + ".weight"], s[p + ".bias"], eps=1e-12)  # noqa: E731
    h = s[t + "embeddings.word_embeddings.weight"][ids] + s[t + "embeddings.position_embeddings.weight"][:ids.shape[1]]
    h = lnorm(h, t + "embeddings.LayerNorm")
    for i in range(TDEPTH):
        b = f"{t}encoder.layer.{i}."
        for att, kv, m in (("attention", None, mask), ("crossattention", image, None)):
            a = attention(h, h if kv is None else kv, s, b + att + ".self", TW // 64, m)
            h = lnorm(h + F.linear(a, s[b + att + ".output.dense.weight"], s[b + att + ".output.dense.bias"]),
                      b + att + ".output.LayerNorm")
        f = F.gelu(F.linear(h, s[b + "intermediate.dense.weight"], s[b + "intermediate.dense.bias"]))
        h = lnorm(h + F.linear(f, s[b + "output.dense.weight"], s[b + "output.dense.bias"]), b + "output.LayerNorm")
    r = h[:, 0]
    for i in (0, 2, 4, 6, 7):
        r = F.linear(r, s[f"mlp.layers.{i}.weight"], s[f"mlp.layers.{i}.bias"])
    return ((r - REWARD_MEAN) / REWARD_STD).squeeze(-1)


def reference_tokens(prompts):
    """[CLS] words [SEP] then [PAD] to 35, by hand from the tiny vocabulary."""
    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    ids = torch.zeros(len(prompts), 35, dtype=torch.long)
    mask = torch.zeros(len(prompts), 35, dtype=torch.long)
    for row, p in enumerate(prompts):
        toks = [vocab["[CLS]"]] + [vocab[w] for w in p.lower().split()] + [vocab["[SEP]"]]
        ids[row, :len(toks)] = torch.tensor(toks)
        mask[row, :len(toks)] = 1
    return ids, mask


# --- the tests ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagereward")
    state = tiny_checkpoint()
    torch.save(state, root / "ImageReward.pt")
    (root / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    return state, root / "ImageReward.pt", root / "vocab.txt"


class PromptModel(Model):
    name = "tiny-t2i"
    shape = (3, SIZE, SIZE)


def test_image_reward_matches_the_transcribed_formula(files):
    state, ckpt, vocab = files
    samples = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    metric = ImageReward(weights=ckpt, vocab=vocab, batch_size=2)
    got = metric.scores(samples, PROMPTS)

    # square images of the network's size: resize and crop are the identity, so pixels are the normalised uint8s
    pixels = torch.stack([torch.from_numpy(__import__("numpy").asarray(im, dtype="float32") / 255).permute(2, 0, 1)
                          for im in pil_images(samples)])
    pixels = (pixels - torch.tensor(IMAGE_MEAN)[:, None, None]) / torch.tensor(IMAGE_STD)[:, None, None]
    ids, mask = reference_tokens(PROMPTS)
    with torch.no_grad():
        expected = reference_reward(state, pixels, ids, mask).double()
    assert expected.std() > 1e-3                   # the prompts and images make a difference
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    cell = Cell(model=PromptModel(), samples=samples, conditions=PROMPTS)
    assert metric.compute(cell) == pytest.approx(float(expected.mean()), abs=1e-4)


def test_tokenizer_is_local_and_pads_to_35(files):
    _, ckpt, vocab = files
    *_, tokenizer = ImageReward(weights=ckpt, vocab=vocab).scorer()
    ids, mask = reference_tokens(PROMPTS)
    out = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    torch.testing.assert_close(out.input_ids, ids)
    torch.testing.assert_close(out.attention_mask, mask)
    first = len(SPECIAL) + len(WORDS)
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [first, first + 1]


def test_larger_images_are_resized_and_cropped(files):
    _, ckpt, vocab = files
    metric = ImageReward(weights=ckpt, vocab=vocab)
    big = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert metric.scores(big, PROMPTS[:2]).shape == (2,)


def test_supports_text_to_image_models_only():
    class TextToImage(PromptModel):
        def prompts(self):
            return PROMPTS
    assert ImageReward().supports(TextToImage()) and not ImageReward().supports(PromptModel())


def test_missing_files_are_named(tmp_path, files):
    _, ckpt, _ = files
    with pytest.raises(FileNotFoundError, match="ImageReward.pt"):
        ImageReward(weights=tmp_path / "ImageReward.pt", vocab=tmp_path / "vocab.txt").scorer()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        ImageReward(weights=ckpt, vocab=tmp_path / "vocab.txt").scorer()
    bad = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(1)}, bad)
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ValueError, match="not an ImageReward checkpoint"):
        ImageReward(weights=bad, vocab=tmp_path / "vocab.txt").scorer()
