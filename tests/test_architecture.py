"""The layers of minigen, checked: arrows point down only.

- the core (top-level modules of minigen/ other than the application) imports no part;
- a part (text, rlhf, diffusion, synthesis) imports the core, and another part only
  through that part's public package (`minigen.text`, never `minigen.text.gpt`);
- only the application (cli.py, demo.py) may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "minigen"
PARTS = {"text", "rlhf", "diffusion", "synthesis"}
APP = {"cli", "demo"}


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names += [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            names.append(n.module)
            names += [f"{n.module}.{a.name}" for a in n.names]
    return [m for m in names if m == "minigen" or m.startswith("minigen.")]


def layer_of(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0] if len(rel) > 1 else ("app" if path.stem in APP else "core")


FILES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    layer = layer_of(path)
    for mod in imports(path):
        parts = mod.split(".")
        target = parts[1] if len(parts) > 1 else None
        if layer == "app" or target is None or target not in PARTS:
            if layer == "core" and target in APP:
                pytest.fail(f"{path.name}: the core imports the application ({mod})")
            continue
        if layer == "core":
            pytest.fail(f"{path.relative_to(ROOT)}: the core imports the part {mod}")
        if target != layer and len(parts) > 3:  # minigen.<part>.<module>.<name>: internals
            pytest.fail(f"{path.relative_to(ROOT)}: imports {mod}, an internal of another part")
        inner = ROOT / target / parts[2] if len(parts) == 3 else None  # a module or subpackage
        if target != layer and inner and (inner.with_suffix(".py").exists() or inner.is_dir()):
            pytest.fail(f"{path.relative_to(ROOT)}: imports {mod}, an internal of another part")


def test_library_never_imports_the_oracles():
    for path in FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for n in ast.walk(tree):
            mods = [a.name for a in n.names] if isinstance(n, ast.Import) else []
            if isinstance(n, ast.ImportFrom) and n.module:
                mods = [n.module]
            for m in mods:
                assert m.split(".")[0] not in {"torch", "transformers", "diffusers"}, (
                    f"{path.relative_to(ROOT)} imports {m}: oracles are for tests and benchmarks only"
                )
