"""The learned-solver protocol (solvers/learned.py): a learned solver written as one class and registered by one
line is distilled, saved, loaded and run in a grid by the same code as DyWeight, with nothing naming it."""
from __future__ import annotations

import sys
import types

import pytest
import torch

import solvers
from bench import grid as grids
from bench import run as runner
from bench import store as results
from bench.distill import distill
from bench.models.gmm import gmm2d
from solvers.base import derivative
from solvers.learned import LearnedSolver


class ScaledEuler(LearnedSolver):
    """x_{i+1} = x_i + c_i (t_{i+1} - t_i) d(x_i, t_i), c learned (init 1: Euler); structure: `damp`, a factor
    applied to the initial c."""

    name = "scaled_euler"
    structure = ("damp",)
    parameter_options = ("c",)
    distill_defaults = {"steps": 5, "lr": 5e-2}

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c, dtype=torch.float64))

    @classmethod
    def from_options(cls, c=None, num_points=None, afs=None, damp: float = 1.0):
        if (c is None) == (num_points is None):
            raise solvers.base.InputError("scaled_euler needs exactly one of c=[...] or num_points=N")
        return cls(c if c is not None else [float(damp)] * (num_points - 1))

    def calls(self, num_points, afs=False, ends_at_zero=False):
        return num_points - 1 - int(afs)

    def _sample(self, den, x, t, afs):
        c = self.c if torch.is_grad_enabled() else self.c.detach().tolist()
        for i in range(len(t) - 1):
            a, g = (1 / (1 + t[0] ** 2) ** 0.5, x) if afs and i == 0 else derivative(den, x, t[i])
            x = x + c[i] * (t[i + 1] - t[i]) * a * g
        return x

    def options(self):
        return {"c": self.c.detach().tolist()}

    def state(self):
        return {"solver": self.name, "c": self.c.detach().tolist(), "metadata": self.metadata}

    @classmethod
    def from_state(cls, st):
        out = cls(st["c"])
        out.metadata = st.get("metadata", {})
        return out


@pytest.fixture
def registered(monkeypatch):
    mod = types.ModuleType("_user_learned")
    mod.ScaledEuler = ScaledEuler
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(solvers.REGISTRY, "targets", dict(solvers.REGISTRY.targets))
    solvers.register("scaled_euler", "_user_learned:ScaledEuler")
    return ScaledEuler


def test_the_family_is_declared_not_named(registered, tmp_path):
    assert solvers.learned_names() == ["dyweight", "epd", "gits", "ld3", "amed", "instance_aware", "scaled_euler"]
    assert not solvers.solver_class("ipndm").learned and solvers.solver_class("dyweight").learned
    s = solvers.solver_class("scaled_euler").untrained(5, damp=0.5)
    assert s.learns() == {"c": 4} and s.parameter_count() == 4 and s.c.tolist() == [0.5] * 4
    with pytest.raises(ValueError, match="scaled_euler has no structure option 'history'; accepted: damp"):
        solvers.solver_class("scaled_euler").untrained(5, history=2)
    dy = solvers.solver_class("dyweight").untrained(4, afs=True, history=2)
    assert dy.learns() == {"weights": 3 * 2, "time_scale": 2}
    m = gmm2d()
    out = distill("scaled_euler", m, m.grid(4), afs=False, seed=0, cache_dir=False, num_samples=64,
                  eval_samples=32, teacher_steps=8, damp=0.9)
    assert out.metadata["training"]["steps"] == 5 and out.metadata["training"]["damp"] == 0.9   # its defaults
    ev = out.metadata["training"]["eval_error"]
    assert ev[-1] < ev[0]                                       # it learned
    out.save(tmp_path / "s.json")
    back = solvers.load(tmp_path / "s.json")
    assert type(back) is ScaledEuler and back.c.tolist() == out.c.tolist()
    x = m.noise(range(4))
    torch.testing.assert_close(solvers.get("scaled_euler", **out.options()).sample(m.denoiser(), x, m.grid(4)),
                               out.sample(m.denoiser(), x, m.grid(4)))
    with pytest.raises(ValueError, match="not a saved learned solver \\(solver='ipndm'\\)"):
        solvers.from_state({"solver": "ipndm"})


