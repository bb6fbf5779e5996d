"""`python -m bench list`: grids, models, solvers and metrics, and which are runnable on this machine.

Each entry is one line of name and state, its description wrapped beneath it; what is missing is named once per
file (its weights entry), with the command that fetches them.
"""
from __future__ import annotations

import shutil
import textwrap

HELP = "list grids, models, solvers and metrics, and whether each is runnable here"


def add_arguments(parser) -> None:
    parser.add_argument("--width", type=int, default=None, help="wrap at this many columns (default: the terminal)")


def _names(reqs) -> list[str]:
    """The missing requirements' names, each once, in order."""
    return list(dict.fromkeys(r.name for r in reqs if not r.present))


class _Printer:
    def __init__(self, width: int):
        self.width = max(60, width)

    def entry(self, name: str, state: str, text: str = "") -> None:
        print(textwrap.fill(f"{name:<24} {state}", self.width, initial_indent="  ", subsequent_indent=" " * 27,
                            break_on_hyphens=False))
        if text:
            print(textwrap.fill(" ".join(text.split()), self.width, initial_indent=" " * 4,
                                subsequent_indent=" " * 4))


def _needs(names: list[str]) -> str:
    if not names:
        return "runnable"
    return f"needs {len(names)} file{'s' if len(names) > 1 else ''}: {', '.join(names)}"


def main(args) -> int:
    import bench.metrics
    import bench.models
    import solvers
    from bench import grid as grids
    from bench import run as runner

    out = _Printer(args.width or shutil.get_terminal_size((100, 24)).columns)
    missing_all: list[str] = []
    print("grids:")
    for name in grids.names():
        try:
            g = grids.load(name)
        except (ValueError, FileNotFoundError, ImportError) as e:
            out.entry(name, f"not runnable: {e}")
            continue
        if g.kind != "sampling":
            out.entry(name, f"runnable ({g.kind} study)", g.description)
            continue
        missing = _names(r for _, r in runner.requirements(g))
        missing_all += missing
        out.entry(name, f"{_needs(missing)}; {len(g.cells)} cells", g.description)

    print("models:")
    models = {}
    for name in bench.models.names():
        try:
            m = models[name] = bench.models.get(name)
        except (ValueError, FileNotFoundError, ImportError) as e:
            out.entry(name, f"not runnable: {e}")
            continue
        out.entry(name, _needs(_names(m.requirements())), m.description)

    print("solvers:")
    for name in solvers.names():
        cls = solvers.solver_class(name)
        doc = (cls.__doc__ or __import__(cls.__module__, fromlist=["x"]).__doc__ or "").strip().splitlines()
        out.entry(name, "runnable", doc[0] if doc else "")

    print("metrics:")
    for name in bench.metrics.names():
        try:
            metric = bench.metrics.get(name)
        except (ValueError, FileNotFoundError, ImportError) as e:
            out.entry(name, f"not runnable: {e}")
            continue
        ok = [m for m, model in models.items() if metric.supports(model) and not _names(metric.requirements(model))]
        out.entry(name, f"runnable on {', '.join(ok)}" if ok else "runnable on no model here", metric.label)

    if missing_all:
        print("\n" + textwrap.fill(f"{len(set(missing_all))} files are missing: `python -m bench download --list` "
                                   f"says where each is looked for (its environment variable) and how it is fetched "
                                   f"or made", out.width))
    return 0
