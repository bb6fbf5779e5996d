"""Writes tests/data/edm_parity.pt: outputs of NVIDIA's EDM networks (training/networks.py) on random weights.

    python tests/data/make_edm_parity.py /path/to/a/checkout/of/NVlabs/edm

The file holds numbers only: for each configuration the class name and constructor arguments, the inputs and
NVIDIA's output in float64. The weights are not stored: every tensor of the state dict except the fixed resampling
filters is `weights(name, shape)` below, which tests/test_edm_networks.py recomputes for the project's networks.
The configurations cover what the released checkpoints use, narrowed: DDPM++ (positional embedding) with EDM's
preconditioning, NCSN++ (Fourier embedding, residual encoder, skip decoder, [1, 3, 3, 1] filter) with VE, a
class-conditional DDPM++ with a skip encoder under VP, and a class-conditional ADM with EDM's preconditioning.
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import torch

CONFIGS = {
    "edm_ddpmpp": dict(class_name="EDMPrecond", img_resolution=16, img_channels=3, label_dim=0, model_type="SongUNet",
                       embedding_type="positional", encoder_type="standard", decoder_type="standard",
                       channel_mult_noise=1, resample_filter=[1, 1], model_channels=16, channel_mult=[1, 2, 2],
                       num_blocks=2, attn_resolutions=[8], dropout=0.13, augment_dim=9),
    "ve_ncsnpp": dict(class_name="VEPrecond", img_resolution=16, img_channels=3, label_dim=0, model_type="SongUNet",
                      embedding_type="fourier", encoder_type="residual", decoder_type="skip", channel_mult_noise=2,
                      resample_filter=[1, 3, 3, 1], model_channels=16, channel_mult=[1, 2, 2], num_blocks=1,
                      attn_resolutions=[8], dropout=0.1),
    "vp_ddpmpp_cond": dict(class_name="VPPrecond", img_resolution=8, img_channels=3, label_dim=5, model_type="SongUNet",
                           embedding_type="positional", encoder_type="skip", decoder_type="standard",
                           channel_mult_noise=1, resample_filter=[1, 1], model_channels=16, channel_mult=[1, 2],
                           num_blocks=1, attn_resolutions=[4]),
    "edm_adm_cond": dict(class_name="EDMPrecond", img_resolution=16, img_channels=3, label_dim=10,
                         model_type="DhariwalUNet", model_channels=32, channel_mult=[1, 2, 2], num_blocks=1,
                         attn_resolutions=[8, 4], dropout=0.1),
}
SIGMAS = [0.002, 0.3, 2.5, 80.0]


def weights(name: str, shape) -> torch.Tensor:
    """The test weight of a state-dict entry: N(0, 0.2^2) seeded by the name's CRC-32, rounded to float16."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return (torch.randn(tuple(shape), generator=gen) * 0.2).half().float()


def randomise(net: torch.nn.Module) -> torch.nn.Module:
    sd = net.state_dict()
    net.load_state_dict({k: v if k.endswith("resample_filter") else weights(k, v.shape) for k, v in sd.items()})
    return net.eval()


def inputs(config: dict):
    """x (float16-representable), sigma and one-hot labels (None when unconditional) for a configuration."""
    n, res = len(SIGMAS), config["img_resolution"]
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(n, config["img_channels"], res, res, generator=gen) * 3).half().float()
    labels = None
    if config["label_dim"]:
        labels = torch.nn.functional.one_hot(torch.arange(n) % config["label_dim"], config["label_dim"]).float()
    return x, torch.tensor(SIGMAS), labels


def main(edm_repo: str, out: Path) -> None:
    sys.path.insert(0, edm_repo)
    from training import networks  # NVIDIA's implementation, from the checkout given
    data = {}
    for key, config in CONFIGS.items():
        kwargs = {k: v for k, v in config.items() if k != "class_name"}
        net = randomise(getattr(networks, config["class_name"])(**kwargs))
        x, sigma, labels = inputs(config)
        with torch.no_grad():
            output = net(x, sigma, labels).double()
        data[key] = dict(class_name=config["class_name"], kwargs=kwargs, x=x, sigma=sigma, labels=labels,
                         output=output)
    torch.save(data, out)
    print(f"wrote {out}: {', '.join(data)}")


if __name__ == "__main__":
    main(sys.argv[1], Path(__file__).with_name("edm_parity.pt"))
