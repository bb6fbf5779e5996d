"""The local files the real metrics read, registered in the weights registry (bench/weights.py).

Each is looked up like any other entry (its environment variable, the paths config file, then $FEWSTEP_WEIGHTS)
and fetched by `python -m bench download NAME` from its official location. Nothing here reaches a hub at run time.
"""
from __future__ import annotations

from bench.weights import Entry, RemoteFile, names, register

_HF = "https://huggingface.co/{repo}/resolve/main/{file}"

ENTRIES = [
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
]

for _entry in ENTRIES:
    if _entry.name not in names():
        register(_entry)
