"""The static site of the executed lessons (lessons/build_site.py): an index linking every lesson,
and pages whose figures are embedded; then, where a headless browser is installed, that a real
browser loads the index and a lesson and decodes every figure."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.ipynb"))
BROWSERS = (
    "chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
)  # fmt: skip

pytest.importorskip("nbconvert")


def _site_module():
    spec = importlib.util.spec_from_file_location(
        "lessons_build_site", LESSONS_DIR / "build_site.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stored_figures(path: Path) -> int:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def test_site_index_links_every_lesson_and_pages_embed_their_figures(tmp_path):
    index, *pages = _site_module().build(tmp_path)
    links = re.findall(r'href="([^"]+\.html)"', index.read_text(encoding="utf-8"))
    assert links == [f"{p.stem}.html" for p in LESSONS]
    for lesson, page in zip(LESSONS, pages, strict=True):
        text = page.read_text(encoding="utf-8")
        title = json.loads(lesson.read_text(encoding="utf-8"))["cells"][0]["source"][0]
        assert title.lstrip("# ").strip() in text, f"{page.name}: the lesson's title is missing"
        embedded, stored = text.count('src="data:image/png;base64,'), _stored_figures(lesson)
        assert embedded >= stored, (
            f"{page.name}: {embedded} embedded figures, the notebook stores {stored}"
        )


# ----------------------------------------------------------------------------- a real browser
# The probe runs in the page once it has loaded, and writes what it saw into the DOM that the
# browser dumps: the number of <img> elements and how many were decoded (naturalWidth > 0).
PROBE = """<script>window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-probe", imgs.length + ":" + ok + ":" + document.links.length);
});</script>"""


def _browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def _probe(browser: str, page: Path) -> tuple[int, int, int]:
    probed = page.with_name("probe-" + page.name)
    probed.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
           "--dump-dom", probed.as_uri()]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout
    m = re.search(r'data-probe="(\d+):(\d+):(\d+)"', dom)
    assert m, f"{page.name}: the probe did not run in {Path(browser).name}"
    return int(m[1]), int(m[2]), int(m[3])


def test_site_renders_its_figures_in_a_headless_browser(tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser installed (looked for {', '.join(BROWSERS)})")
    lesson = next((p for p in LESSONS if _stored_figures(p) > 0), None)
    assert lesson is not None, "no lesson stores a figure: run `python lessons/execute.py`"
    index, page = _site_module().build(tmp_path, [lesson])
    _, _, links = _probe(browser, index)
    assert links >= 1, "the index shows no link"
    imgs, decoded, _ = _probe(browser, page)
    assert imgs >= _stored_figures(lesson), f"{page.name}: {imgs} images in the page"
    assert decoded == imgs, f"{page.name}: {imgs - decoded} of {imgs} figures did not render"
