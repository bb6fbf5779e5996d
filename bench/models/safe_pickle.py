"""Reading checkpoint pickles as data: an unpickler whose globals come from an allow-list of inert constructors.

A pickle names the callables that rebuild its objects; plain `pickle.load` imports and calls whatever it names,
so a crafted checkpoint can run any code. `Unpickler` here resolves only:

  * tensors and parameters (torch._utils rebuild functions), storages, `torch.Size`, devices and dtypes;
  * plain containers: OrderedDict, set, frozenset, slice, complex, and `copyreg._reconstructor` over those;
  * numpy arrays, dtypes and scalars, and `_codecs.encode`, which is how protocol 2 (torch.save's) writes the
    bytes of a numpy scalar;

plus what a subclass adds in `extra(module, name)` (EDM's persistent-object records, Lightning's bookkeeping as
inert placeholders). Any other name raises `UnsafePickleError` naming it; nothing past that point is read.
"""
from __future__ import annotations

import codecs
import collections
import copyreg
import importlib
import io
import pickle

import numpy as np
import torch

try:                                    # numpy >= 2 moved numpy.core to numpy._core
    from numpy._core import multiarray as _np_multiarray
except ImportError:                     # pragma: no cover
    from numpy.core import multiarray as _np_multiarray


class UnsafePickleError(pickle.UnpicklingError):
    """The file names something outside the allow-list; nothing from it was executed."""


def _storage_from_bytes(b: bytes):
    """torch.storage._load_from_bytes (how torch 1.x pickled storages), through torch's weights-only loader."""
    return torch.load(io.BytesIO(b), weights_only=True)


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch.storage", "UntypedStorage"): torch.storage.UntypedStorage,
    ("torch.storage", "TypedStorage"): torch.storage.TypedStorage,
    ("torch", "device"): torch.device,
    ("torch", "Size"): torch.Size,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("_codecs", "encode"): codecs.encode,
    ("builtins", "object"): object,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _np_multiarray.scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
}


def allowed(module: str, name: str):
    """The allow-listed object a pickle's global (module, name) stands for, or None."""
    key = (module.replace("numpy._core", "numpy.core"), name)
    if key in ALLOWED:
        return ALLOWED[key]
    if module == "numpy.dtypes" and name.endswith("DType"):
        return getattr(importlib.import_module("numpy.dtypes"), name, None)
    if module == "torch" and (isinstance(getattr(torch, name, None), torch.dtype) or name.endswith("Storage")):
        return getattr(torch, name, None)
    return None


class Unpickler(pickle.Unpickler):
    """pickle.Unpickler over the allow-list; `what` names the kind of file in the refusal."""

    what = "checkpoint"

    def extra(self, module: str, name: str):
        """What a subclass adds to the allow-list (None: nothing)."""
        return None

    def find_class(self, module: str, name: str):
        found = self.extra(module, name)
        if found is None:
            found = allowed(module, name)
        if found is None:
            raise UnsafePickleError(f"refusing to load {module}.{name}: not on the {self.what} allow-list (a pickle "
                                    f"may hold tensors, containers and numpy values only)")
        return found
