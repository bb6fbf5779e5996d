"""Processes under torchrun: sharding seeds, exchanging results, and waiting without timing out.

Under `torchrun --nproc_per_node=K`, each cell's seeds are split into K contiguous shards (gloo on CPU, nccl on
GPU). Two things must hold for runs that last hours:

  * No rank waits inside a collective while another rank works for long (rank 0 distilling a solver, a slow
    shard): NCCL's watchdog would abort it. So ranks meet in `sync`, which polls the process group's key-value
    store (torchrun's TCPStore) with no time limit, and enter a collective only once every rank has arrived.
  * A failure on any rank ends every rank with that rank's one-line message. Each rank reports its outcome to
    `sync` (None, or the error it hit); every rank then raises `RankFailed` with the first failing rank's message.
    An exception that escapes a rank (`guard`) is published the same way, so ranks waiting in `sync` end too.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import time
from dataclasses import dataclass, field

import torch

from solvers.errors import InputError

ERROR_KEY = "bench/failed"


class RankFailed(InputError):
    """Another rank (or this one) failed; the message is that rank's one line."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    store: object = None
    _count: int = field(default=0, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ---- meeting points ----------------------------------------------------------------------------------------
    def sync(self, error: str | None = None, poll: float = 0.5) -> None:
        """Wait until every rank has reported (no time limit); raise RankFailed on every rank if any reported an
        error (`error`: this rank's one-line message, or None)."""
        if error is not None and self.world == 1:
            raise RankFailed(error)
        if self.world == 1:
            return
        self._count += 1
        tag = f"bench/sync/{self._count}"
        self.store.set(f"{tag}/{self.rank}", "" if error is None else f"rank {self.rank}: {error}")
        if error is not None:
            self.store.set(ERROR_KEY, f"rank {self.rank}: {error}")
        keys = [f"{tag}/{r}" for r in range(self.world)]
        delay = 1e-3
        while not self.store.check(keys):
            if self.store.check([ERROR_KEY]):
                raise RankFailed(self.store.get(ERROR_KEY).decode())
            time.sleep(delay)
            delay = min(poll, delay * 2)
        errors = [v for v in (self.store.get(k).decode() for k in keys) if v]
        if errors:
            raise RankFailed(errors[0])

    @contextlib.contextmanager
    def guard(self):
        """Publish an exception escaping this block to the other ranks (they end in their next `sync`)."""
        try:
            yield
        except BaseException as e:
            if self.world > 1 and not isinstance(e, RankFailed):
                with contextlib.suppress(Exception):
                    self.store.set(ERROR_KEY, f"rank {self.rank}: {type(e).__name__}: {e}".splitlines()[0])
            raise

    # ---- data --------------------------------------------------------------------------------------------------
    def broadcast(self, obj):
        """rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's `obj` on rank 0 (in rank order); None elsewhere. Call it after a `sync`."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj) -> list:
        """Every rank's `obj` on every rank, in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, tensors: list) -> list:
        """Sum each tensor over the ranks, in place (one flat float64 reduction on the backend's device); returns
        the tensors. A data-parallel distillation sums its gradients with it."""
        if self.world == 1 or not tensors:
            return tensors
        device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
        flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float64) for t in tensors])
        torch.distributed.all_reduce(flat)
        pos = 0
        for t in tensors:
            t.copy_(flat[pos:pos + t.numel()].reshape(t.shape).to(t.dtype))
            pos += t.numel()
        return tensors

    def shard(self, seeds: range) -> range:
        """This rank's contiguous block of seeds (concatenating the blocks in rank order gives `seeds`)."""
        per = -(-len(seeds) // self.world)
        return seeds[self.rank * per:(self.rank + 1) * per]


def init() -> Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a single process otherwise.

    The collectives' timeout (BENCH_COLLECTIVE_TIMEOUT seconds, default 1800) bounds only the exchanges that follow a
    `sync`; long waits happen in `sync`, which has none.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    from torch.distributed import distributed_c10d
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = datetime.timedelta(seconds=float(os.environ.get("BENCH_COLLECTIVE_TIMEOUT", "1800")))
        dist.init_process_group(backend=backend, timeout=timeout)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), store=distributed_c10d._get_default_store())
