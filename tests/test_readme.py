"""The README's test command is exactly what CI runs."""

import re
from pathlib import Path

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
