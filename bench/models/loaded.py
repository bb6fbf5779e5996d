"""Networks loaded from disk: shared by every model that reads the same files, released together.

`flux` and `flux_drawbench` (or `sd15` and an SD model on other prompts) are one set of weights: loading them
under one key keeps one copy in memory. The runner releases the networks no remaining cell needs before it loads
the next model's (`release`), so a grid holds one big model at a time.
"""
from __future__ import annotations

import gc
import weakref

import torch

_LOADED: dict[tuple, tuple[dict, weakref.WeakSet]] = {}


def get(key: tuple, loader, holder) -> dict:
    """The components under `key`, loaded once by `loader()`; `holder` (a model) is told to drop them on release."""
    if key not in _LOADED:
        _LOADED[key] = (loader(), weakref.WeakSet())
    components, holders = _LOADED[key]
    holders.add(holder)
    return components


def release(key: tuple) -> None:
    """Forget the components under `key` in every model holding them, and free their memory."""
    entry = _LOADED.pop(key, None)
    if entry is None:
        return
    for holder in list(entry[1]):
        holder.drop_networks()
    del entry
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_loaded(key: tuple) -> bool:
    return key in _LOADED
