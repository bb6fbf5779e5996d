"""A second device emulated on the CPU, so that device mixes are caught on machines without a GPU.

    from bench import fakedevice
    with fakedevice.active():
        model = bench.models.get("cifar10", device=fakedevice.DEVICE, ...)   # or any module .to(DEVICE)
        ...                                                                   # every op is checked

Inside `active()`, a tensor created on or moved to `DEVICE` is a real CPU tensor wrapped in `Emulated`, whose
`.device` reports `DEVICE`. Every aten operation passes through the mode, which computes on the wrapped CPU tensors
and refuses the mixes CUDA refuses, with CUDA's message ("Expected all tensors to be on the same device"):

  * a tensor of DEVICE together with a CPU tensor of one or more dimensions;
  * a tensor of DEVICE together with a 0-dim CPU tensor, except in pointwise operations (where CUDA reads the
    CPU scalar, e.g. `x * torch.tensor(2.0)`);

and allows what CUDA allows: copies between the devices (`.to`, `.cpu()`, `copy_`), indexing a DEVICE tensor
with CPU indices, and host reads (`.item()`, `float()`, `.tolist()`). `.numpy()` of a DEVICE tensor refuses, as for
CUDA. Autograd works through the wrapper (distillation backpropagates through an emulated model).

`DEVICE` is the meta device, whose own tensors hold no data, because torch accepts moving anything there without a
backend; inside `active()` nothing is a true meta tensor (code that builds modules on meta, as accelerate's
`init_empty_weights` does, must run outside the mode). CUDA-only calls (`torch.cuda.*`, autocast on "cuda") are not
emulated: code guards them with `device.type == "cuda"`, so this emulation does not exercise them.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

DEVICE = torch.device("meta")
_CROSS_DEVICE = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}
_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default,
             torch.ops.aten._index_put_impl_.default}


class Emulated(torch.Tensor):
    """A CPU tensor (`inner`) that reports `DEVICE` and is computed on through `_Mode`."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(),
                                                  storage_offset=inner.storage_offset(), dtype=inner.dtype,
                                                  device=DEVICE, requires_grad=inner.requires_grad)
        out.inner = inner
        return out

    def __repr__(self) -> str:
        return f"Emulated({self.inner!r}, device={DEVICE})"

    def tolist(self):
        return self.inner.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError(f"can't convert {DEVICE} device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                        "to host memory first.")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"an emulated {DEVICE} tensor was used outside bench.fakedevice.active() ({func})")


def _is_device(d) -> bool:
    return d is not None and torch.device(d).type == DEVICE.type


class _Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        tensors: list[torch.Tensor] = []
        tree_map(lambda a: tensors.append(a) if isinstance(a, torch.Tensor) else None, (args, kwargs))
        on_device = [a for a in tensors if isinstance(a, Emulated)]
        on_cpu = [a for a in tensors if not isinstance(a, Emulated)]
        if on_device and on_cpu and func not in _CROSS_DEVICE:
            indexing = func in _INDEXING and isinstance(args[0], Emulated)
            pointwise = torch.Tag.pointwise in func.tags
            bad = [a for a in on_cpu if a.dim() > 0 or not pointwise]
            if bad and not indexing:
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                                   f"{DEVICE} and cpu! (in {func}, emulated by bench.fakedevice)")
        target = kwargs.get("device")
        to_device, to_cpu = _is_device(target), target is not None and not _is_device(target)
        if to_device:
            kwargs["device"] = torch.device("cpu")
        unwrap = (lambda a: a.inner if isinstance(a, Emulated) else a)
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if args and isinstance(args[0], Emulated) and func._schema.name.endswith("_"):
            return args[0]                                   # in place: the same (wrapper) tensor, as torch does
        wrap = to_device or (bool(on_device) and not to_cpu)
        return tree_map(lambda o: Emulated(o) if wrap and isinstance(o, torch.Tensor) else o, out)


class _Constructors(TorchFunctionMode):
    """torch.tensor / as_tensor / asarray with device=DEVICE: they copy Python data to the device below the
    dispatcher, so they are built on the CPU and moved (an emulated copy)."""

    FUNCS = {torch.tensor, torch.as_tensor, torch.asarray}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FUNCS and _is_device(kwargs.get("device")):
            kwargs["device"] = torch.device("cpu")
            return func(*args, **kwargs).to(DEVICE)
        return func(*args, **kwargs)


@contextlib.contextmanager
def active():
    """Emulate `DEVICE` on the CPU inside this block (see the module docstring)."""
    with _Constructors(), _Mode():
        yield DEVICE
