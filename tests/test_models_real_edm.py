"""EDM checkpoints: the restricted unpickler on pickles built here in EDM's persistence format, and the adapter."""
from __future__ import annotations

import collections
import io
import pickle
import sys
import types

import numpy as np
import pytest
import torch

import solvers
from bench.models import edm, edm_pickle
from bench.models.edm_pickle import UnsafePickleError

# A tiny EDM-style network module: the source a persistent pickle carries (like EDM's training/networks.py).
NET_SRC = '''
import numpy as np
import torch
from torch_utils import persistence
from torch.nn.functional import silu


@persistence.persistent_class
class TinyUNet(torch.nn.Module):
    def __init__(self, channels, label_dim=0, width=8):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.emb = torch.nn.Linear(1, width)
        self.label = torch.nn.Linear(label_dim, width, bias=False) if label_dim else None
        self.blocks = torch.nn.ModuleDict({"a": torch.nn.Conv2d(width, width, 3, padding=1)})
        self.conv_out = torch.nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, noise_labels, class_labels=None):
        emb = self.emb(noise_labels.reshape(-1, 1))
        if self.label is not None:
            emb = emb + self.label(class_labels * np.sqrt(self.label.in_features))
        h = silu(self.conv_in(x) + emb[:, :, None, None])
        h = silu(self.blocks["a"](h))
        return self.conv_out(h)


@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, sigma_data=0.5, model_type="TinyUNet"):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_min = 0
        self.sigma_max = float("inf")
        self.sigma_data = sigma_data
        self.model = globals()[model_type](img_channels, label_dim)

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        F_x = self.model(c_in * x, (sigma.log() / 4).flatten(), class_labels=class_labels)
        return c_skip * x + c_out * F_x
'''

# An object stored beside the network (like EDM's augment pipe) whose module needs torch_utils.misc.
AUG_SRC = '''
import torch
from torch_utils import persistence
from torch_utils import misc

@persistence.persistent_class
class AugmentPipe:
    def __init__(self, p):
        self.p = p
'''


def _reconstruct_persistent_obj(meta):  # only its name matters: pickles refer to it by module and name
    raise AssertionError("the test never unpickles through this")


def _persistence(monkeypatch):
    """Install a fake torch_utils.persistence for pickling: its decorator makes instances pickle like EDM's."""
    persistence = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    def persistent_class(cls):
        def __reduce__(self):
            meta = dict(type="class", version=6, module_src=cls._src, class_name=cls.__name__,
                        state=dict(self.__dict__))
            return (_reconstruct_persistent_obj, (meta,))
        cls.__reduce__ = __reduce__
        cls.__reduce_ex__ = lambda self, proto: __reduce__(self)
        return cls

    persistence.persistent_class = persistent_class
    pkg = types.ModuleType("torch_utils")
    pkg.persistence = persistence
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)
    monkeypatch.setitem(sys.modules, "torch_utils.misc", types.ModuleType("torch_utils.misc"))
    pkg.misc = sys.modules["torch_utils.misc"]


def _exec(src, name):
    mod = types.ModuleType(name)
    exec(compile(src, name, "exec"), mod.__dict__)
    for v in list(mod.__dict__.values()):
        if isinstance(v, type) and v.__module__ == name:
            v._src = src
    return mod


def build_pickle(tmp_path, monkeypatch, label_dim=0, res=8, extra=True):
    _persistence(monkeypatch)
    torch.manual_seed(0)
    net = _exec(NET_SRC, "test_embedded_net").EDMPrecond(res, 3, label_dim=label_dim,
                                                          sigma_data=np.float64(0.5)).eval()   # a numpy scalar
    data = {"ema": net}
    if extra:
        data["augment_pipe"] = _exec(AUG_SRC, "test_embedded_aug").AugmentPipe(0.12)
    path = tmp_path / "edm-test.pkl"
    path.write_bytes(pickle.dumps(data))
    return path, net


def test_loads_test_built_pickle_and_matches_the_original(tmp_path, monkeypatch):
    path, net = build_pickle(tmp_path, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch_utils")              # nothing of the fake module is needed to load
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    data = edm_pickle.load(path)
    assert type(data["ema"]).__name__ == "EDMPrecond" and type(data["ema"]) is not type(net)
    assert isinstance(data["augment_pipe"], edm_pickle.Skipped) and "misc" in data["augment_pipe"].reason
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 20.0])
    torch.testing.assert_close(data["ema"](x, sigma), net(x, sigma), rtol=0, atol=0)


def _malicious_pickle(payload_src=None, global_=None):
    class Evil:
        def __reduce__(self):
            if global_:
                return global_
            meta = dict(type="class", version=6, module_src=payload_src, class_name="X", state={})
            return (_reconstruct_persistent_obj, (meta,))
    return pickle.dumps({"ema": Evil()})


