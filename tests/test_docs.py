"""The documents: every file they link exists (the shipped reports' own links included), the README's test command
is what CI runs, and every document the code cites is in the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "bench" / "grids" / "README.md", ROOT / "baselines" / "README.md",
        *sorted((ROOT / "reports").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(doc):
    text = doc.read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)]
    missing = [t for t in targets if t and "://" not in t and not (doc.parent / t).exists()]
    assert not missing, f"{doc.name} links to missing files: {missing}"


def test_the_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"```bash\n{ci}\n```" in readme
    assert "python -m bench run --grid quick" in readme and "tox -e py" in ci and "python3 -m pip" not in ci


def test_the_readme_names_no_unmeasured_placeholder():
    assert not re.search(r"\b[A-Z]+_TIME\b", (ROOT / "README.md").read_text())


def test_every_document_the_code_cites_is_in_the_repository():
    cited = set()
    for path in [*ROOT.glob("solvers/*.py"), *ROOT.glob("bench/**/*.py"), *ROOT.glob("baselines/*.py")]:
        cited |= set(re.findall(r"\b(docs/[\w./-]+\.md)", path.read_text()))
    assert cited and not [c for c in sorted(cited) if not (ROOT / c).exists()]


def test_a_report_links_the_reading_guide_from_wherever_it_is_written(tmp_path):
    from bench.report.grid_report import reading_link
    for folder in (tmp_path, ROOT / "reports", tmp_path / "a" / "b"):
        folder.mkdir(parents=True, exist_ok=True)
        assert (folder / reading_link(folder)).resolve() == ROOT / "docs" / "reading-reports.md"
