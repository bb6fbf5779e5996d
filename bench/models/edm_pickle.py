"""A restricted unpickler for EDM / StyleGAN-style network pickles, without the EDM repository on the path.

EDM saves networks with its `torch_utils.persistence` module: every persistent object pickles as

    torch_utils.persistence._reconstruct_persistent_obj(meta),
    meta = {"type": "class", "version": 6, "module_src": <source of the defining module, e.g. training/networks.py>,
            "class_name": "EDMPrecond", "state": <the object's __dict__>}

so the pickle carries the source of its own classes. This loader rebuilds them from that source under rules:

  * globals: only an allow-list (tensor/parameter rebuilding, OrderedDict, torch.nn containers, torch dtypes and
    devices, numpy scalars/arrays, EasyDict, the persistence hook). Anything else -> UnsafePickleError naming it.
  * embedded source: parsed first; it may import only numpy, torch (nn, nn.functional), math and
    torch_utils.persistence, and may not name eval/exec/compile/open/__import__/getattr-style builtins, dunder
    attributes (other than __init__/__name__/__class__) or file/process/loader attributes. A violation refuses the
    whole file. A module that imports other EDM helpers (torch_utils.misc, training.*, dnnlib: the augmentation pipe
    and loss objects stored beside the network) is not executed: its objects become inert `Skipped` records.
  * the source runs with a reduced set of builtins and an import hook that enforces the same allow-list.

This guards against pickles that reach outside what an EDM network needs; it is not a sandbox. Verify downloaded
checkpoints by checksum (`python -m bench download` does) and load only files you trust.
"""
from __future__ import annotations

import ast
import builtins
import codecs
import collections
import copyreg
import hashlib
import importlib
import io
import pickle
import types
from typing import Any

import numpy as np
import torch

try:                                    # numpy >= 2 moved numpy.core to numpy._core
    from numpy._core import multiarray as _np_multiarray
except ImportError:                     # pragma: no cover
    from numpy.core import multiarray as _np_multiarray

PERSISTENCE_MODULE = "torch_utils.persistence"
RECONSTRUCT = "_reconstruct_persistent_obj"

ALLOWED_IMPORTS = {"numpy", "torch", "torch.nn", "torch.nn.functional", "math", "torch_utils.persistence"}
SKIPPED_IMPORTS = {"torch_utils.misc", "torch_utils.training_stats", "torch_utils.distributed", "dnnlib",
                   "dnnlib.util", "training", "scipy", "scipy.signal", "scipy.optimize"}
FORBIDDEN_NAMES = {"eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "vars",
                   "breakpoint", "input", "memoryview", "__builtins__", "__loader__", "__spec__"}
ALLOWED_DUNDERS = {"__init__", "__name__", "__class__", "__doc__"}
FORBIDDEN_ATTRS = {"hub", "load", "save", "cpp_extension", "system", "popen", "spawn", "remove", "unlink", "rmtree",
                   "fromfile", "tofile", "memmap", "ctypeslib", "ctypes", "subprocess", "_C", "ops", "library",
                   "jit", "classes", "rename", "write", "write_bytes", "write_text", "chdir", "environ",
                   "from_file", "package", "compile", "distributed", "savez", "savez_compressed", "savetxt",
                   "loadtxt", "genfromtxt", "fromregex", "multiprocessing", "utils"}
