"""Lessons are committed executed (in full mode, so anyone can read their outputs without running
them), with clean metadata, execution counts in order, and outputs that are fresh: computed from
the code cells as they are now.

`python lessons/execute.py` re-executes them and stores `minigen.code_hash`, a hash of the code
cells, in each notebook's metadata; the freshness test recomputes it. CI also executes every lesson
in fast mode (MINIGEN_FAST=1) through nbmake, which never writes the notebooks back.
"""

from __future__ import annotations

import importlib.util
import json
import runpy
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).resolve().parents[1] / "lessons").glob("*.ipynb"))
EXECUTE = LESSONS[0].parent / "execute.py" if LESSONS else None


def _execute_module():
    spec = importlib.util.spec_from_file_location("lessons_execute", EXECUTE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_lessons():
    assert len(LESSONS) >= 2


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_imports_minigen_and_has_a_fast_mode(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    source = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "import minigen" in source or "from minigen" in source
    assert "MINIGEN_FAST" in source, f"{path.name}: no fast mode for CI"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_is_stored_executed_with_clean_metadata_and_counts_in_order(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    allowed = set(_execute_module().NOTEBOOK_KEYS)
    assert set(nb["metadata"]) <= allowed, (
        f"{path.name}: notebook metadata {sorted(nb['metadata'])}"
    )
    assert nb["metadata"].get("minigen", {}).get("mode") == "full", (
        f"{path.name}: not stored executed in full mode; run `python lessons/execute.py {path.name[:2]}`"
    )
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts}, expected 1..{len(code)} in order (one clean run)"
    )
    for cell in nb["cells"]:
        assert set(cell.get("metadata", {})) <= {"tags"}, (
            f"{path.name}, cell {cell.get('id')}: metadata {sorted(cell['metadata'])}"
        )
    for cell in code:
        kinds = [o["output_type"] for o in cell["outputs"]]
        assert "error" not in kinds, f"{path.name}, cell {cell.get('id')}: a stored error"
    if any("plt.show()" in "".join(c["source"]) for c in code):  # figures are visible unrun
        images = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
        assert images, f"{path.name}: plots, but no figure stored"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_stored_outputs_are_fresh(path):
    """The stored outputs were computed from the code cells as they are now."""
    execute = _execute_module()
    nb = json.loads(path.read_text(encoding="utf-8"))
    stored = nb["metadata"].get("minigen", {}).get("code_hash")
    assert stored == execute.code_hash(nb), (
        f"{path.name}: its code changed since its outputs were stored; "
        f"run `python lessons/execute.py {path.name[:2]}` and commit the notebook"
    )


def test_freshness_hash_sees_a_code_change_and_ignores_markdown():
    execute = _execute_module()
    nb = json.loads(LESSONS[0].read_text(encoding="utf-8"))
    before = execute.code_hash(nb)
    markdown = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    markdown["source"] = ["# another title"]
    assert execute.code_hash(nb) == before
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["source"] = ["".join(code["source"]) + "\nx = 1"]
    assert execute.code_hash(nb) != before


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_stored_outputs_hold_no_path_of_the_machine_that_ran_them(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    text = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    for prefix in ("/work/", "/tmp/", "/home/", "/root/"):
        assert prefix not in text, f"{path.name}: an output holds a path under {prefix}"


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
