"""The project's EDM networks (bench.nets.edm) against NVIDIA's implementation, on random weights.

tests/data/edm_parity.pt holds NVIDIA's outputs (written by tests/data/make_edm_parity.py from an EDM checkout);
the weights are recomputed here from their names. With $FEWSTEP_EDM_REPO pointing at an EDM checkout, the second
test also pickles NVIDIA's networks with EDM's own persistence code and loads those pickles.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.models import edm_pickle
from bench.nets import edm as nets

DATA = Path(__file__).with_name("data")
_spec = importlib.util.spec_from_file_location("make_edm_parity", DATA / "make_edm_parity.py")
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)
REFERENCE = torch.load(DATA / "edm_parity.pt", weights_only=True)


def test_the_reference_covers_every_architecture_and_preconditioning():
    assert {v["class_name"] for v in REFERENCE.values()} == set(nets.PRECONDITIONINGS)
    assert {v["kwargs"]["model_type"] for v in REFERENCE.values()} == set(nets.ARCHITECTURES)
    assert set(REFERENCE) == set(parity.CONFIGS)


@pytest.mark.parametrize("key", sorted(parity.CONFIGS))
def test_outputs_equal_nvidias_to_1e_6(key):
    ref = REFERENCE[key]
    net = parity.randomise(nets.PRECONDITIONINGS[ref["class_name"]](**ref["kwargs"]))
    x, sigma, labels = parity.inputs(parity.CONFIGS[key])
    assert torch.equal(x, ref["x"]) and torch.equal(sigma, ref["sigma"])
    with torch.no_grad():
        out = net(x, sigma, labels).double()
    scale = float(ref["output"].abs().max())
    assert float((out - ref["output"]).abs().max()) <= 1e-6 * scale
    # the reference is sensitive to the network: the same net with other weights is far from it
    other = parity.randomise(nets.PRECONDITIONINGS[ref["class_name"]](**ref["kwargs"]))
    with torch.no_grad():
        other.model.map_layer0.weight.mul_(-1)
        assert float((other(x, sigma, labels).double() - ref["output"]).abs().max()) > 1e-3 * scale


@pytest.mark.skipif(not os.environ.get("FEWSTEP_EDM_REPO"), reason="set FEWSTEP_EDM_REPO to an NVlabs/edm checkout")
def test_pickles_written_by_nvidias_code_load_and_match(tmp_path):
    script = f"""
import pickle, sys, torch
sys.path.insert(0, {os.environ["FEWSTEP_EDM_REPO"]!r})
sys.path.insert(0, {str(DATA)!r})
import make_edm_parity as p
from training import networks
for key, cfg in p.CONFIGS.items():
    kw = {{k: v for k, v in cfg.items() if k != "class_name"}}
    net = p.randomise(getattr(networks, cfg["class_name"])(**kw))
    open({str(tmp_path)!r} + f"/{{key}}.pkl", "wb").write(pickle.dumps(dict(ema=net, augment_pipe=None)))
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    for key, config in parity.CONFIGS.items():
        net = edm_pickle.load_network(tmp_path / f"{key}.pkl")
        x, sigma, labels = parity.inputs(config)
        with torch.no_grad():
            torch.testing.assert_close(net(x, sigma, labels).double(), REFERENCE[key]["output"], rtol=0, atol=1e-6)


def test_unsupported_options_are_one_line():
    with pytest.raises(ValueError, match="unsupported EDM model_type 'Other'"):
        nets.EDMPrecond(8, 3, model_type="Other")
    with pytest.raises(ValueError, match="unsupported embedding"):
        nets.VPPrecond(8, 3, embedding_type="sinusoidal", channel_mult=[1])
