"""minigen_kernels: the hot loops of minigen as NumPy, Numba-CPU, Numba-CUDA and CuPy kernels.

One computation, four readings, side by side:

    reference.py     NumPy, one array-wide pass per line: the math (backend "numpy")
    numba_cpu.py     the same loops fused, compiled for the CPU by Numba ("numba-cpu")
    numba_cuda.py    the same loops as CUDA kernels written in Python ("numba-cuda")
    cupy_kernels.py  the same loops in CUDA C, compiled by CuPy ("cupy")

Every backend module defines the functions named in `KERNELS` with the same
signatures: plain functions that take arrays and return arrays, forward and backward
separately, so an autograd op can dispatch to any of them. Pick one with `get`:

    >>> import minigen_kernels as mk
    >>> k = mk.get("numba-cpu")        # raises, naming what to install, if unavailable
    >>> y = k.softmax_forward(x)       # same result as mk.get("numpy").softmax_forward(x)

This folder, kernels/minigen_kernels/, is the package `minigen_kernels`: the folder kernels/
above it has no __init__.py, so `import kernels` never finds it there (an unrelated PyPI
package, which transformers imports, is called `kernels`). Importing it is cheap: a backend's module, and
numba or cupy with it, is only imported when `get` asks for it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "KERNELS",
    "SECOND_HALF",
    "GROUP_NORM",
    "KernelBackendError",
    "available",
    "get",
    "why_unavailable",
    "is_cuda_simulator",
    "to_numpy",
]

BACKENDS = ("numpy", "numba-cpu", "numba-cuda", "cupy")

# The functions every backend module defines (the contract the parity suite checks).
KERNELS = (
    "matmul_naive",  # (a (n, k), b (k, m)) -> c (n, m)
    "matmul_tiled",  # same, blocked for cache / shared memory
    "matmul_backward",  # (a, b, dc) -> (da, db)
    "softmax_forward",  # (x) -> y, over the last axis
    "softmax_backward",  # (y, dy) -> dx
    "log_softmax_forward",  # (x) -> y
    "log_softmax_backward",  # (y, dy) -> dx
    "causal_softmax_forward",  # (scores (..., T, S), scale) -> y
    "causal_softmax_backward",  # (y, dy, scale) -> dscores
    "ddpm_step",  # (x_t, eps, z, beta_t, alpha_t, abar_t, sigma_t) -> x_{t-1}
    "layer_norm_forward",  # (x, weight, bias, eps) -> (y, mean, rstd)
    "layer_norm_backward",  # (dy, x, weight, mean, rstd) -> (dx, dweight, dbias)
    "gelu_forward",  # (x, approximate) -> y
    "gelu_backward",  # (x, dy, approximate) -> dx
    "adamw_step",  # (p, g, m, v, lr, beta1, beta2, eps, weight_decay, step) -> None, in place
    # x (N, C, ...), weight and bias (C,); mean and rstd (N, G), one per sample and group
    "group_norm_silu_forward",  # (x, weight, bias, num_groups, eps) -> (y, mean, rstd)
    "group_norm_silu_backward",  # (dy, x, weight, bias, mean, rstd) -> (dx, dweight, dbias)
)
# The kernels of numba_cpu_norm.py and numba_cuda_norm.py, the second half of their backends.
SECOND_HALF = KERNELS[KERNELS.index("ddpm_step") : KERNELS.index("group_norm_silu_forward")]
# group norm + SiLU: numba_cpu_groupnorm.py on the CPU, _array_group_norm_silu.py on the GPUs
GROUP_NORM = KERNELS[KERNELS.index("group_norm_silu_forward") :]

_MODULES = {
    "numpy": "reference",
    "numba-cpu": "numba_cpu",
    "numba-cuda": "numba_cuda",
    "cupy": "cupy_kernels",
}


class KernelBackendError(RuntimeError):
    """A kernel backend was asked for that this installation or machine cannot run."""


def _probe(name: str) -> str | None:
    """None if backend `name` can run here, else the reason it cannot (what to install)."""
    if name == "numpy":
        return None
    if name in ("numba-cpu", "numba-cuda"):
        try:
            import numba  # noqa: F401
        except ImportError:
            return "numba is not installed: pip install numba (a dependency of minigen)"
    if name == "numba-cuda":
        try:
            from numba import cuda
        except ImportError as e:  # numba releases after the bundled numba.cuda
            return f"numba.cuda cannot be imported ({e}): pip install numba-cuda"
        if not cuda.is_available():
            return (
                "no CUDA device for numba-cuda (numba.cuda.is_available() is False); "
                "set NUMBA_ENABLE_CUDASIM=1 before numba is imported to run these kernels "
                "in numba's CUDA simulator (slow: tiny arrays only)"
            )
    if name == "cupy":
        try:
            import cupy
        except ImportError:
            return "cupy is not installed: pip install minigen[gpu]"
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDARuntimeError without a driver or a device
            return f"cupy is installed but finds no CUDA device ({e})"
        if count == 0:
            return "cupy is installed but finds no CUDA device"
    return None


def why_unavailable(name: str) -> str | None:
    """None if backend `name` can run here, else why not and what to install."""
    if name not in BACKENDS:
        raise KernelBackendError(
            f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}"
        )
    return _probe(name)


def available() -> tuple[str, ...]:
    """The backends that can run on this installation and machine, in `BACKENDS` order."""
    return tuple(name for name in BACKENDS if _probe(name) is None)


def get(name: str) -> ModuleType:
    """The module of backend `name`, which defines every function in `KERNELS`.

    Raises KernelBackendError naming what to install (or that no GPU is present)
    when the backend cannot run here.
    """
    reason = why_unavailable(name)
    if reason is not None:
        raise KernelBackendError(f"kernel backend {name!r} is unavailable: {reason}")
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")


def is_cuda_simulator() -> bool:
    """True when numba.cuda runs in its CPU simulator (NUMBA_ENABLE_CUDASIM=1)."""
    try:
        from numba.core import config
    except ImportError:
        return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    return bool(config.ENABLE_CUDASIM)


def to_numpy(a: Any) -> np.ndarray:
    """A NumPy array with the values of `a` (a NumPy, CuPy or Numba device array)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "copy_to_host"):  # numba.cuda device array
        return a.copy_to_host()
    if hasattr(a, "get"):  # cupy.ndarray
        return a.get()
    return np.asarray(a)
