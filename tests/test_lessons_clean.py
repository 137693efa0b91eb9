"""Lessons are committed clean: no outputs, no execution counts (reviewable diffs).

They are executed by nbmake as part of the suite (fast mode, MINIGEN_FAST=1).
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).resolve().parents[1] / "lessons").glob("*.ipynb"))


def test_there_are_lessons():
    assert len(LESSONS) >= 2


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_is_committed_without_outputs_and_imports_minigen(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for cell in code:
        assert cell.get("outputs") == [], f"{path.name}: a cell has outputs"
        assert cell.get("execution_count") is None, f"{path.name}: a cell has an execution count"
    source = "".join("".join(c["source"]) for c in code)
    assert "import minigen" in source or "from minigen" in source
    assert "MINIGEN_FAST" in source, f"{path.name}: no fast mode for CI"


# ----------------------------------------------------------------------------- exercises
# Each lesson ends with exercises the learner checks: an exercise cell (tag "exercise") holds a
# stub that raises NotImplementedError, and the check cell under it (tag "check") compares the
# learner's function with minigen's, or prints that it skipped while the stub is there. The
# worked solutions live in lessons/solutions/lessonNN.py, and the checks are run on them here.

SOLUTIONS = LESSONS[0].parent / "solutions" if LESSONS else None


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _tagged(nb: dict, tag: str) -> list[dict]:
    return [c for c in nb["cells"] if tag in c.get("metadata", {}).get("tags", [])]


def _run_checks(path: Path, namespace: dict, capsys) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in _tagged(nb, "check"):
        exec(compile(_source(cell), f"{path.name}, cell {cell['id']}", "exec"), namespace)
    return capsys.readouterr().out


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_ends_with_checked_exercises_and_what_we_learned(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    exercises, checks = _tagged(nb, "exercise"), _tagged(nb, "check")
    assert len(checks) >= 3, f"{path.name}: {len(checks)} exercise check cells, expected >= 3"
    for cell in checks:
        assert cell["cell_type"] == "code" and "assert" in _source(cell), (
            f"{path.name}, cell {cell['id']}: a check cell without an assert"
        )
        assert "NotImplementedError" in _source(cell), (
            f"{path.name}, cell {cell['id']}: the check does not skip while the stub is there"
        )
    assert len(exercises) == len(checks), (
        f"{path.name}: {len(exercises)} exercises, {len(checks)} checks"
    )
    for cell in exercises:  # the learner's attempt comes first: no solution shipped in the lesson
        assert "raise NotImplementedError" in _source(cell), (
            f"{path.name}, cell {cell['id']}: an exercise cell that is not a stub"
        )
        after = cells[cells.index(cell) + 1]
        assert after in checks, (
            f"{path.name}: exercise cell {cell['id']} is not followed by its check"
        )
    last = cells[-1]
    assert last["cell_type"] == "markdown" and _source(last).startswith("## What we learned"), (
        f"{path.name}: the last cell is not a 'What we learned' markdown cell"
    )
    assert "## Exercises" in "".join(_source(c) for c in cells if c["cell_type"] == "markdown")


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_the_solutions_pass_the_lesson_checks(path, capsys):
    solutions = SOLUTIONS / f"lesson{path.name[:2]}.py"
    assert solutions.is_file(), f"no solutions for {path.name} ({solutions.name})"
    out = _run_checks(path, runpy.run_path(str(solutions)), capsys)
    n = len(_tagged(json.loads(path.read_text(encoding="utf-8")), "check"))
    assert "skipped" not in out, out
    assert out.count("correct") == n, out


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_the_checks_skip_on_the_stubs(path, capsys):
    nb = json.loads(path.read_text(encoding="utf-8"))
    namespace: dict = {}
    for cell in _tagged(nb, "exercise"):
        exec(compile(_source(cell), f"{path.name}, cell {cell['id']}", "exec"), namespace)
    out = _run_checks(path, namespace, capsys)
    assert out.count("skipped") == len(_tagged(nb, "check")), out