SAFE_BUILTINS = {name: getattr(builtins, name) for name in [
    "abs", "all", "any", "bool", "dict", "enumerate", "float", "int", "isinstance", "issubclass", "len", "list",
    "map", "max", "min", "object", "print", "range", "reversed", "round", "set", "sorted", "staticmethod",
    "classmethod", "property", "str", "sum", "super", "tuple", "type", "zip", "frozenset", "hasattr", "slice",
    "divmod", "pow", "repr", "filter", "iter", "next", "callable", "globals", "id", "hash", "format", "bytes",
    "complex", "ord", "chr", "Exception", "ValueError", "TypeError", "AssertionError", "NotImplementedError",
    "RuntimeError", "KeyError", "IndexError", "AttributeError", "StopIteration", "NotImplemented", "Ellipsis",
    "None", "True", "False", "__build_class__"] if hasattr(builtins, name)}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for something outside the allow-list; nothing from it was executed past that point."""


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


class Skipped:
    """An object of a persistent class whose module was not executed (it imports helpers this loader lacks)."""

    def __init__(self, class_name: str, reason: str):
        self.class_name, self.reason = class_name, reason

    def __repr__(self) -> str:
        return f"Skipped({self.class_name!r}: {self.reason})"


def _persistence_shim() -> types.ModuleType:
    """What `from torch_utils import persistence` gives the embedded source: a decorator that keeps the class."""
    mod = types.ModuleType(PERSISTENCE_MODULE)
    mod.persistent_class = lambda cls: cls
    mod.is_persistent = lambda obj: True
    mod.import_hook = lambda hook: hook
    return mod


def check_source(src: str, class_name: str = "?") -> str | None:
    """Vet embedded module source. Returns None if it may run, a reason string if it must be skipped (it imports
    helpers this loader does not provide); raises UnsafePickleError for anything forbidden."""
    try:
        tree = ast.parse(src)
    except SyntaxError as e:
        raise UnsafePickleError(f"embedded source of {class_name!r} does not parse: {e}") from None
    skip = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise UnsafePickleError(f"embedded source of {class_name!r} uses a relative import")
            for a in node.names:
                if a.name == "*" or a.name in FORBIDDEN_ATTRS | FORBIDDEN_NAMES or a.name.startswith("__"):
                    raise UnsafePickleError(f"embedded source of {class_name!r} imports the forbidden name "
                                            f"{a.name!r} from {node.module}")
            mods = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in ALLOWED_IMPORTS | SKIPPED_IMPORTS
                    else node.module for a in node.names]
        else:
            mods = []
        for m in mods:
            if m in ALLOWED_IMPORTS:
                continue
            if m in SKIPPED_IMPORTS or m.split(".")[0] in {"training", "dnnlib"}:
                skip = skip or f"imports {m}"
                continue
            raise UnsafePickleError(f"embedded source of {class_name!r} imports {m!r}; allowed: "
                                    f"{', '.join(sorted(ALLOWED_IMPORTS))}")
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            raise UnsafePickleError(f"embedded source of {class_name!r} uses the forbidden name {node.id!r}")
        if isinstance(node, ast.Attribute):
            a = node.attr
            if (a.startswith("__") and a not in ALLOWED_DUNDERS) or a in FORBIDDEN_ATTRS:
                raise UnsafePickleError(f"embedded source of {class_name!r} uses the forbidden attribute {a!r}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FORBIDDEN_NAMES:
            raise UnsafePickleError(f"embedded source of {class_name!r} names {node.value!r}")
    return skip


def _restricted_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level:
        raise ImportError("relative imports are not allowed in embedded network source")
    if name == "torch_utils" and set(fromlist or ()) <= {"persistence"}:
        pkg = types.ModuleType("torch_utils")
        pkg.persistence = _persistence_shim()
        return pkg
    if name == PERSISTENCE_MODULE:
        raise ImportError("use `from torch_utils import persistence`")
    if name not in ALLOWED_IMPORTS:
        raise ImportError(f"embedded network source may not import {name!r}")
    bad = [n for n in (fromlist or ()) if n in FORBIDDEN_ATTRS or n.startswith("__")]
    if bad:
        raise ImportError(f"embedded network source may not import {bad[0]!r} from {name!r}")
    return builtins.__import__(name, globals, locals, fromlist, level)


def _storage_from_bytes(b: bytes):
    """torch.storage._load_from_bytes, but through torch's weights-only loader (tensors and storages only)."""
    return torch.load(io.BytesIO(b), weights_only=True)


def _torch_nn_class(module: str, name: str):
    mod = importlib.import_module(module)
    obj = getattr(mod, name, None)
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__.startswith("torch.nn."):
        return obj
    return None


class EDMUnpickler(pickle.Unpickler):
    """pickle.Unpickler with an allow-list of globals and persistent-class reconstruction from embedded source."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._modules: dict[str, types.ModuleType | str] = {}

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch", "device"): torch.device,
        ("torch", "Size"): torch.Size,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("_codecs", "encode"): codecs.encode,          # how pickle protocol 2 writes bytes
        ("builtins", "object"): object,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy.core.multiarray", "scalar"): _np_multiarray.scalar,
        ("numpy.core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
    }

    def find_class(self, module: str, name: str):
        if (module, name) == (PERSISTENCE_MODULE, RECONSTRUCT):
            return self._reconstruct
        key = (module.replace("numpy._core", "numpy.core"), name)
        if key in self._ALLOWED and self._ALLOWED[key] is not None:
            return self._ALLOWED[key]
        if module == "numpy.dtypes" and name.endswith("DType"):
            return getattr(importlib.import_module("numpy.dtypes"), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("torch.nn.modules."):
            cls = _torch_nn_class(module, name)
            if cls is not None:
                return cls
        raise UnsafePickleError(f"refusing to load {module}.{name}: not on the EDM checkpoint allow-list")

    def _module_for(self, src: str, class_name: str) -> types.ModuleType | str:
        digest = hashlib.sha256(src.encode()).hexdigest()
        if digest not in self._modules:
            reason = check_source(src, class_name)
            if reason is not None:
                self._modules[digest] = reason
            else:
                mod = types.ModuleType(f"_edm_embedded_{digest[:12]}")
                mod.__dict__["__builtins__"] = dict(SAFE_BUILTINS, __import__=_restricted_import)
                exec(compile(src, f"<embedded source {digest[:12]}>", "exec"), mod.__dict__)  # vetted above
                self._modules[digest] = mod
        return self._modules[digest]

    def _reconstruct(self, meta: dict) -> Any:
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("module_src"), str):
            raise UnsafePickleError("malformed persistent object record (expected type='class' with module_src)")
        class_name = str(meta.get("class_name"))
        mod = self._module_for(meta["module_src"], class_name)
        if isinstance(mod, str):
            return Skipped(class_name, mod)
        cls = mod.__dict__.get(class_name)
        if not isinstance(cls, type) or cls.__module__ != mod.__name__:
            raise UnsafePickleError(f"embedded source defines no class {class_name!r}")
        obj = cls.__new__(cls)
        state = meta.get("state") or {}
        setstate = getattr(obj, "__setstate__", None)
        if callable(setstate):
            setstate(dict(state))
        else:
            obj.__dict__.update(state)
        return obj


def load(file) -> Any:
    """Unpickle an EDM-style checkpoint (path or binary file object) under the rules above."""
    if isinstance(file, (str, bytes)) or hasattr(file, "__fspath__"):
        with open(file, "rb") as f:
            return EDMUnpickler(f).load()
    return EDMUnpickler(file).load()
