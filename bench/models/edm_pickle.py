"""EDM network pickles read as data: class names, constructor arguments and tensors; the embedded source never runs.

EDM saves networks with its `torch_utils.persistence` module: every persistent object pickles as

    torch_utils.persistence._reconstruct_persistent_obj(meta),
    meta = {"type": "class", "version": 6, "module_src": <source of the defining module, e.g. training/networks.py>,
            "class_name": "EDMPrecond", "state": <the object's __dict__>}

and the state of each network object holds `_init_args` / `_init_kwargs` (the constructor's arguments, recorded by
the persistence decorator), `_parameters`, `_buffers` and `_modules` (its children, records again, or a
torch.nn.ModuleDict of records). Running `module_src` would run whatever the file's author wrote, and vetting
source text cannot be made safe, so this loader never runs it:

  1. the pickle is read by `safe_pickle.Unpickler` (tensors, containers, numpy values only) plus two inert
     stand-ins: every persistent object becomes a `Record` (class name and state), and torch.nn's containers
     (ModuleDict, ModuleList, Sequential) become a `Record` of the same shape;
  2. `build(record)` constructs the project's own implementation of the class (bench.nets.edm: EDMPrecond,
     VPPrecond, VEPrecond over SongUNet or DhariwalUNet) from the record's constructor arguments, checks that every
     sub-module the file holds is, by path and class name, the module the project built there, and loads the
     file's tensors with `load_state_dict(strict=True)`.

A class the project does not implement is refused in one line, as is any global outside the allow-list.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from bench.nets import edm as nets
from solvers.errors import InputError, one_line

from .safe_pickle import Unpickler, UnsafePickleError

__all__ = ["Record", "UnsafePickleError", "load", "load_network", "build"]

PERSISTENCE = ("torch_utils.persistence", "_reconstruct_persistent_obj")
CONTAINERS = {"ModuleDict", "ModuleList", "Sequential"}


class Record:
    """An object the pickle describes, never instantiated: its class name and its state (`__dict__`)."""

    def __init__(self, class_name: str = "", state: dict | None = None):
        self.class_name, self.state = class_name, state or {}

    def __setstate__(self, state):              # a torch.nn container rebuilt by copyreg._reconstructor
        self.state = state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"Record({self.class_name})"


def _container(name: str) -> type:
    return type(f"{name}Record", (Record,), {"class_name": name, "__init__": Record.__init__})


def _persistent(meta: Any) -> Record:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise UnsafePickleError("malformed persistent object record (expected type='class' with a class_name)")
    state = meta.get("state")
    return Record(meta["class_name"], state if isinstance(state, dict) else {})


class EasyDict(dict):
    """dnnlib.util.EasyDict (a dict with attribute access), as data."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class EDMUnpickler(Unpickler):
    what = "EDM checkpoint"
    _CONTAINERS = {name: _container(name) for name in CONTAINERS}

    def extra(self, module: str, name: str):
        if (module, name) == PERSISTENCE:
            return _persistent
        if module in ("dnnlib", "dnnlib.util") and name == "EasyDict":
            return EasyDict
        if module.startswith("torch.nn.modules.") and name in CONTAINERS:
            return self._CONTAINERS[name]
        return None


def load(file) -> Any:
    """The pickle's content with every network object as an inert `Record` (path or binary file object)."""
    if isinstance(file, (str, bytes)) or hasattr(file, "__fspath__"):
        with open(file, "rb") as f:
            return EDMUnpickler(f).load()
    return EDMUnpickler(file).load()


def _walk(record: Record, prefix: str, tensors: dict, classes: dict, where: str) -> None:
    """Collect the tensors (state-dict names) and the class name of every module path under `record`."""
    classes[prefix.rstrip(".")] = record.class_name
    for group in ("_parameters", "_buffers"):
        for key, value in (record.state.get(group) or {}).items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise InputError(f"{where}: {prefix}{key} is a {type(value).__name__}, not a tensor")
            tensors[prefix + key] = value
    for key, child in (record.state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Record):
            raise InputError(f"{where}: sub-module {prefix}{key} is a {type(child).__name__}, which the project "
                             f"does not implement")
        _walk(child, f"{prefix}{key}.", tensors, classes, where)


def build(record: Any, where: str = "checkpoint") -> torch.nn.Module:
    """The project's implementation of the network `record` describes, holding the record's tensors."""
    if not isinstance(record, Record):
        raise InputError(f"{where}: expected an EDM network, found a {type(record).__name__}")
    cls = nets.PRECONDITIONINGS.get(record.class_name)
    if cls is None:
        raise InputError(f"{where}: the network is an {record.class_name}, which the project does not implement; "
                         f"implemented: {', '.join(nets.PRECONDITIONINGS)}")
    args, kwargs = record.state.get("_init_args"), record.state.get("_init_kwargs")
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise InputError(f"{where}: the {record.class_name} record holds no constructor arguments "
                         f"(_init_args/_init_kwargs), so its architecture cannot be rebuilt")
    try:
        net = cls(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: cannot build {record.class_name} from the file's arguments: {e}") from None
    tensors, classes = {}, {}
    _walk(record, "", tensors, classes, where)
    ours = {path: type(m).__name__ for path, m in net.named_modules()}
    for path in sorted(set(ours) | set(classes)):
        if ours.get(path) != classes.get(path):
            raise InputError(f"{where}: module {path or '(top)'} is {classes.get(path, 'absent')} in the file, "
                             f"{ours.get(path, 'absent')} in the project's {record.class_name}")
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise InputError(f"{where}: the tensors do not fit the project's {record.class_name}: {one_line(e)}") from None
    return net.eval()


def load_network(path: str | Path, key: str = "ema") -> torch.nn.Module:
    """The network stored under `key` in an EDM snapshot pickle, built by `build`; one line for any refusal."""
    try:
        data = load(path)
    except UnsafePickleError as e:
        raise InputError(f"{path}: {e}") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError,
            pickle.UnpicklingError) as e:
        raise InputError(f"{path}: not a readable EDM network pickle ({type(e).__name__}: {one_line(e)})") from None
    if not isinstance(data, dict) or key not in data:
        keys = f" with keys {', '.join(map(str, data))}" if isinstance(data, dict) else ""
        raise InputError(f"{path}: expected an EDM snapshot, a dict with an {key!r} network; found "
                         f"{type(data).__name__}{keys}")
    return build(data[key], str(path))
