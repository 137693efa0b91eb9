"""Re-execute the lessons in full mode and store their outputs, so they can be read without running.

    python lessons/execute.py                 # every lesson (about ten minutes on a quiet machine)
    python lessons/execute.py 02 05           # only these (by number or file name)
    python lessons/execute.py --check         # which lessons' stored outputs are stale; exit 1 if any

Each notebook is run top to bottom in a fresh kernel, from the lessons' folder, in full mode
(MINIGEN_FAST unset), and written back in place with its outputs, execution counts 1, 2, ... and,
in the notebook's metadata, `minigen.code_hash`: a hash of its code cells' sources.
`tests/test_lessons_clean.py` recomputes that hash and fails when a lesson's code changed but its
outputs were not regenerated. The write is atomic: a lesson that fails to run keeps its old file.

CI never writes here: it runs every lesson in fast mode through nbmake, which does not write
the notebooks back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# the notebook-level metadata a stored lesson may hold; per cell, only "tags"
NOTEBOOK_KEYS = ("kernelspec", "language_info", "minigen")
# what must never be stored in an output: paths of the machine that executed it
MACHINE_PATHS = tuple(p for p in {str(ROOT), str(Path.home()), tempfile.gettempdir()} if p != "/")


def code_hash(nb: dict) -> str:
    """sha256 of the code cells' sources, in order: what the stored outputs were computed from."""
    h = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            h.update(source.encode("utf-8") + b"\0")
    return h.hexdigest()


def lessons(names: list[str]) -> list[Path]:
    every = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    picked = [p for p in every if any(p.name.startswith(n) or p.name == n for n in names)]
    unknown = [n for n in names if not any(p.name.startswith(n) or p.name == n for p in every)]
    if unknown:
        raise SystemExit(
            f"execute.py: no lesson named {unknown}; lessons: {[p.name for p in every]}"
        )
    return picked


def _clean(nb: dict) -> None:
    """Keep what a reader needs: outputs, counts, tags; drop run timings and widget state."""
    nb["metadata"] = {k: v for k, v in nb["metadata"].items() if k in NOTEBOOK_KEYS}
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags")
        cell["metadata"] = {"tags": tags} if tags else {}
        for out in cell.get("outputs", []):
            out.get("metadata", {}).pop("execution", None)


def _relative_paths(nb: dict) -> None:
    """Paths under the repository (a warning's file, say) written relative to it."""
    root = str(ROOT) + os.sep
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                text = out["text"] if isinstance(out["text"], str) else "".join(out["text"])
                out["text"] = text.replace(root, "")
            if "traceback" in out:
                out["traceback"] = [line.replace(root, "") for line in out["traceback"]]


def _machine_paths(nb: dict) -> list[str]:
    found = []
    for i, cell in enumerate(nb["cells"]):
        text = json.dumps(cell.get("outputs", []))
        found += [f"cell {i}: {p}" for p in MACHINE_PATHS if p in text]
    return found


def execute(path: Path, timeout: int) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_fast = os.environ.pop(
        "MINIGEN_FAST", None
    )  # full mode; the kernel inherits the environment
    os.environ.pop("MPLBACKEND", None)  # the inline backend, so figures are stored
    try:
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE)}}).execute()  # fmt: skip
        seconds = time.perf_counter() - t0
    finally:
        if env_fast is not None:
            os.environ["MINIGEN_FAST"] = env_fast
    _clean(nb)
    _relative_paths(nb)
    leaks = _machine_paths(nb)
    if leaks:
        raise RuntimeError(f"{path.name}: outputs hold paths of this machine: {leaks}")
    nb.metadata["minigen"] = {"code_hash": code_hash(nb), "mode": "full"}
    text = nbformat.writes(nb)  # sources as lists of lines, as Jupyter stores them
    text = text if text.endswith("\n") else text + "\n"
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # atomic: a failed run above leaves the old file
    return seconds


def stale(path: Path) -> bool:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return nb.get("metadata", {}).get("minigen", {}).get("code_hash") != code_hash(nb)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lessons", nargs="*", help="lesson numbers or file names (default: all)")
    ap.add_argument("--check", action="store_true", help="only list stale lessons")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = ap.parse_args(argv)
    paths = lessons(args.lessons)
    if args.check:
        bad = [p.name for p in paths if stale(p)]
        print("stale: " + ", ".join(bad) if bad else f"all {len(paths)} lessons are fresh")
        return 1 if bad else 0
    failed = []
    for path in paths:
        print(f"{path.name} ...", end=" ", flush=True)
        try:
            seconds = execute(path, args.timeout)
        except Exception as e:  # report, keep the old file, go on with the others
            failed.append(path.name)
            print(f"FAILED: {type(e).__name__}: {str(e)[-2000:]}")
            continue
        size = path.stat().st_size / 2**20
        print(f"{seconds:.0f} s, {size:.1f} MiB")
    if failed:
        print(f"execute.py: {len(failed)} lesson(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
