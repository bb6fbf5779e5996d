"""Training the digits networks: a few steps lower the loss; the command writes loadable weights and a record."""
from __future__ import annotations

import json

import torch

from bench.cli import main as cli
from bench.models.digits import load_unet
from bench.nets import train

TINY = dict(channels=8, mults=(1, 2), blocks=1, attn_res=())


def test_tiny_unet_run_lowers_the_loss():
    _, record = train.train_unet(steps=30, batch_size=32, unet=TINY, eval_every=30, progress=False)
    curve = record["curve"]
    assert curve["eval_step"] == [0, 30]
    assert curve["heldout_loss"][-1] < 0.95 * curve["heldout_loss"][0]
    assert record["steps"] == 30 and record["seed"] == 0


def test_tiny_unet_run_is_deterministic():
    a, _ = train.train_unet(steps=3, batch_size=8, unet=TINY, progress=False)
    b, _ = train.train_unet(steps=3, batch_size=8, unet=TINY, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_tiny_classifier_run_lowers_the_loss():
    _, record = train.train_classifier(steps=30, batch_size=32, eval_every=30, progress=False)
    assert record["curve"]["loss"][-1] < 0.8 * record["curve"]["loss"][0]


def test_train_model_command_writes_weights_and_record(tmp_path, capsys):
    assert cli(["train-model", "digits-unet", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path),
                "--no-progress"]) == 0
    record = json.loads((tmp_path / "unet.json").read_text())
    assert record["steps"] == 2 and record["sha256"] and "curve" in record and "data" in record
    net = load_unet(tmp_path / "unet.pt")
    out = net(torch.zeros(1, 1, 16, 16), torch.ones(1))
    assert out.shape == (1, 1, 16, 16) and torch.isfinite(out).all()


def test_train_model_rejects_unknown_network(capsys):
    assert cli(["train-model", "mnist-unet"]) == 2
    assert "accepted: digits-unet, digits-classifier" in capsys.readouterr().err
