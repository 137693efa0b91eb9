"""The backend switch: which array module holds tensor data, and which kernels the fused ops call.

    minigen.backend.use("numpy")   # NumPy arrays; every op is minigen's NumPy code (default)
    minigen.backend.use("numba")   # NumPy arrays; the fused ops run Numba CPU kernels
    minigen.backend.use("cupy")    # CuPy arrays on an NVIDIA GPU; the fused ops run CUDA kernels

or the environment variable MINIGEN_BACKEND=numba (read when minigen is imported).
Choose the backend before building a model: tensors stay where they were created.

**The array module.** Every op reaches its array functions through the module of its
operands (`xp`), never through `numpy` directly, so one function body runs on NumPy
arrays (CPU) and on CuPy arrays (GPU):

    xp = array_module(a)      # numpy or cupy, whichever owns `a`
    y = xp.exp(a)

`xp` (this module's attribute) is where *new* tensors go: cupy for "cupy", numpy otherwise.
Operands owned by two array libraries in one op raise `BackendMismatchError`.

**The kernels.** `use("numba")` and `use("cupy")` also load the backend's kernel module
(`kernel_module()`: minigen_kernels.numba_cpu or minigen_kernels.cupy_kernels, from the
package in kernels/minigen_kernels/). Which NumPy function each fused op swaps for which
kernel is written in one table, `minigen/dispatch.py`; the ops call through its `pick`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS", "BackendError", "BackendMismatchError", "use", "current", "kernel_module",
    "available", "why_unavailable", "xp", "array_module", "to_numpy", "scatter_add", "erf",
    "import_kernels", "keep_freed_memory", "blas_threads", "using", "resolve", "describe",
]  # fmt: skip

BACKENDS = ("numpy", "numba", "cupy")

# The minigen_kernels backend behind each of ours (None: minigen's NumPy code only).
_KERNEL_BACKEND = {"numpy": None, "numba": "numba-cpu", "cupy": "cupy"}


class BackendError(RuntimeError):
    """A backend was asked for that this installation or machine cannot run."""


class BackendMismatchError(TypeError):
    """One op was given arrays of two array libraries (say NumPy and CuPy)."""


_name = "numpy"
xp: ModuleType = np  # the array module new tensors are created with
_kernels: ModuleType | None = None  # the selected backend's kernel module (None: "numpy")


# ----------------------------------------------------------------------------- the switch


def import_kernels() -> ModuleType:
    """The `minigen_kernels` package: installed, or else kernels/minigen_kernels/ of this checkout."""
    try:
        import minigen_kernels

        return minigen_kernels
    except ImportError:
        init = Path(__file__).resolve().parents[1] / "kernels" / "minigen_kernels" / "__init__.py"
        if not init.exists():
            raise BackendError(
                "the kernels package minigen_kernels is missing: reinstall minigen "
                "(pip install minigen; a checkout installs kernels/minigen_kernels/ with pip install -e .)"
            ) from None
    spec = importlib.util.spec_from_file_location(
        "minigen_kernels", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["minigen_kernels"] = module
    spec.loader.exec_module(module)
    return module


def why_unavailable(name: str) -> str | None:
    """None if backend `name` can run here, else why not and what to install."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if _KERNEL_BACKEND[name] is None:
        return None
    try:
        mk = import_kernels()
    except BackendError as e:
        return str(e)
    return mk.why_unavailable(_KERNEL_BACKEND[name])


def available() -> tuple[str, ...]:
    """The backends this installation and machine can run, in `BACKENDS` order."""
    return tuple(name for name in BACKENDS if why_unavailable(name) is None)


def use(name: str) -> None:
    """Select the backend: "numpy", "numba" or "cupy" (see the module docstring).

    Raises ValueError for an unknown name, and BackendError, naming what to install
    (numba, cupy) or what is missing (a CUDA device), for one that cannot run here.
    """
    global _name, xp, _kernels
    reason = why_unavailable(name)
    if reason is not None:
        raise BackendError(f"backend {name!r} is unavailable: {reason}")
    kernels = None
    if name != "numpy":
        # the kernel module (and numba or cupy with it) is imported only now, when asked for
        kernels = import_kernels().get(_KERNEL_BACKEND[name])
    if name == "cupy":
        import cupy

        module = cupy
    else:
        module = np
    _name, xp, _kernels = name, module, kernels


def resolve(requested: str = "auto") -> str:
    """The backend a training command runs on (its --backend flag): `requested`, or for "auto"
    MINIGEN_BACKEND's choice when the environment sets it, otherwise the rule measured in
    benchmarks/README.md ("Which backend a command runs on"): "numba" wherever its kernels run,
    as it was the faster on the CPU for every model measured (the GPT iteration, the U-Net
    step), else "numpy". A GPU ("cupy") only when asked: at the CPU models' small batches a
    kernel launch costs more than the work. ValueError for an unknown name.
    """
    if requested == "auto":
        if os.environ.get("MINIGEN_BACKEND"):
            return current()
        return "numba" if why_unavailable("numba") is None else "numpy"
    why_unavailable(requested)  # ValueError naming the choices for an unknown name
    return requested


