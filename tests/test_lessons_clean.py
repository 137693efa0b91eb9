"""Lessons are committed clean: no outputs, no execution counts (reviewable diffs).

They are executed by nbmake as part of the suite (fast mode, MINIGEN_FAST=1).
"""

from __future__ import annotations

import json
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
