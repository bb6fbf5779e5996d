"""EDM checkpoints: pickles in EDM's persistence format read as data and built from the project's networks, the
refusals, and the model adapter."""
from __future__ import annotations

import collections
import contextlib
import io
import pickle
import sys
import types

import pytest
import torch

import solvers
from bench.models import edm, edm_pickle
from bench.models.edm_pickle import UnsafePickleError
from bench.nets import edm as nets


def _reconstruct_persistent_obj(meta):  # pickles name it by module and name; the loader never calls it
    raise AssertionError("never called")


class EDMPickler(pickle.Pickler):
    """Writes networks as EDM's torch_utils.persistence does: every persistent object as
    _reconstruct_persistent_obj({type, version, module_src, class_name, state}), the state its __dict__ with the
    constructor's arguments."""

    def __init__(self, file, module_src: str, init: dict):
        super().__init__(file, protocol=4)
        self.module_src, self.init = module_src, init

    def reducer_override(self, obj):
        if not (isinstance(obj, torch.nn.Module) and type(obj).__module__ == nets.__name__):
            return NotImplemented
        args, kwargs = self.init.get(id(obj), ((), {}))
        state = dict(obj.__dict__, _init_args=args, _init_kwargs=kwargs)
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=type(obj).__name__, state=state)
        return _reconstruct_persistent_obj, (meta,)


@contextlib.contextmanager
def _persistence():
    """torch_utils.persistence while writing only (pickle checks that the function's name resolves); removed
    before anything is loaded, so nothing of it is there to import."""
    mod = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = mod.__name__
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg = types.ModuleType("torch_utils")
    pkg.persistence = mod
    sys.modules.update({"torch_utils": pkg, "torch_utils.persistence": mod})
    try:
        yield
    finally:
        sys.modules.pop("torch_utils", None)
        sys.modules.pop("torch_utils.persistence", None)


TINY = dict(img_resolution=8, img_channels=3, model_type="SongUNet", model_channels=8, channel_mult=[1, 2],
            num_blocks=1, attn_resolutions=[4], dropout=0.0)


def write_snapshot(path, net, kwargs, module_src="", extra=None):
    buf = io.BytesIO()
    with _persistence():
        EDMPickler(buf, module_src, {id(net): ((), dict(kwargs))}).dump(dict(ema=net, **(extra or {})))
    path.write_bytes(buf.getvalue())
    return path


def tiny_net(label_dim=0, seed=0, **overrides):
    kwargs = dict(TINY, label_dim=label_dim, **overrides)
    torch.manual_seed(seed)
    net = nets.EDMPrecond(**kwargs).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net, kwargs


def test_a_snapshot_loads_as_data_and_its_embedded_source_never_runs(tmp_path):
    flag = tmp_path / "ran"
    net, kwargs = tiny_net()
    src = f"open({str(flag)!r}, 'w').write('x')\nimport torch\nclass EDMPrecond(torch.nn.Module): pass\n"
    aug = nets.Linear(2, 2)           # another persistent object beside the network stays an inert record
    path = write_snapshot(tmp_path / "net.pkl", net, kwargs, src, extra=dict(augment_pipe=aug, dataset_kwargs={}))
    assert "torch_utils" not in sys.modules
    data = edm_pickle.load(path)
    assert isinstance(data["ema"], edm_pickle.Record) and isinstance(data["augment_pipe"], edm_pickle.Record)
    loaded = edm_pickle.load_network(path)
    assert type(loaded) is nets.EDMPrecond and not flag.exists()
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 20.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma), net(x, sigma), rtol=0, atol=0)


def test_exec_with_source_pickle_is_refused_and_writes_nothing(tmp_path):
    """The bypass of source vetting: torch.fx's _exec_with_source names nothing a deny-list would catch."""
    flag = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            from torch.fx.graph_module import _exec_with_source
            return _exec_with_source, (f"open({str(flag)!r}, 'w').write('x')", {})
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": Exploit()}))
    with pytest.raises(UnsafePickleError, match=r"refusing to load torch\.fx\.graph_module\._exec_with_source"):
        edm_pickle.load(path)
    with pytest.raises(ValueError, match=r"evil\.pkl: refusing to load torch\.fx") as e:
        edm_pickle.load_network(path)
    assert "\n" not in str(e.value) and not flag.exists()