def test_a_grid_distils_and_runs_any_registered_learned_solver(registered, tmp_path):
    p = tmp_path / "g.toml"
    p.write_text('name = "g"\nnfe = [3]\nnum_samples = 16\n[[models]]\nname = "gmm2d"\n'
                 'metrics = ["endpoint_error"]\n'
                 '[[solvers]]\nname = "scaled_euler"\nlabel = "Scaled Euler"\n'
                 'distill = { num_samples = 32, eval_samples = 8, teacher_steps = 6 }\n'
                 '[[solvers]]\nname = "scaled_euler"\nlabel = "Scaled Euler (init)"\n')
    g = grids.load(p)
    assert {c.row.family for c in g.cells} == {"learned"}
    assert runner.run(g, tmp_path / "res", progress=False, out=lambda *_: None).computed == 2
    df = results.load(tmp_path / "res")
    assert (df.status == "ok").all() and set(df.family) == {"learned"}
    saved = list((tmp_path / "res" / "solvers" / "g" / "gmm2d").glob("*.json"))
    assert len(saved) == 1 and type(solvers.load(saved[0])) is ScaledEuler      # only the distilled row is saved
    p.write_text(p.read_text().replace('label = "Scaled Euler (init)"\n', 'label = "R"\nreleased = true\n'))
    with pytest.raises(ValueError, match="scaled_euler has no released coefficients"):
        grids.load(p)
    p.write_text(p.read_text().replace('num_samples = 32,', 'history = 2, num_samples = 32,'))
    with pytest.raises(ValueError, match="distill has no option 'history'; accepted: damp, teacher"):
        grids.load(p)


HANDCRAFTED = '''
from solvers.base import Solver, combine, derivative


class TwoStep(Solver):
    """Adams-Bashforth 2 with fixed coefficients, Euler first (a user's handcrafted solver)."""
    name = "two_step"
    label = "Two-step"

    def calls(self, num_points, afs=False, ends_at_zero=False):
        return num_points - 1 - int(afs)

    def _sample(self, den, x, t, afs):
        prev = None
        for i in range(len(t) - 1):
            d = (1 / (1 + t[0] ** 2) ** 0.5, x) if afs and i == 0 else derivative(den, x, t[i])
            h = t[i + 1] - t[i]
            terms = [(h * d[0], d[1])] if prev is None else [(1.5 * h * d[0], d[1]), (-0.5 * h * prev[0], prev[1])]
            x = combine((1, x), *terms)
            prev = d
        return x
'''


def test_a_users_solvers_from_their_files_join_any_grid(tmp_path, monkeypatch, registered):
    """`bench run --grid G --solver file.py:Class [--distill]`: a handcrafted and a learned solver from the user's
    own files become rows of the grid, the learned one distilled per NFE and saved so that it loads again."""
    from bench import cli
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two_step.py").write_text(HANDCRAFTED)
    import inspect
    (tmp_path / "scaled.py").write_text("import torch\nimport solvers\nfrom solvers.base import derivative\n"
                                        "from solvers.learned import LearnedSolver\n\n\n"
                                        + inspect.getsource(ScaledEuler))
    (tmp_path / "g.toml").write_text('name = "g"\nnfe = [3, 5]\nnum_samples = 16\n[[models]]\nname = "gmm2d"\n'
                                     'metrics = ["endpoint_error"]\n[[solvers]]\nname = "ipndm"\nlabel = "iPNDM"\n'
                                     'afs = true\n')
    assert cli.main(["run", "--grid", "g.toml", "--solver", "two_step.py:TwoStep", "--results-dir", "res",
                     "--no-progress"]) == 0
    assert cli.main(["run", "--grid", "g.toml", "--solver", "scaled.py:ScaledEuler", "--distill", "--set",
                     "solvers[ScaledEuler].distill.num_samples=32", "--set",
                     "solvers[ScaledEuler].distill.eval_samples=8", "--results-dir", "res", "--no-progress"]) == 0
    df = results.load(tmp_path / "res")
    assert (df.status == "ok").all()
    fam = df.drop_duplicates("label").set_index("label").family.to_dict()
    assert fam == {"iPNDM": "handcrafted", "Two-step": "handcrafted", "ScaledEuler": "learned"}
    assert set(df[df.label == "Two-step"].solver) == {"two_step.py:TwoStep"} and bool(df.afs.all())
    saved = sorted((tmp_path / "res" / "solvers" / "g" / "gmm2d").glob("*.json"))
    assert [p.name for p in saved] == ["ScaledEuler-nfe3.json", "ScaledEuler-nfe5.json"]
    with pytest.raises(ValueError, match="names code to import"):
        solvers.load(saved[0])                                     # a results file never imports code by itself
    back = solvers.load(saved[0], spec="scaled.py:ScaledEuler")
    assert type(back).__name__ == "ScaledEuler" and back.metadata["training"]["steps"] == 5
    assert cli.main(["run", "--grid", "g.toml", "--solver", "missing.py:X", "--dry-run"]) == 2
    assert cli.main(["run", "--grid", "g.toml", "--solver", "two_step.py:TwoStep", "--distill", "--dry-run"]) == 2
    assert cli.main(["run", "--grid", "g.toml", "--solver", "two_step.py:Nope", "--dry-run"]) == 2


