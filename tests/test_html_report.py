"""The HTML report in a real headless browser (Chromium from Debian's packages; `.ci/run` installs it): the page
renders (a screenshot that is not blank) and every image on it loads (checked by the browser itself)."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from bench.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")

GRID = """
name = "page"
nfe = [3, 4]
num_samples = 40
batch_size = 40
[[models]]
name = "gmm2d"
metrics = ["endpoint_error", "fd_exact"]
floors = ["exact_ode"]
[[solvers]]
name = "euler"
label = "Euler"
[[solvers]]
name = "ipndm"
label = "iPNDM"
[[solvers]]
name = "dyweight"
label = "DyWeight"
distill = { steps = 6, num_samples = 32, eval_samples = 8 }
"""

CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
});
</script></body>"""


def _browser(*args, timeout=120):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    (tmp / "page.toml").write_text(GRID)
    res = tmp / "res"
    assert main(["run", "--grid", str(tmp / "page.toml"), "--results-dir", str(res), "--no-progress"]) == 0
    assert main(["report", "--results-dir", str(res)]) == 0
    return res / "reports" / "page.html"


def test_every_image_of_the_page_loads_in_the_browser(page, tmp_path):
    html = page.read_text()
    assert html.count("<img") >= 5 and "src=\"data:image/png;base64," in html        # self-contained figures
    probe = page.with_name("probe.html")
    probe.write_text(html.replace("</body>", CHECK))
    dom = _browser("--dump-dom", probe.as_uri()).stdout
    m = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert m, dom[-2000:]
    loaded, total = int(m.group(1)), int(m.group(2))
    assert total == html.count("<img") and loaded == total


def test_the_page_renders_tables_and_figures(page, tmp_path):
    from PIL import Image
    shot = tmp_path / "shot.png"
    _browser(f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
    assert shot.exists()
    img = Image.open(shot).convert("L")
    colours = img.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50                 # text, tables, plots: not a blank page
    assert "<table>" in page.read_text() and "DyWeight" in page.read_text()
    index = page.with_name("index.html").read_text()
    assert 'href="page.html"' in index
