r"""The hot loops in CUDA C, compiled at run time by CuPy (backend "cupy").

The same kernels as `numba_cuda.py` (read it first: the launch patterns are
explained there), written in the language NVIDIA's own libraries use. `T` is the
element type: each source is compiled twice, after `typedef float T;` and after
`typedef double T;`, so float32 data is computed in float32.

- CUDA C kernels (`cuda_source.SOURCE`, compiled with `cupy.RawModule`) for the row
  kernels and matmul: softmax family, layer norm, naive and tiled matmul.
- `cupy.ElementwiseKernel` for the element-wise ones (DDPM step, GELU,
  `cuda_source.ELEMENTWISE`): CuPy writes the indexing loop, we write the body for
  one element.

This file is the host side: checks, launch sizes, argument types (C `int`
parameters get `np.int32`, `T` parameters a scalar of the data's dtype: CuPy passes
arguments as raw bytes, so a wrong width would be read as garbage).

Every function takes CuPy arrays (NumPy arrays are copied to the GPU) and returns
CuPy arrays. Models keep using cuBLAS for matmul (`a @ b` on CuPy arrays). cupy is
imported only when a kernel is first called; the sources are plain strings, so the
test suite compiles them with nvcc on machines without a GPU.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import KERNELS
from . import _array_group_norm_silu as _gns
from . import _checks as ck
from ._gpu_softmax import softmax_family
from .cuda_source import ELEMENTWISE, SOURCE

__all__ = list(KERNELS)

TILE = 16  # as #defined in cuda_source.SOURCE
MAX_THREADS = 256


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as e:
        raise ImportError("cupy is not installed: pip install minigen[gpu]") from e
    return cupy


@functools.cache
def _module(dtype: np.dtype) -> Any:
    ctype = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[dtype]
    return _cupy().RawModule(code=f"typedef {ctype} T;\n{SOURCE}")


@functools.cache
def _elementwise(name: str) -> Any:
    inputs, outputs, body = ELEMENTWISE[name]
    return _cupy().ElementwiseKernel(inputs, outputs, body, f"minigen_{name}")


def _launch(name: str, dtype: np.dtype, grid: tuple, block: tuple, *args: Any) -> None:
    _module(np.dtype(dtype)).get_function(name)(grid, block, args)


def _threads_for(n: int) -> int:
    """The smallest power of two >= n, at most MAX_THREADS (tree reductions need 2^k)."""
    t = 1
    while t < n and t < MAX_THREADS:
        t *= 2
    return t


def _dev(a: Any) -> Any:
    """A C-contiguous CuPy array (NumPy arrays are copied to the GPU)."""
    cp = _cupy()
    return cp.ascontiguousarray(cp.asarray(a))


# ----------------------------------------------------------------------------- matmul


def _matmul(op: str, a: Any, b: Any) -> Any:
    ck.check_matmul(op, a, b)
    ck.check_float(op, a=a, b=b)
    a, b = _dev(a), _dev(b)
    (n, k), m = a.shape, b.shape[1]
    c = _cupy().empty((n, m), dtype=a.dtype)  # (n, m)
    grid = ((m + TILE - 1) // TILE, (n + TILE - 1) // TILE)
    if c.size:
        _launch(op, a.dtype, grid, (TILE, TILE), a, b, c, np.int32(n), np.int32(k), np.int32(m))
    return c


def matmul_naive(a: Any, b: Any) -> Any:
    """(n, k) @ (k, m), one thread per output (for reading; models use cuBLAS)."""
    return _matmul("matmul_naive", a, b)


def matmul_tiled(a: Any, b: Any) -> Any:
    """(n, k) @ (k, m) through shared-memory tiles (for reading; models use cuBLAS)."""
    return _matmul("matmul_tiled", a, b)


def matmul_backward(a: Any, b: Any, dc: Any) -> tuple[Any, Any]:
    """dA = dC B^T, dB = A^T dC with the tiled kernel."""
    ck.check_matmul_backward(a, b, dc)
    return matmul_tiled(dc, _dev(b).T), matmul_tiled(_dev(a).T, dc)


# ----------------------------------------------------------------------------- softmax


def _forward(op: str, x: Any, scale: float, t_queries: int, causal: bool, log: bool) -> Any:
    ck.check_float(op, x=x)
    x = _dev(x)
    y = _cupy().empty_like(x)
    if x.size:
        n = x.shape[-1]
        args = (x, y, np.int32(n), x.dtype.type(scale), np.int32(t_queries))
        flags = (np.int32(causal), np.int32(log))  # C ints: pass 4-byte integers, not bools
        _launch("softmax_rows", x.dtype, (x.size // n,), (_threads_for(n),), *args, *flags)
    return y


def _backward(op: str, y: Any, dy: Any, scale: float, log: bool) -> Any:
    ck.check_last_axis(op, y)
    ck.check_same_shape(op, y=y, dy=dy)
    ck.check_float(op, y=y, dy=dy)
    y, dy = _dev(y), _dev(dy)
    dx = _cupy().empty_like(y)
    if y.size:
        n = y.shape[-1]
        args = (y, dy, dx, np.int32(n), y.dtype.type(scale), np.int32(log))
        _launch("softmax_backward_rows", y.dtype, (y.size // n,), (_threads_for(n),), *args)
    return dx


# softmax_forward and the five others: the same checks and launches as numba_cuda.py's
(
    softmax_forward, softmax_backward, log_softmax_forward, log_softmax_backward,
    causal_softmax_forward, causal_softmax_backward,
) = softmax_family(_forward, _backward)  # fmt: skip


# ----------------------------------------------------------------------------- DDPM


def ddpm_step(
    x_t: Any, eps: Any, z: Any, beta_t: float, alpha_t: float, abar_t: float, sigma_t: float
) -> Any:
    """x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, one pass."""
    # c_eps = beta_t / sqrt(1 - abar_t),  c_x = 1 / sqrt(alpha_t)   (host scalars)
    c_eps, c_x, sigma = ck.ddpm_scalars(x_t, eps, z, beta_t, alpha_t, abar_t, sigma_t)
    if z is None:
        return _elementwise("ddpm_mean")(_dev(x_t), _dev(eps), c_eps, c_x)
    return _elementwise("ddpm_step")(_dev(x_t), _dev(eps), _dev(z), c_eps, c_x, sigma)


# ----------------------------------------------------------------------------- layer norm


def layer_norm_forward(x: Any, weight: Any, bias: Any, eps: float = 1e-5) -> tuple[Any, Any, Any]:
    """(y, mean, rstd) of layer norm over the last axis, one block per row."""
    ck.check_layer_norm("layer_norm_forward", x, weight)
    ck.check_same_shape("layer_norm_forward", weight=weight, bias=bias)
    ck.check_float("layer_norm_forward", x=x, weight=weight, bias=bias)
    cp = _cupy()
    x, weight, bias = _dev(x), _dev(weight), _dev(bias)
    c = x.shape[-1]
    y = cp.empty_like(x)  # (..., C)
    mean = cp.empty(x.shape[:-1], dtype=x.dtype)  # (...)
    rstd = cp.empty(x.shape[:-1], dtype=x.dtype)  # (...)
    if x.size:
        args = (x, weight, bias, x.dtype.type(eps), y, mean, rstd, np.int32(c))
        _launch("layer_norm_rows", x.dtype, (x.size // c,), (_threads_for(c),), *args)
    return y, mean, rstd


def layer_norm_backward(dy: Any, x: Any, weight: Any, mean: Any, rstd: Any) -> tuple[Any, Any, Any]:
    """(dx, dweight, dbias): a block per row for dx, then a thread per column for dw, db."""
    ck.check_layer_norm("layer_norm_backward", x, weight, mean=mean, rstd=rstd)
    ck.check_same_shape("layer_norm_backward", x=x, dy=dy)
    ck.check_float("layer_norm_backward", dy=dy, x=x, weight=weight, mean=mean, rstd=rstd)
    cp = _cupy()
    dy, x, weight, mean, rstd = (_dev(a) for a in (dy, x, weight, mean, rstd))
    c = x.shape[-1]
    rows = x.size // c if c else 0
    dx = cp.empty_like(x)  # (..., C)
    dw = cp.empty(c, dtype=x.dtype)  # (C,)
    db = cp.empty(c, dtype=x.dtype)  # (C,)
    if c:
        if rows:
            args = (dy, x, weight, mean, rstd, dx, np.int32(c))
            _launch("layer_norm_dx_rows", x.dtype, (rows,), (_threads_for(c),), *args)
        threads = _threads_for(c)
        args = (dy, x, mean, rstd, dw, db, np.int32(rows), np.int32(c))
        _launch(
            "layer_norm_dw_columns", x.dtype, ((c + threads - 1) // threads,), (threads,), *args
        )
    return dx, dw, db


# ----------------------------------------------------------------------------- GELU


def gelu_forward(x: Any, approximate: str = "tanh") -> Any:
    """gelu(x), "tanh" approximation or exact ("none", erf); one thread per element."""
    ck.check_approximate("gelu_forward", approximate)
    ck.check_float("gelu_forward", x=x)
    name = "gelu_tanh_forward" if approximate == "tanh" else "gelu_erf_forward"
    return _elementwise(name)(_dev(x))


def gelu_backward(x: Any, dy: Any, approximate: str = "tanh") -> Any:
    """dx = dy * gelu'(x); one thread per element."""
    ck.check_approximate("gelu_backward", approximate)
    ck.check_same_shape("gelu_backward", x=x, dy=dy)
    ck.check_float("gelu_backward", x=x, dy=dy)
    name = "gelu_tanh_backward" if approximate == "tanh" else "gelu_erf_backward"
    return _elementwise(name)(_dev(x), _dev(dy))