def test_learned_quick_runs_every_learned_solver_end_to_end(tmp_path):
    """The learned_quick grid, reduced (fewer samples, pairs and steps), runs every learned row and records the
    training cost of each distilled solver."""
    text = grids.path_of("learned_quick").read_text()
    for old, new in (("num_samples = 2000", "num_samples = 64"), ("num_samples = 500", "num_samples = 32"),
                     ("steps = 400", "steps = 3, num_samples = 64, eval_samples = 16"), ("steps = 300", "steps = 3"),
                     ("num_samples = 512, eval_samples = 128", "num_samples = 32, eval_samples = 8"),
                     ("steps = 1000", "steps = 3, num_samples = 64, eval_samples = 16"),
                     ("steps = 800", "steps = 3, num_samples = 64, eval_samples = 16"),
                     ("nfe = [3, 5, 7]", "nfe = [3, 5]")):
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "lq.toml").write_text(text)
    g = grids.load(tmp_path / "lq.toml")
    assert {c.row.name for c in g.cells if c.row.family == "learned"} == set(solvers.learned_names())
    runner.run(g, tmp_path / "res", progress=False, out=lambda *_: None)
    df = results.load(tmp_path / "res")
    assert (df.status == "ok").all() and {"DyWeight", "EPD (K=1)", "EPD (K=2)", "GITS + iPNDM", "LD3",
                                             "AMED-Solver", "Instance-aware"} <= set(df.label)
    for path in (tmp_path / "res" / "solvers").rglob("*.json"):
        t = solvers.load(path).metadata["training"]
        assert t["parameters"] > 0 and t["teacher_calls"] > 0 and t["student_calls"] >= 0 and t["wall_time"] > 0
    from bench import cli
    assert cli.main(["report", "--results-dir", str(tmp_path / "res"), "--reports-dir", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "learned_quick.md").read_text()
    costs = [line for line in md.splitlines() if line.startswith("| gmm2d EPD") or line.startswith("| gmm2d DyWeight")]
    assert costs and all(line.split("|")[3].strip().replace(",", "").isdigit() for line in costs)
    for label in ("EPD (K=1)", "DyWeight", "LD3", "AMED-Solver", "GITS + iPNDM", "Instance-aware"):
        assert f"| gmm2d {label} NFE 3 " in md                       # one cost row per distilled solver
    assert "## Learned time grids" in md and (tmp_path / "rep" / "figures" / "learned_quick_learned_grids.png").exists()
    # the instance-aware rows record their per-sample grids (and, on a mixture, each sample's component)
    ia = solvers.load(tmp_path / "res" / "solvers" / "learned_quick" / "gmm2d" / "Instance-aware-nfe3.json")
    rec = ia.metadata["sample_grids"]
    assert rec["seeds"] == list(range(64)) and len(rec["grids"]) == 64 and len(rec["grids"][0]) == 5
    assert len(rec["classes"]) == 64 and set(rec["classes"]) <= set(range(9))
    assert "classes" not in solvers.load(tmp_path / "res" / "solvers" / "learned_quick" / "digits" /
                                         "Instance-aware-nfe3.json").metadata["sample_grids"]
    assert "sample_grids" not in solvers.load(tmp_path / "res" / "solvers" / "learned_quick" / "gmm2d" /
                                              "LD3-nfe3.json").metadata
    assert "## Per-sample time grids" in md
    assert (tmp_path / "rep" / "figures" / "learned_quick_per_sample_grids.png").exists()


def test_the_solver_library_imports_nothing_from_the_layers_above():
    """solvers/ is the lowest layer: no module of it imports bench or baselines."""
    import ast
    from pathlib import Path
    for path in Path(solvers.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n.split(".")[0] in ("bench", "baselines") for n in names), (path.name, names)
