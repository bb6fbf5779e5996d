"""`python -m bench list`: grids, models, solvers and metrics, and which are runnable on this machine."""
from __future__ import annotations

HELP = "list grids, models, solvers and metrics, and whether each is runnable here"


def add_arguments(parser) -> None:
    pass


def _missing(reqs) -> list:
    return [r for r in reqs if not r.present]


def main(args) -> int:
    import bench.metrics
    import bench.models
    import solvers
    from bench import grid as grids
    from bench import run as runner

    print("grids:")
    for name in grids.names():
        try:
            g = grids.load(name)
        except (ValueError, FileNotFoundError, ImportError) as e:
            print(f"  {name:<24} not runnable: {e}")
            continue
        if g.kind != "sampling":
            print(f"  {name:<24} runnable  {g.kind}: {g.description}")
            continue
        missing = [r for _, r in runner.requirements(g) if not r.present]
        state = "runnable " if not missing else f"missing {', '.join(r.name for r in missing)}"
        print(f"  {name:<24} {state} {len(g.cells)} cells: {g.description}")

    print("models:")
    models = {}
    for name in bench.models.names():
        try:
            m = models[name] = bench.models.get(name)
        except (ValueError, FileNotFoundError, ImportError) as e:
            print(f"  {name:<24} not runnable: {e}")
            continue
        missing = _missing(m.requirements())
        state = "runnable " if not missing else "missing " + "; ".join(r.missing_message() for r in missing)
        print(f"  {name:<24} {state} {m.description}")

    print("solvers:")
    for name in solvers.names():
        doc = (solvers.solver_class(name).__doc__ or (__import__(solvers.solver_class(name).__module__,
               fromlist=["x"]).__doc__ or "")).strip().splitlines()
        print(f"  {name:<24} runnable  {doc[0] if doc else ''}")

    print("metrics:")
    for name in bench.metrics.names():
        try:
            metric = bench.metrics.get(name)
        except (ValueError, FileNotFoundError, ImportError) as e:
            print(f"  {name:<24} not runnable: {e}")
            continue
        ok = [m for m, model in models.items() if metric.supports(model) and not _missing(metric.requirements(model))]
        print(f"  {name:<24} {metric.label}; runnable on: {', '.join(ok) or '(no model here)'}")
    return 0
