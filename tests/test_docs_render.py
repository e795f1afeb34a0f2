"""The documentation site renders code as the house writes it: highlighted, and 110-character lines whole.

The site is built (``mkdocs build --strict``, the real configuration and pages, into a temporary folder)
with one page added that holds a 110-character code line; headless Chromium loads that page at a
1280-pixel-wide window, a script in the page measures every code block (``scrollWidth`` beyond
``clientWidth``, in the ``<pre>`` or the ``<code>`` in it, is a line clipped behind a scroll bar) and the
colour of a highlighted keyword, and the test reads the measurements from the dumped DOM. A screenshot is
saved beside the site.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 1280

#: The house's longest line (ruff's line length), in a block the page must show whole.
LONG_LINE = (
    "    result = await aprompt.optimize(program, trainset, metric, lm=lm, limits=limits, "
    'run_dir="runs/qa")  # ok!'
)
PAGE = f"""# Wide code

A page of the test, with a code line as long as the house's lines may be.

```python
async def main() -> None:
{LONG_LINE}
```
"""

#: Runs as the page loads (its style sheets are in place by then) and leaves its measurements in the DOM.
MEASURE = """<script>
(function () {
  // A code block scrolls (clips its lines) in its <pre> or in the <code> inside it, per theme.
  var blocks = Array.prototype.map.call(document.querySelectorAll("pre"), function (pre) {
    var boxes = [pre].concat(Array.prototype.slice.call(pre.querySelectorAll("code")));
    return {
      scroll: Math.max.apply(null, boxes.map(function (box) { return box.scrollWidth; })),
      clipped: boxes.some(function (box) { return box.scrollWidth > box.clientWidth; }),
      text: pre.textContent
    };
  });
  var keyword = document.querySelector(".highlight .k");
  var code = document.querySelector(".highlight pre");
  var out = document.createElement("div");
  out.id = "measured";
  out.textContent = JSON.stringify({
    blocks: blocks,
    keyword: keyword ? getComputedStyle(keyword).color : null,
    text: code ? getComputedStyle(code).color : null
  });
  document.body.appendChild(out);
})();
</script>
"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def _chromium_args(chromium: str, profile: Path) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},1000",
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built from the real configuration and pages plus ``wide_code.md``."""
    pytest.importorskip("mkdocs")
    work = tmp_path_factory.mktemp("docs-site")
    shutil.copytree(ROOT / "docs", work / "docs")
    (work / "docs" / "wide_code.md").write_text(PAGE, encoding="utf-8")
    # The configuration's paths (the griffe extension, the code) are relative to its own folder.
    (work / "scripts").symlink_to(ROOT / "scripts")
    (work / "aprompt").symlink_to(ROOT / "aprompt")
    config = work / "mkdocs.yml"
    config.write_text(f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: {work / 'docs'}\n", encoding="utf-8")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(work / "site")],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    return work / "site"


def measure(site: Path, page: Path) -> dict[str, Any]:
    """Load ``page`` (a built page, with :data:`MEASURE` added) in headless Chromium; its measurements."""
    measured_page = page.with_name("measured.html")
    measured_page.write_text(
        page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8"
    )
    dumped = subprocess.run(
        [*_chromium_args(_chromium(), site.parent / "profile"), "--dump-dom", measured_page.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r'<div id="measured">(.*?)</div>', dumped, re.DOTALL)
    assert found is not None, dumped[-2000:]
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


def test_the_site_highlights_code_at_build_time(site: Path) -> None:
    page = (site / "wide_code" / "index.html").read_text(encoding="utf-8")
    assert '<span class="k">async</span>' in page  # Pygments' spans, written by the build


def test_a_110_character_code_line_shows_whole_and_highlighted_in_chromium(site: Path) -> None:
    assert len(LONG_LINE) == 110
    measured = measure(site, site / "wide_code" / "index.html")

    (block,) = [b for b in measured["blocks"] if LONG_LINE.strip() in b["text"]]
    assert block["scroll"] > 700  # the line really is wide: it would not fit the theme's own width
    clipped = [b["text"] for b in measured["blocks"] if b["clipped"]]
    assert clipped == []
    assert measured["keyword"] is not None and measured["keyword"] != measured["text"]

    shot = site.parent / "wide_code.png"
    subprocess.run(
        [*_chromium_args(_chromium(), site.parent / "profile"), f"--screenshot={shot}", page_uri(site)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not an empty image


def page_uri(site: Path) -> str:
    return (site / "wide_code" / "index.html").as_uri()
