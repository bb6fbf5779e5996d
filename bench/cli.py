"""`python -m bench <command>`: each command lives in its own module under bench/commands/.

A command module defines `HELP` (one line), `add_arguments(parser)` and `main(args) -> int`.
Errors the user can fix (bad grid, unknown name, invalid option, missing file) raise `solvers.base.InputError`
(`UsageError` here is the same class) or FileNotFoundError, and are printed as one line with exit code 2, before any
work starts (BENCH_DEBUG=1 shows the traceback). Every other exception is a bug and keeps its traceback (exit 1).
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from solvers.errors import InputError

UsageError = InputError          # a problem with the user's input: printed as one line, exit code 2


def _commands() -> dict:
    import bench.commands as pkg
    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        found[info.name.replace("_", "-")] = f"bench.commands.{info.name}"
    return found


def main(argv=None) -> int:
    commands = _commands()
    parser = argparse.ArgumentParser(prog="python -m bench", description="The few-step diffusion solver benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, modname in sorted(commands.items()):
        mod = importlib.import_module(modname)
        modules[name] = mod
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].main(args) or 0)
    except (InputError, FileNotFoundError) as e:
        if os.environ.get("BENCH_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything finished before the interruption is stored", file=sys.stderr)
        return 130
