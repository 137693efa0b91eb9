"""Build a static site of the executed lessons: one HTML page per lesson and an index.

    python lessons/build_site.py                  # into build/lessons-site/
    python lessons/build_site.py --out some/dir

The pages are nbconvert's HTML export of the notebooks as stored (executed in full mode by
`lessons/execute.py`), figures embedded, so the folder can be opened from disk or served as it is.
Nothing is executed here. (Formulas are typeset by MathJax, which the pages load from its CDN:
offline they show as LaTeX source.)
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "build" / "lessons-site"


def _title_and_summary(nb: dict) -> tuple[str, str]:
    """The lesson's first heading, and the first paragraph after its epigraph."""
    first = "".join(nb["cells"][0]["source"]) if nb["cells"] else ""
    lines = first.splitlines()
    title = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("# ")), "")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", first)]
    body = [p for p in paragraphs if p and not p.startswith(("#", ">", "1.", "-", "    "))]
    summary = " ".join(body[0].split()) if body else ""
    return title, summary


def build(out: Path, lessons: list[Path] | None = None) -> list[Path]:
    """Write out/NN_name.html for each lesson and out/index.html; returns the pages written."""
    import nbformat
    from nbconvert import HTMLExporter

    lessons = lessons if lessons is not None else sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if not lessons:
        raise SystemExit("build_site.py: no lessons found")
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    rows, pages = [], []
    for path in lessons:
        nb = nbformat.read(path, as_version=4)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        page = out / f"{path.stem}.html"
        page.write_text(body, encoding="utf-8")
        pages.append(page)
        title, summary = _title_and_summary(json.loads(path.read_text(encoding="utf-8")))
        mode = nb.metadata.get("minigen", {}).get("mode", "not executed")
        rows.append(
            f'<li><a href="{html.escape(page.name)}">{html.escape(title or path.stem)}</a>'
            f"<p>{html.escape(summary)}</p><small>outputs: {html.escape(mode)} mode</small></li>"
        )
    index = out / "index.html"
    index.write_text(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>minigen lessons</title><style>body{font-family:sans-serif;max-width:46em;"
        "margin:2em auto;line-height:1.4}li{margin-bottom:1em}p{margin:.2em 0}</style></head>"
        "<body><h1>minigen lessons</h1><p>Chapter 7 (Synthesis) of <i>The Little Book of Deep "
        "Learning</i>, built from scratch with minigen: the lessons as executed, outputs included."
        f"</p><ol>{''.join(rows)}</ol></body></html>\n",
        encoding="utf-8",
    )
    return [index, *pages]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT.name}/")
    args = ap.parse_args(argv)
    pages = build(args.out)
    print(f"{len(pages) - 1} lessons and an index in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