def describe() -> str:
    """What a command runs on, as it prints it once at its start: "backend numba, 2 BLAS threads"."""
    try:
        from threadpoolctl import threadpool_info

        blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:  # threadpoolctl comes with scikit-learn; without it, say nothing
        blas = []
    threads = f", {max(blas)} BLAS thread{'s' * (max(blas) != 1)}" if blas else ""
    return f"backend {current()}{threads}"


def current() -> str:
    """The name of the backend in use."""
    return _name


def kernel_module() -> ModuleType:
    """The kernel module of the backend in use (minigen_kernels.numba_cpu for "numba",
    minigen_kernels.cupy_kernels for "cupy"); BackendError on "numpy", which has none."""
    if _kernels is None:
        raise BackendError('the "numpy" backend runs no kernels: minigen.backend.use("numba")')
    return _kernels


@contextlib.contextmanager
def using(name: str) -> Iterator[None]:
    """`use(name)` inside the block, and the backend that was in use back after it (also
    when the block raises)."""
    previous = current()
    use(name)
    try:
        yield
    finally:
        use(previous)


# ----------------------------------------------------------------------------- array modules


def _library(arr: Any) -> str | None:
    """The name of the array library that owns `arr`; None for Python numbers and such."""
    if isinstance(arr, np.ndarray | np.generic):
        return "numpy"
    if hasattr(arr, "__cuda_array_interface__") or hasattr(arr, "__array_namespace__"):
        return type(arr).__module__.partition(".")[0]
    return None


def _mismatch(op: str, arrays: tuple[Any, ...]) -> BackendMismatchError:
    seen = {}
    for arr in arrays:
        lib = _library(arr)
        if lib is not None:
            seen.setdefault(lib, f"{type(arr).__module__}.{type(arr).__name__}")
    listed = " and ".join(f"{kind} ({lib})" for lib, kind in seen.items())
    return BackendMismatchError(
        f"{op or 'an op'}: arrays of two array libraries in one op: {listed}. A graph lives "
        f"on one backend (now {_name!r}): create every tensor after minigen.backend.use(...), "
        "or move arrays with minigen.backend.to_numpy(a) / minigen.backend.xp.asarray(a)"
    )


def array_module(*arrays: Any, op: str = "") -> ModuleType:
    """The array module (numpy or cupy) that owns the arrays among `arrays`.

    Python numbers are skipped; with no array at all, the current backend's module.
    Arrays of two libraries raise BackendMismatchError (naming `op`, if given).
    """
    found = None
    for arr in arrays:
        if isinstance(arr, np.ndarray | np.generic):
            module = np
        elif type(arr).__module__.startswith("cupy"):  # CuPy arrays exist, so cupy imports
            import cupy

            module = cupy
        elif hasattr(arr, "__array_namespace__"):  # any other array-API library
            module = arr.__array_namespace__()
        else:
            continue
        if found is None:
            found = module
        elif module is not found:
            raise _mismatch(op, arrays)
    return xp if found is None else found


def to_numpy(arr: Any) -> np.ndarray:
    """A NumPy array holding the same values (copied off the GPU when needed)."""
    if isinstance(arr, np.ndarray):
        return arr
    if hasattr(arr, "get"):  # cupy.ndarray
        return arr.get()
    return np.asarray(arr)


def scatter_add(target: Any, idx: Any, values: Any) -> None:
    """target[idx] += values, adding once per occurrence of a repeated index."""
    if isinstance(target, np.ndarray):
        np.add.at(target, idx, values)
    else:  # pragma: no cover - GPU only
        import cupyx

        cupyx.scatter_add(target, idx, values)


def erf(x: Any) -> Any:
    """The error function, elementwise, on the array module that owns `x`."""
    if isinstance(x, np.ndarray | np.generic):
        from scipy.special import erf as _erf

        return _erf(x)
    from cupyx.scipy.special import erf as _erf  # pragma: no cover - GPU only

    return _erf(x)


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Ask the C allocator (glibc's malloc) to keep freed memory for reuse.

    Training allocates and frees the same large temporaries at every step. By default glibc
    gives big freed blocks back to the operating system, and the next step pays a page fault
    for each 4 KiB it touches again: 12,000 faults and a quarter of the time of a GPT
    training step on the CPU benchmark. This keeps blocks up to 32 MiB in the heap and up to
    `trim_threshold` bytes of free heap mapped. Called when minigen is imported, unless the
    environment sets MINIGEN_KEEP_MEMORY=0; returns False where there is no glibc (macOS,
    Windows, musl), where it changes nothing.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )


_env = os.environ.get("MINIGEN_BACKEND")
if _env:
    try:
        use(_env)
    except (ValueError, BackendError) as e:
        raise type(e)(f"environment variable MINIGEN_BACKEND={_env}: {e}") from None
if os.environ.get("MINIGEN_KEEP_MEMORY", "1") != "0":
    keep_freed_memory()


@contextlib.contextmanager
def blas_threads(n: int | None = 1) -> Iterator[None]:
    """Run BLAS on `n` threads inside the block (None: leave the setting as it is).

    OpenBLAS's threads spin and collapse when other jobs share the cores; the long CPU
    runs (diffusion training and sampling, RLHF) pin BLAS to one thread with this."""
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it, BLAS keeps its threads
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield
