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


# ----------------------------------------------------------------------------- the import graph
# Every import of every module of minigen/, the lazy ones inside functions included: an import
# inside a function is a dependency all the same, only hidden from a reader of the file's top.


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


MODULES = {module_name(p): p for p in FILES}


def graph() -> dict[str, set[str]]:
    """module -> the modules of minigen it imports (a name imported from a package that is a
    submodule counts as that submodule: `from minigen import backend` is minigen.backend)."""
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(n, ast.Import):
                found |= {_owner(a.name) for a in n.names}
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    up = package.split(".")[: len(package.split(".")) - n.level + 1]
                    base = ".".join(up + ([n.module] if n.module else []))
                found |= {_owner(f"{base}.{a.name}") for a in n.names}
        edges[name] = found - {None, name}
    return edges


def _owner(dotted: str) -> str | None:
    """The module of minigen that `dotted` names or lies in (None: not minigen)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (cycle := visit(w)):
                return cycle
        path.pop()
        state[v] = 2
        return None

    for v in sorted(edges):
        if v not in state and (cycle := visit(v)):
            return cycle
    return None


# The core, lowest first: a module imports only modules before it. A new module of the core
# goes where its imports put it.
CORE_ORDER = [
    "checks", "settings", "backend", "kernel_ops", "dispatch", "autograd", "tensor", "reductions",
    "gelu", "ops", "shape_ops", "rng", "normalize", "conv", "functional", "nn", "optim", "checkpoint",
    "runs", "training", "data_parallel", "mpi", "run_state", "gradcheck", "parallel", "lane",
    "plotting", "scalar", "toy2d", "cli_args",
]  # fmt: skip


def test_the_cycle_finder_finds_a_lazy_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_has_no_cycle():
    edges = graph()
    cycle = find_cycle(edges)
    assert cycle is None, "an import cycle (lazy imports count): " + " -> ".join(cycle)


def test_the_core_imports_only_modules_below_it():
    edges = graph()
    core = [n for n in MODULES if n.count(".") == 1 and layer_of(MODULES[n]) == "core"]
    unplaced = sorted(set(core) - {f"minigen.{m}" for m in CORE_ORDER})
    assert not unplaced, f"add {unplaced} to CORE_ORDER in tests/test_architecture.py"
    rank = {f"minigen.{m}": i for i, m in enumerate(CORE_ORDER)}
    for name in core:
        for dep in sorted(edges[name]):
            if dep in rank:
                assert rank[dep] < rank[name], (
                    f"{name} imports {dep}, which CORE_ORDER puts above it"
                )
