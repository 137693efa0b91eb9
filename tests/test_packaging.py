"""The repository shadows no installed package when run from its root.

`python -m pytest` and `python -c ...` from the root put the root first on sys.path, so a
top-level folder with an __init__.py wins over an installed package of the same name.
kernels/ was one: it hid PyPI's `kernels`, which transformers imports (the oracle tests
failed with "cannot import name 'CUDAProperties' from 'kernels'"). kernels/ is now a
source root without __init__.py holding the package minigen_kernels (kernels/minigen_kernels/);
a folder without __init__.py is only a namespace portion, and an installed regular
package always wins over it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
OWN = {"minigen"}  # this repository's own distribution (installed editable or not)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _from_root(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` as `python -c` does from the root, the root also first on sys.path."""
    prelude = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True
    )


def test_kernels_folder_is_a_source_root_not_a_package():
    assert not (ROOT / "kernels" / "__init__.py").exists(), (
        "kernels/__init__.py makes kernels/ the package `kernels`, shadowing PyPI's"
    )
    assert (ROOT / "kernels" / "minigen_kernels" / "__init__.py").exists()


def test_import_kernels_from_the_root_finds_the_installed_package():
    if not _installed("kernels"):
        pytest.skip("PyPI's kernels is not installed (transformers>=5 brings it)")
    dist = importlib.metadata.distribution("kernels")
    expected = Path(dist.locate_file("kernels/__init__.py")).resolve()
    out = _from_root("import kernels; print(kernels.__file__)")
    assert out.returncode == 0, out.stderr
    found = Path(out.stdout.strip()).resolve()
    assert found == expected, f"`import kernels` from the root found {found}, not {expected}"
    assert not found.is_relative_to(ROOT / "kernels")


def test_transformers_imports_from_the_root():
    if not _installed("transformers"):
        pytest.skip("transformers is not installed (the oracle extra)")
    out = _from_root("from transformers import GPT2LMHeadModel")
    assert out.returncode == 0, out.stderr[-2000:]


def _top_level_names() -> list[str]:
    """What `import NAME` finds in the root: folders with an __init__.py, and modules."""
    folders = [p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()]
    modules = [p.stem for p in ROOT.glob("*.py") if p.name not in {"setup.py", "conftest.py"}]
    return sorted(folders + modules)


def test_no_top_level_name_is_an_installed_distributions():
    names = _top_level_names()
    assert "minigen" in names
    installed = importlib.metadata.packages_distributions()
    clashes = {
        name: others for name in names if (others := sorted(set(installed.get(name, [])) - OWN))
    }
    assert not clashes, f"top-level names of the repository shadow installed packages: {clashes}"


def _extras() -> dict[str, list[str]]:
    """setup.py's extras_require, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def test_constraints_pin_every_test_dependency_of_setup_py():
    """constraints.txt pins each package of the dev and oracle extras to one version (its
    transitive dependencies too: regenerated from a freeze, see CONTRIBUTING.md)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not name==version"
            pins[canonicalize_name(name)] = version
    extras = _extras()
    for spec in extras["dev"] + extras["oracle"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name} (setup.py: {spec!r})"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside setup.py's {spec!r}"
        )
    assert "minigen" not in pins
