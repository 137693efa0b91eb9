"""The backend switch: which array module holds tensor data.

Every op in minigen reaches its array functions through the *array module* of its
operands (`xp`), never through `numpy` directly, so the same function body runs on
NumPy arrays (CPU) and on CuPy arrays (GPU):

    xp = array_module(a)      # numpy or cupy, whichever owns `a`
    y = xp.exp(a)

`use(name)` chooses where *new* tensors are created ("numpy" now; "numba" and
"cupy" are added by the kernels issue), and the environment variable
`MINIGEN_BACKEND` sets the starting choice.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "use", "current", "xp", "array_module", "to_numpy", "scatter_add", "erf", "available",
    "keep_freed_memory",
]  # fmt: skip

_AVAILABLE = ("numpy",)
_name = "numpy"
xp: ModuleType = np  # the array module new tensors are created with


def available() -> tuple[str, ...]:
    """The backends this installation can use."""
    return _AVAILABLE


def use(name: str) -> None:
    """Select the backend by name: one of `available()`."""
    global _name, xp
    if name not in _AVAILABLE:
        raise ValueError(
            f"unknown or unavailable backend {name!r}; available here: {', '.join(_AVAILABLE)}"
        )
    _name, xp = name, np


def current() -> str:
    """The name of the backend in use."""
    return _name


def array_module(*arrays: Any) -> ModuleType:
    """The array module (numpy or cupy) that owns the first array among `arrays`.

    Python numbers are skipped; with no array at all, the current backend's module.
    """
    for arr in arrays:
        if isinstance(arr, np.ndarray | np.generic):
            return np
        if type(arr).__module__.startswith("cupy"):  # CuPy arrays exist, so cupy imports
            import cupy

            return cupy
    return xp


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
    use(_env)
if os.environ.get("MINIGEN_KEEP_MEMORY", "1") != "0":
    keep_freed_memory()
