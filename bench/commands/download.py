"""`python -m bench download NAME...`: fetch checkpoints, reference statistics and prompt files from their official
URLs into the path the benchmark looks them up at (bench/weights.py), verifying sha256 checksums.

Each file is streamed to a temporary name beside its destination, hashed while it arrives, and renamed into place
only when complete and matching its recorded checksum: a corrupt or truncated download never takes the real name.
A directory entry (a diffusers folder) is assembled in a temporary folder and renamed as a whole.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from bench import weights
from bench.cli import UsageError
from solvers.errors import InputError

HELP = "fetch weights, reference statistics or prompt files from their official URLs (sha256-verified)"
CHUNK = 1 << 20


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="weights entries (see --list)")
    parser.add_argument("--list", action="store_true", help="list every entry, where it is looked for, and if present")
    parser.add_argument("--dest", type=Path, help="write here instead of the configured path (one NAME only)")
    parser.add_argument("--force", action="store_true", help="download again even if the destination exists")


def main(args) -> int:
    if args.list:
        for name in weights.names():
            e = weights.get(name)
            state = "present" if e.path.exists() else "missing"
            print(f"{name:24s} {state:8s} {e.path}  (env {e.env})")
        return 0
    if not args.names:
        raise UsageError(f"name one or more entries to download; accepted: {', '.join(weights.names())}")
    if args.dest and len(args.names) != 1:
        raise UsageError("--dest takes exactly one NAME")
    entries = [weights.get(n) for n in args.names]          # unknown names fail before any download
    for e in entries:
        if not e.files:
            raise UsageError(f"{e.name} cannot be downloaded automatically: {e.note or 'no URL recorded'} "
                             f"({e.homepage})")
    for e in entries:
        fetch(e, args.dest, force=args.force)
    return 0


def fetch(entry: weights.Entry, dest: Path | None = None, force: bool = False) -> Path:
    """Download `entry` to `dest` (default: its resolved path). Returns the final path."""
    dest = Path(dest or entry.path).expanduser()
    if dest.exists() and not force:
        print(f"{entry.name}: already present at {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if entry.is_dir:
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        try:
            for f in entry.files:
                _fetch_file(f, work / f.path, entry.name)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(work, dest)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    else:
        (f,) = entry.files
        _fetch_file(f, dest, entry.name)
    print(f"{entry.name}: saved to {dest}")
    return dest


def _fetch_file(f: weights.RemoteFile, dest: Path, name: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(f.url, out)
        if f.sha256 is None:
            print(f"warning: {name}: no checksum is recorded for {f.url}; not verified "
                  f"(sha256 of what arrived: {digest})", file=sys.stderr)
        elif digest != f.sha256.lower():
            raise InputError(f"{name}: checksum mismatch for {f.url}: expected sha256 {f.sha256}, got {digest}; "
                             f"the download was discarded")
        if f.member:
            _extract(tmp, f.member, dest, f.url)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _stream(url: str, out) -> str:
    """Copy url into the open file `out`, returning the sha256 of the bytes; a short read is an error."""
    req = urllib.request.Request(url, headers={"User-Agent": "fewstep-bench"})
    token = os.environ.get("HF_TOKEN")
    if token and url.startswith("https://huggingface.co/"):
        req.add_header("Authorization", f"Bearer {token}")
    h = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            expected = r.headers.get("Content-Length")
            while chunk := r.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except OSError as e:        # URLError, HTTPError, timeouts
        raise InputError(f"cannot download {url}: {e}") from None
    if expected is not None and int(expected) != size:
        raise InputError(f"download of {url} stopped after {size} of {expected} bytes")
    return h.hexdigest()


def _extract(archive: Path, member: str, dest: Path, url: str) -> None:
    try:
        with zipfile.ZipFile(archive) as z, z.open(member) as src:
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
    except (zipfile.BadZipFile, KeyError) as e:
        raise InputError(f"{url}: cannot extract {member}: {e}") from None
    os.replace(tmp, dest)
