"""The pipeline's layers: a lower layer never imports an upper one, and no module imports itself back through
others (imports inside functions count: a lazy import is still a dependency). The graph is read from the source
(ast), so a new upward import or cycle fails here before it confuses anyone."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("solvers", "baselines", "bench")

# lowest first: a module may import modules of its own layer or of lower ones
LAYERS = [
    ("solvers",),
    ("baselines",),
    ("bench.provenance", "bench.stats", "bench.fakedevice"),
    ("bench.models", "bench.nets", "bench.weights"),
    ("bench.metrics",),
    ("bench.distill", "bench.studies", "bench.studies.numerical_study"),    # a study kind's own computation
    ("bench.plan", "bench.grid"),
    ("bench.store",),
    ("bench.standins", "bench.run", "bench.studies.perf"),                  # the perf study stores its rows
    ("bench.report",),
    ("bench.commands", "bench.cli", "bench.__main__"),
]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its source)."""
    edges = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m:
                    edges[m].add(t)
    return edges


def layer(module: str) -> int:
    """The layer of the longest LAYERS name that is the module or a package holding it."""
    hits = [(len(n), i) for i, names in enumerate(LAYERS) for n in names
            if module == n or module.startswith(n + ".")]
    return max(hits)[1] if hits else len(LAYERS)   # the package `bench` itself (its lazy `evaluate`) on top


def test_no_lower_layer_imports_an_upper_one():
    edges = imports(modules())
    bad = [f"{a} -> {b}" for a, targets in edges.items() for b in targets if layer(b) > layer(a)]
    assert not bad, "upward imports: " + "; ".join(sorted(bad))


def test_there_is_no_import_cycle():
    edges = imports(modules())
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))
    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer(m) == len(LAYERS) and m != "bench"] == []
