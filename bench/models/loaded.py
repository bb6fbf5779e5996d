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

# diffusers / transformers `from_pretrained` arguments for every network read from a model folder: safetensors
# only (a .bin would be unpickled, and a pickle can run code); a folder without them fails in the preflight.
SAFE = {"use_safetensors": True}


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


class LoadedNetworks:
    """For models whose networks (`NETWORKS`, attribute names) are either given in memory (`_given`) or read from
    disk by `read_networks()` under `weights_key()` and shared through this module."""

    NETWORKS: tuple = ()

    def _hold(self, components: dict | None) -> None:
        """Take the given networks (`components`, by attribute name), or none: they load from disk on first use."""
        self._given = bool(components)
        for name in self.NETWORKS:
            setattr(self, name, components.get(name) if components else None)

    def weights_key(self):
        """Models of one class reading the same files in the same precision on the same device share them."""
        return None if self._given else (type(self).__name__, str(self.path), str(self.net_dtype), str(self.device))

    def weights_bytes(self) -> int:
        """The given networks' actual memory; else the nominal estimate (Model.weights_bytes)."""
        if not self._given:
            return super().weights_bytes()
        mods = [getattr(self, n) for n in self.NETWORKS if isinstance(getattr(self, n, None), torch.nn.Module)]
        return int(sum(p.numel() * p.element_size() for m in mods for p in m.parameters()))

    def networks(self) -> list:
        return [m for m in (getattr(self, n, None) for n in self.NETWORKS) if isinstance(m, torch.nn.Module)]

    def preflight(self) -> None:
        self.load()

    def load(self) -> None:
        """Read the networks once (shared with every model of the same weights key); put them on the device."""
        if getattr(self, self.NETWORKS[0]) is None:
            self.check_available()
            for name, module in get(self.weights_key(), self.read_networks, self).items():
                setattr(self, name, module)
        for name in self.NETWORKS:
            m = getattr(self, name)
            if isinstance(m, torch.nn.Module):
                m.eval().requires_grad_(False).to(self.device)

    def drop_networks(self) -> None:
        if not self._given:
            for name in self.NETWORKS:
                setattr(self, name, None)

    def read_networks(self) -> dict:
        """The networks read from disk, by attribute name."""
        raise NotImplementedError