def test_globals_off_the_allow_list_are_refused(tmp_path):
    import os
    flag = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {flag}",)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": Evil()}))
    with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|os)\.system"):
        edm_pickle.load(path)
    path.write_bytes(pickle.dumps({"ema": types.SimpleNamespace(a=1)}))
    with pytest.raises(UnsafePickleError, match="types.SimpleNamespace"):
        edm_pickle.load(path)
    assert not flag.exists()


def test_classes_the_project_does_not_implement_are_one_line(tmp_path):
    net, kwargs = tiny_net()
    path = write_snapshot(tmp_path / "net.pkl", net, kwargs)
    record = edm_pickle.load(path)["ema"]
    record.class_name = "iDDPMPrecond"
    with pytest.raises(ValueError, match="iDDPMPrecond, which the project does not implement; implemented: "
                                         "EDMPrecond, VPPrecond, VEPrecond"):
        edm_pickle.build(record)
    record = edm_pickle.load(path)["ema"]
    record.state["_modules"]["model"].state["_modules"]["map_layer0"].class_name = "MyLinear"
    with pytest.raises(ValueError, match="module model.map_layer0 is MyLinear in the file, Linear in the project"):
        edm_pickle.build(record)
    record = edm_pickle.load(path)["ema"]
    record.state["_init_kwargs"]["model_type"] = "UNetTransformer"
    with pytest.raises(ValueError, match="unsupported EDM model_type 'UNetTransformer'"):
        edm_pickle.build(record)
    record = edm_pickle.load(path)["ema"]
    record.state["_init_kwargs"]["model_channels"] = 16
    with pytest.raises(ValueError, match="module|do not fit"):
        edm_pickle.build(record)
    record = edm_pickle.load(path)["ema"]
    del record.state["_init_kwargs"]
    with pytest.raises(ValueError, match="holds no constructor arguments"):
        edm_pickle.build(record)


def test_garbage_and_wrong_content_are_one_line(tmp_path):
    path = tmp_path / "garbage.pkl"
    for content, words in [(b"\x80\x04garbage" * 10, "not a readable EDM network pickle"),
                           (b"", "not a readable EDM network pickle"),
                           (pickle.dumps([1, 2]), "expected an EDM snapshot"),
                           (pickle.dumps({"ema": 3}), "expected an EDM network, found a int")]:
        path.write_bytes(content)
        with pytest.raises(ValueError, match=words) as e:
            edm_pickle.load_network(path)
        assert "\n" not in str(e.value)


def test_adapter_missing_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_WEIGHTS", str(tmp_path))
    monkeypatch.delenv("FEWSTEP_EDM_CIFAR10", raising=False)
    monkeypatch.setenv("FEWSTEP_CONFIG", str(tmp_path / "none.toml"))
    m = edm.cifar10()
    assert m.requirements()[0].path == tmp_path / "edm-cifar10-32x32-uncond-vp.pkl"
    with pytest.raises(FileNotFoundError, match=r"edm-cifar10-32x32-uncond-vp\.pkl.*FEWSTEP_EDM_CIFAR10.*download"):
        m.denoiser()


def test_adapter_runs_solvers_on_a_conditional_tiny_network(tmp_path, monkeypatch):
    net, kwargs = tiny_net(label_dim=10)
    path = write_snapshot(tmp_path / "cond.pkl", net, kwargs)
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
    with torch.no_grad():
        torch.testing.assert_close(D(x_T, sigma), net(x_T, sigma, class_labels=cond))
    grid = m.grid(5)
    assert float(grid[0]) == pytest.approx(80.0) and float(grid[-1]) == pytest.approx(0.002)
    for name in ("ipndm", "dpm_solver_pp"):
        out = solvers.get(name).sample(D, x_T, grid, afs=True)
        assert out.shape == x_T.shape and torch.isfinite(out).all()
    assert m.decode(out).abs().max() <= 1


def test_adapter_reads_the_bottleneck_amed_uses(tmp_path):
    net, kwargs = tiny_net(img_resolution=32, channel_mult=[1, 2, 2], num_blocks=4, attn_resolutions=[16])
    assert edm.bottleneck_module(net, conditional=False) is net.model.enc["8x8_block3"]


def test_adapter_refuses_a_network_of_the_wrong_shape(tmp_path):
    net, kwargs = tiny_net()
    path = write_snapshot(tmp_path / "net.pkl", net, kwargs)
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