@pytest.mark.parametrize("src, words", [
    ("import os\nos.system('touch {flag}')\nclass X: pass\n", "imports 'os'"),
    ("import torch\neval(\"open('{flag}', 'w')\")\nclass X: pass\n", "forbidden name 'eval'"),
    ("import torch\nx = ().__class__.__base__.__subclasses__()\nclass X: pass\n", "forbidden attribute"),
    ("import torch\ntorch.hub.load('x', 'y')\nclass X: pass\n", "forbidden attribute '(hub|load)'"),
    ("from torch import hub\nclass X: pass\n", "imports the forbidden name 'hub' from torch"),
    ("from torch_utils import misc\nimport subprocess\nclass X: pass\n", "imports 'subprocess'"),
])
def test_refuses_malicious_embedded_source(tmp_path, monkeypatch, src, words):
    _persistence(monkeypatch)
    flag = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_malicious_pickle(src.format(flag=flag)))
    with pytest.raises(UnsafePickleError, match=words):
        edm_pickle.load(path)
    assert not flag.exists()


def test_refuses_globals_off_the_allow_list(tmp_path):
    import os
    flag = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_malicious_pickle(global_=(os.system, (f"touch {flag}",))))
    with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|os)\.system"):
        edm_pickle.load(path)
    assert not flag.exists()
    path.write_bytes(pickle.dumps({"ema": types.SimpleNamespace(a=1)}))
    with pytest.raises(UnsafePickleError, match="types.SimpleNamespace"):
        edm_pickle.load(path)


def test_adapter_missing_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_WEIGHTS", str(tmp_path))
    monkeypatch.delenv("FEWSTEP_EDM_CIFAR10", raising=False)
    monkeypatch.setenv("FEWSTEP_CONFIG", str(tmp_path / "none.toml"))
    m = edm.cifar10()
    assert m.requirements()[0].path == tmp_path / "edm-cifar10-32x32-uncond-vp.pkl"
    with pytest.raises(FileNotFoundError, match=r"edm-cifar10-32x32-uncond-vp\.pkl.*FEWSTEP_EDM_CIFAR10.*download"):
        m.denoiser()


def test_adapter_runs_solvers_on_a_conditional_tiny_network(tmp_path, monkeypatch):
    path, net = build_pickle(tmp_path, monkeypatch, label_dim=10, res=8, extra=False)
    monkeypatch.setenv("FEWSTEP_EDM_IMAGENET64", str(path))
    m = edm.EDMModel("tiny", "edm-imagenet64", (3, 8, 8), label_dim=10, released_key="imagenet64")
    seeds = [3, 4, 5]
    cond = m.conditions(seeds)
    assert cond.shape == (3, 10) and torch.equal(cond.sum(1), torch.ones(3))
    torch.testing.assert_close(cond[1:], m.conditions([4, 5]))          # labels depend on the seed only
    D = m.denoiser(cond)
    x_T = m.noise(seeds)
    assert x_T.shape == (3, 3, 8, 8) and abs(float(x_T.std()) - 80) < 20
    sigma = torch.full((3,), 2.5)
    torch.testing.assert_close(D(x_T, sigma), net(x_T, sigma, class_labels=cond))
    grid = m.grid(5)
    assert float(grid[0]) == pytest.approx(80.0) and float(grid[-1]) == pytest.approx(0.002)
    for name in ("ipndm", "dpm_solver_pp"):
        out = solvers.get(name).sample(D, x_T, grid, afs=True)
        assert out.shape == x_T.shape and torch.isfinite(out).all()
    assert m.decode(out).abs().max() <= 1


def test_adapter_refuses_a_network_of_the_wrong_shape(tmp_path, monkeypatch):
    path, _ = build_pickle(tmp_path, monkeypatch, res=8, extra=False)
    m = edm.cifar10(path=path)
    with pytest.raises(ValueError, match=r"expects \(3, 32, 32\)"):
        m.denoiser()


class _LegacyStorage:
    """Pickles like a torch 1.x FloatStorage: torch.storage._load_from_bytes(<legacy torch.save bytes>)."""

    def __init__(self, values):
        import warnings
        warnings.simplefilter("ignore")
        st = torch.FloatStorage(len(values))
        for i, v in enumerate(values):
            st[i] = v
        self.buf = io.BytesIO()
        torch.save(st, self.buf, _use_new_zipfile_serialization=False)

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.buf.getvalue(),))


class _LegacyTensor:
    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (_LegacyStorage([1.0, 2.0, 3.0, 4.0]), 0, (2, 2), (2, 1), False, collections.OrderedDict()))


def test_reads_tensors_saved_by_old_torch_versions(tmp_path):
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps({"w": _LegacyTensor()}, protocol=2))
    assert torch.equal(edm_pickle.load(path)["w"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
