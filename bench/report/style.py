"""One look for every report: a fixed colour and marker per method, whatever other rows a grid holds.

A row's method is its label, matched to the methods below by its longest known prefix ("DyWeight (released)" is
drawn in DyWeight's colour, with its own marker); a label no method matches gets a colour and marker picked by a
stable hash of the label, so it too keeps them across reports. Learned methods are drawn dashed.
"""
from __future__ import annotations

import hashlib

import matplotlib

_TAB = [matplotlib.colormaps["tab20"](i) for i in range(20)] + [matplotlib.colormaps["tab20b"](i) for i in range(20)]
PALETTE = tuple(_TAB)          # every colour a method may take, for figures that need more rows than methods
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p"]

# method prefix -> (colour index into _TAB, marker)
METHODS = {
    "Euler": (14, "v"), "Heun": (15, "<"), "iPNDM": (0, "o"), "iPNDM-v": (1, "o"),
    "DPM-Solver++(2M)": (4, "s"), "DPM-Solver++(3M)": (5, "s"), "DPM-Solver++": (5, "s"),
    "UniPC-2": (2, "^"), "UniPC-3": (3, "^"), "UniPC": (3, "^"), "UniPC(2M)": (2, "^"),
    "DyWeight": (6, "D"), "EPD": (8, "P"), "EPD-Solver": (8, "P"), "GITS": (18, "X"), "LD3": (16, "h"),
    "AMED": (12, "*"), "AMED-Solver": (12, "*"), "Instance-aware": (10, "p"), "Fine-tune": (11, "p"),
    "Global fine-tune": (11, "p"),
}


def _known(label: str) -> str | None:
    hits = [m for m in METHODS if label == m or label.startswith(m)]
    return max(hits, key=len) if hits else None


def _hash(label: str) -> int:
    return int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)


def color(label: str):
    """The colour of a method (RGBA)."""
    m = _known(label)
    return _TAB[METHODS[m][0]] if m is not None else _TAB[_hash(label) % len(_TAB)]


def marker(label: str) -> str:
    """The marker of a method; a variant of a known method (a longer label) takes another marker."""
    m = _known(label)
    if m is not None and m == label:
        return METHODS[m][1]
    return MARKERS[_hash(label) % len(MARKERS)]


def linestyle(family: str) -> str:
    return "--" if family in ("learned", "Learnable") else "-"
