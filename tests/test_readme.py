"""The README is an entry point: its test command is what CI runs, its book-to-code table names
code that exists, it stays short, and every relative link of the Markdown pages leads somewhere."""

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    block = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, "the Quickstart has exactly two command lines"
    assert "minigen demo" in commands[0]
    assert "-c constraints.txt" not in commands[0], "the demo installs without the test pins"
    assert "-c constraints.txt" in commands[1] and (ROOT / "constraints.txt").is_file()
    lines = ci.splitlines()
    assert commands[1] in lines
    # on a clean venv: .ci/run removes any .venv before the command creates one
    assert "rm -rf .venv" in lines[: lines.index(commands[1])]


def _table_rows() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## From the book to the code", 1)[1].split("\n## ", 1)[0]
    return [line for line in table.splitlines() if line.startswith(("| §", "| —"))]


def _defines(path: Path, name: str) -> bool:
    """`path` defines `name` (a def, a class, or a module-level assignment)."""
    pattern = rf"^\s*(def|class) {re.escape(name)}\b|^{re.escape(name)}\s*[:=]"
    return re.search(pattern, path.read_text(encoding="utf-8"), re.M) is not None


def test_book_to_code_table_names_files_and_functions_that_exist():
    """Each file of the book-to-code table exists, and each name after it is defined there:
    a reader with the book open follows the table without searching."""
    rows = _table_rows()
    assert len(rows) >= 20, "the table lost its rows"
    missing = []
    for row in rows:
        code = row.split("|")[3]
        current: Path | None = None
        for token in re.findall(r"`([^`]+)`", code):
            if token.startswith("minigen ") or " " in token.split("(")[0].strip():
                continue  # a command line, not a name
            if "/" in token or token.endswith(".py"):
                path = ROOT / token
                if not path.exists() and current is not None:
                    path = current.parent / token  # `other.py` beside the last file named
                if not path.exists():
                    missing.append(f"{token} (no such file)")
                    continue
                current = path
            elif current is not None and current.is_file():
                name = token.split("(")[0].split("[")[0].split(".")[-1]
                if not _defines(current, name):
                    missing.append(f"{token} (not in {current.relative_to(ROOT)})")
    assert not missing, "the README's book-to-code table names what does not exist: " + ", ".join(
        missing
    )


# --- links: every relative link of the project's Markdown pages leads somewhere ---------------

PAGES = ["README.md", "CONTRIBUTING.md", "benchmarks/README.md", "docs/*.md", "docs/**/*.md"]
README_MAX_LINES = 250

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines of a Markdown text outside fenced code blocks, numbered from 1."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text as rendered (code, emphasis and link markup
    dropped), lower-cased, every character but letters, digits, '-', '_' and spaces removed,
    spaces turned into '-' (github-slugger's rule)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"[`*]", "", text)
    kept = "".join(c for c in text.lower() if c.isalnum() or c in "-_ ")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image of a Markdown file that is not a URL, outside code."""
    links = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        line = _INLINE_CODE.sub("", line)
        for target in _LINK.findall(line) + _HTML.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                links.append((number, target))
    return links


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The relative links of `path` whose file does not exist (inside `root`), or whose
    #anchor is not a heading of that Markdown file, each as 'file:line: target (why)'."""
    broken = []
    for number, target in relative_links(path):
        where = f"{path.relative_to(root)}:{number}: {target}"
        file_part, _, anchor = unquote(target).partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not dest.is_relative_to(root.resolve()):
            broken.append(f"{where} (outside the repository)")
        elif not dest.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix != ".md":
            broken.append(f"{where} (an anchor into a file that is not Markdown)")
        elif anchor and anchor not in anchors(dest):
            broken.append(f"{where} (no heading with that anchor in {dest.name})")
    return broken


def _pages() -> list[Path]:
    return sorted({p for pattern in PAGES for p in ROOT.glob(pattern)})


def test_every_relative_link_of_the_markdown_pages_leads_somewhere():
    """README.md, CONTRIBUTING.md, benchmarks/README.md and docs/: each relative link names a file
    of the repository, and each #anchor a heading of its page."""
    pages = _pages()
    assert ROOT / "README.md" in pages and ROOT / "benchmarks" / "README.md" in pages
    assert any(p.parent.name == "docs" for p in pages), "docs/ holds no page"
    broken = [link for page in pages for link in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    """The checker itself: a good link and anchor pass; a missing file, a missing heading, a link
    out of the tree fail; links inside code and URLs are not links."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## Text-to-image (§7.2)\n\n## Why `Loop` — **one** loop\n\n## Twice\n\n## Twice\n"
    )
    (tmp_path / "README.md").write_text(
        "[ok](docs/page.md) [ok](docs/page.md#text-to-image-72) [ok](docs/page.md#why-loop--one-loop)\n"
        '[ok](docs/page.md#twice-1) [ok](#top) ![ok](docs/page.md) <img src="docs/page.md">\n'
        "[url](https://example.org/x.md) `[code](nothing.md)`\n"
        "```\n[fenced](nothing.md)\n```\n"
        "# Top\n"
        "[bad](docs/missing.md) [bad](docs/page.md#no-such-heading) [bad](../outside.md)\n"
        "[bad](docs/page.md#twice-2) ![bad](docs/missing.png)\n"
    )
    broken = broken_links(tmp_path / "README.md", root=tmp_path)
    assert [b.split(": ", 1)[1].split(" (")[0] for b in broken] == [
        "docs/missing.md",
        "docs/page.md#no-such-heading",
        "../outside.md",
        "docs/page.md#twice-2",
        "docs/missing.png",
    ], broken
    assert all(b.startswith("README.md:") for b in broken)


def test_the_readme_is_an_entry_point_of_at_most_250_lines():
    """The README says what to run and what you get; the details live in docs/ and
    benchmarks/README.md (a lab notebook in the README is what a newcomer trips on)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move details to docs/"
    )
