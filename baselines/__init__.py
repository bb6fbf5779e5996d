"""What others published, as data: the DyWeight paper's reported tables and its released coefficients.

Files in baselines/data are copies of ../shared/data (the project's shared material):
- dyweight_released_coefficients.json: the released DyWeight checkpoints of Westlake-AGI-Lab/DyWeight (commit
  620534e3), numbers only, with their grid and training settings.
- dyweight_flux_released_coefficients.json (not in ../shared/data): the same repository's released FLUX.1-dev
  coefficients (dyweight_flux/checkpoints/dyweight_nfe{3,5,7}.pt), extracted here the same way; they integrate in
  flow time (`time = "flow"`, solvers/flow.py) and divide by the scaled time (`divisor = "scaled"`).
- paper_reported_results.csv (+ .md): every numeric table of arXiv 2603.11607, tidy, with its inconsistencies noted.
"""
from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path

from solvers.errors import InputError

DATA = Path(__file__).parent / "data"


RELEASED_FILES = ("dyweight_released_coefficients.json", "dyweight_flux_released_coefficients.json")


@lru_cache(maxsize=1)
def _released() -> list[dict]:
    return [ck for name in RELEASED_FILES for ck in json.loads((DATA / name).read_text())["checkpoints"]]


def released_checkpoints() -> list[dict]:
    """Every released DyWeight checkpoint (dicts with dataset, nfe, num_time_points, weights, time_scale, ...)."""
    return list(_released())


def released_datasets() -> dict[str, list[int]]:
    """dataset -> the NFEs with released coefficients."""
    out: dict[str, list[int]] = {}
    for ck in released_checkpoints():
        out.setdefault(ck["dataset"], []).append(ck["nfe"])
    return {k: sorted(v) for k, v in out.items()}


def released_coefficients(dataset: str, nfe: int, run: str | None = None) -> dict:
    """The released checkpoint for (dataset, nfe); a clear ValueError for a pair the paper did not release.

    A pair may have several checkpoints (cifar10 NFE 4: "00001-cifar-nfe4" with the inception loss and
    "00002-cifar-nfe4" with the piecewise loss); `run` names one, default the first in the file.
    """
    avail = released_datasets()
    if dataset not in avail:
        raise InputError(f"no released DyWeight coefficients for dataset {dataset!r}; accepted: {', '.join(avail)}")
    matches = [ck for ck in released_checkpoints() if ck["dataset"] == dataset and ck["nfe"] == int(nfe)]
    if not matches:
        raise InputError(f"no released DyWeight coefficients for {dataset!r} at NFE {nfe}; "
                         f"released NFEs: {', '.join(map(str, sorted(set(avail[dataset]))))}")
    if run is None:
        return matches[0]
    for ck in matches:
        if ck["run"] == run:
            return ck
    raise InputError(f"no released DyWeight run {run!r} for {dataset!r} at NFE {nfe}; "
                     f"accepted: {', '.join(ck['run'] for ck in matches)}")


RELEASED_KINDS = ("dyweight",)       # the learned solvers whose authors released coefficients (data above)


def released_solver(dataset: str, nfe: int, run: str | None = None, kind: str = "dyweight"):
    """The released coefficients for (dataset, nfe) as a ready solver (`DyWeight.from_checkpoint`)."""
    if kind not in RELEASED_KINDS:
        raise InputError(f"{kind} has no released coefficients; released: {', '.join(RELEASED_KINDS)}")
    import solvers
    return solvers.solver_class(kind).from_checkpoint(released_coefficients(dataset, nfe, run=run))


def released_checkpoint_for(dataset: str, nfe: int, afs: bool, run: str | None = None) -> dict:
    """`released_coefficients`, refusing a checkpoint trained with the other AFS setting (its grid would differ)."""
    ck = released_coefficients(dataset, nfe, run)
    if bool(ck["afs"]) != bool(afs):
        raise InputError(f"the released coefficients were trained with afs={str(ck['afs']).lower()}; "
                         f"set afs = {str(ck['afs']).lower()}")
    return ck


def reported_results() -> list[dict]:
    """The paper's reported numbers as rows (table, dataset, model, method, method_family, variant, nfe, metric,
    value, note); values stay strings as printed. bench.report turns them into a DataFrame."""
    with open(DATA / "paper_reported_results.csv", newline="") as f:
        return list(csv.DictReader(f))