# ----------------------------------------------------------------------------- AdamW


def adamw_step(
    p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float, beta2: float, eps: float,
    weight_decay: float, step: int,
) -> None:  # fmt: skip
    """One AdamW update of the CuPy buffers p, m, v in place, one thread per element."""
    scalars = ck.adamw_scalars(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
    cp = _cupy()
    for name, a in (("p", p), ("m", m), ("v", v)):
        if not isinstance(a, cp.ndarray) or not a.flags.c_contiguous:
            raise ValueError(
                f"adamw_step: {name} must be a C-contiguous CuPy array (updated in place)"
            )
    # ElementwiseKernel("T g, T decay, ..., T eps_hat", "T p, T m, T v"): p, m, v in place
    _elementwise("adamw_step")(_dev(g), *scalars, p, m, v)


# ----------------------------------------------------------------------------- group norm + SiLU
# No CUDA C kernel yet: CuPy array operations (see _array_group_norm_silu.py).


def group_norm_silu_forward(
    x: Any, weight: Any, bias: Any, num_groups: int, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    """(y, mean, rstd) of silu(group_norm(x)), as CuPy array operations."""
    return _gns.forward(_cupy(), _dev(x), _dev(weight), _dev(bias), num_groups, eps)


def group_norm_silu_backward(
    dy: Any, x: Any, weight: Any, bias: Any, mean: Any, rstd: Any
) -> tuple[Any, Any, Any]:
    """(dx, dweight, dbias), as CuPy array operations."""
    return _gns.backward(_cupy(), *(_dev(a) for a in (dy, x, weight, bias, mean, rstd)))
