"""Planning a distillation's memory before it runs, instead of discovering it in an out-of-memory error.

Backpropagating through a student's sampling run keeps every network call's activations: per optimiser step the
peak is about

    peak = fixed + micro × (held_calls × per_call + per_sample_extra)

where `per_call` is the activation memory of one network call for one sample (the bytes autograd saves for the
backward pass, parameters excluded; two network evaluations under classifier-free guidance), `held_calls` the calls
whose activations are alive together (all the student's calls of a trajectory; one when each call is recomputed
in the backward pass, `checkpoint`), `per_sample_extra` what the loss keeps (a decoder and an Inception network for
image distances), `fixed` the weights and what else is on the device, and `micro` the samples of one backward pass.

`plan(...)` takes the recipe's batch per optimiser step and the number of data-parallel ranks, and picks the
largest micro-batch (a divisor of the rank's share of the batch; gradient accumulation over the rest gives exactly
the batch's update), first without and then with checkpointing, whose peak fits `budget × headroom`; it refuses a
distillation that fits in neither way with one line saying how much it needs.

`per_call` comes from a probe: one network call at batch 1 on the real device and precision, its saved tensors
counted through `torch.autograd.graph.saved_tensors_hooks` (`probe_call`); before a run (`--dry-run`), from the
model's declared `activation_bytes` (measured on the real architectures with random weights).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from solvers.errors import InputError

GiB = 2 ** 30
MiB = 2 ** 20
HEADROOM = 0.85            # of the budget: allocator fragmentation, cuDNN workspaces, the optimiser


@dataclass(frozen=True)
class MemoryPlan:
    batch: int                    # samples per optimiser step, over every rank and accumulation round
    ranks: int
    micro: int                    # samples per backward pass on one rank
    accumulate: int               # backward passes per rank per optimiser step
    checkpoint: bool              # each network call recomputed in the backward pass
    per_call: int                 # activation bytes of one network call for one sample
    held_calls: int
    per_sample_extra: int
    fixed: int
    budget: int
    peak: int

    def describe(self) -> str:
        return (f"batch {self.batch} = {self.ranks} rank(s) × {self.accumulate} × micro-batch {self.micro}"
                f"{', checkpointed calls' if self.checkpoint else ''}; peak ≈ {self.peak / GiB:.1f} GiB of "
                f"{self.budget / GiB:.0f} GiB ({self.per_call / MiB:.0f} MiB per sample and call × "
                f"{self.held_calls} call(s) held)")


def peak(micro: int, held_calls: int, per_call: int, per_sample_extra: int, fixed: int) -> int:
    return int(fixed + micro * (held_calls * per_call + per_sample_extra))


def plan(batch: int, calls: int, per_call: int, budget: int, ranks: int = 1, per_sample_extra: int = 0,
         fixed: int = 0, checkpoint: bool | None = None, where: str = "") -> MemoryPlan:
    """The micro-batching (and checkpointing) of a distillation (module docstring). `calls`: the student's network
    calls per trajectory; `checkpoint`: True/False forces it, None lets the plan choose."""
    if batch % ranks:
        raise InputError(f"{where}batch_size {batch} does not split over {ranks} data-parallel ranks; choose a "
                         "multiple of the rank count")
    share = batch // ranks
    limit = budget * HEADROOM
    options = [False, True] if checkpoint is None else [bool(checkpoint)]
    for ckpt in options:
        held = 1 if ckpt else calls
        for micro in sorted((d for d in range(1, share + 1) if share % d == 0), reverse=True):
            p = peak(micro, held, per_call, per_sample_extra, fixed)
            if p <= limit:
                return MemoryPlan(batch, ranks, micro, share // micro, ckpt, per_call, held, per_sample_extra,
                                  fixed, budget, p)
    need = peak(1, 1 if options[-1] else calls, per_call, per_sample_extra, fixed)
    raise InputError(f"{where}one sample's backward pass needs ≈ {need / GiB:.1f} GiB ({per_call / MiB:.0f} MiB per "
                     f"network call, {calls} calls{', checkpointed' if options[-1] else ''}, "
                     f"{per_sample_extra / MiB:.0f} MiB for the loss, {fixed / GiB:.1f} GiB fixed), more than "
                     f"{HEADROOM:.0%} of {budget / GiB:.0f} GiB: use a larger device or a smaller model")


def saved_bytes(fn, exclude=()) -> tuple[int, object]:
    """Bytes autograd saves for the backward pass while running `fn()` (tensors sharing storage with `exclude`,
    e.g. a network's parameters, are not counted), and fn's result."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def probe_call(denoiser, x: torch.Tensor, sigma: torch.Tensor, parameters=()) -> int:
    """Activation bytes of one network call on `x` (batch 1) with the gradient flowing to its input, as in a
    distillation (the network's own weights are frozen)."""
    x = x.detach().clone().requires_grad_(True)
    n, _ = saved_bytes(lambda: denoiser(x, sigma), exclude=list(parameters))
    return int(math.ceil(n / x.shape[0]))


def budget_of(device) -> int | None:
    """The memory a distillation may use on a CUDA device: its free memory now (weights already loaded); None for
    other devices, where nothing is planned."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(dev)
    return int(free)


def parse_size(text: str) -> int:
    """"80GiB", "80G", "81920MiB" -> bytes."""
    s = str(text).strip().lower().replace(" ", "")
    for suffix, scale in (("gib", GiB), ("gb", 10 ** 9), ("g", GiB), ("mib", MiB), ("mb", 10 ** 6), ("m", MiB)):
        if s.endswith(suffix):
            try:
                return int(float(s[:-len(suffix)]) * scale)
            except ValueError:
                break
    raise InputError(f"a memory size is a number with a unit, e.g. 80GiB or 81920MiB; got {text!r}")
