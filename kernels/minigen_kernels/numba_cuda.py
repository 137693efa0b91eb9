r"""The hot loops as CUDA kernels written in Python with numba.cuda (backend "numba-cuda").

Read beside `reference.py` and `numba_cpu.py`. On a GPU, thousands of threads run
the same function; each finds its work from its position in the launch grid.

- Row kernels (softmax family, layer norm): *one block per row*, launched as
  `kernel[R, threads]`. The block's threads stride the row (thread t takes columns
  t, t + threads, ...: neighbouring threads read neighbouring floats, so a warp's 32
  loads merge into one memory transaction, "coalesced"), then combine their partial
  max or sum through shared memory, the block's small fast scratchpad
  (`_block_max`, `_block_sum`: a tree, halving the active threads each step).
  A row is read from global memory once per sweep; x - m, exp and the sum never
  leave registers, unlike NumPy's temporaries.
- Element-wise kernels (DDPM step, GELU): one thread per element, in a grid-stride
  loop (a thread handles i, i + grid size, ... so any launch size covers any n).
- Matmul: the naive kernel has one thread per C_ij, each reading a row of A and a
  column of B from global memory: 2k loads per 2k flops. The tiled kernel loads
  TILE x TILE blocks of A and B into shared memory once per block of threads and
  reuses each value TILE times, cutting global traffic by TILE. Models keep using
  cuBLAS (CuPy's `a @ b`), which adds register blocking and tensor cores on top.

Arrays: NumPy inputs are copied to the GPU and the result copied back (NumPy in,
NumPy out); device arrays (numba's, or CuPy's through `__cuda_array_interface__`)
stay on the GPU and a numba device array is returned. Shared-memory buffers take
the dtype of the data, so float32 work stays in float32. Without a GPU these
kernels run, slowly, in numba's simulator (NUMBA_ENABLE_CUDASIM=1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda

from . import KERNELS, to_numpy
from . import _array_group_norm_silu as _gns
from . import _checks as ck
from ._gpu_softmax import softmax_family
from ._numba_cuda_common import (
    MAX_THREADS,
    block_max,
    block_sum,
    device,
    host_or_device,
    threads_for,
)
from .numba_cuda_norm import (  # noqa: F401 (re-exported, as in numba_cpu.py: one module per backend)
    adamw_step,
    ddpm_step,
    gelu_backward,
    gelu_forward,
    layer_norm_backward,
    layer_norm_forward,
)

__all__ = list(KERNELS)


# ----------------------------------------------------------------------------- group norm + SiLU
# No CUDA kernel yet: NumPy array operations on the host (see _array_group_norm_silu.py).


def group_norm_silu_forward(
    x: Any, weight: Any, bias: Any, num_groups: int, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    """(y, mean, rstd) of silu(group_norm(x)), computed on the host with NumPy."""
    args = (to_numpy(a) for a in (x, weight, bias))
    return _gns.forward(np, *args, num_groups, eps)


def group_norm_silu_backward(
    dy: Any, x: Any, weight: Any, bias: Any, mean: Any, rstd: Any
) -> tuple[Any, Any, Any]:
    """(dx, dweight, dbias), computed on the host with NumPy."""
    return _gns.backward(np, *(to_numpy(a) for a in (dy, x, weight, bias, mean, rstd)))


TILE = 16  # 16 x 16 threads per block; two 16 x 16 tiles in shared memory

# ----------------------------------------------------------------------------- matmul


@cuda.jit
def _matmul_naive(a, b, c):
    # x runs along the columns j: a warp covers 32 neighbouring C_ij (coalesced B and C)
    j, i = cuda.grid(2)
    if i < c.shape[0] and j < c.shape[1]:
        acc = c.dtype.type(0)
        # C_ij = \sum_p A_ip B_pj, every operand fetched from global memory
        for p in range(a.shape[1]):
            acc += a[i, p] * b[p, j]
        c[i, j] = acc


@cuda.jit
def _matmul_tiled(a, b, c):
    sa = cuda.shared.array((TILE, TILE), a.dtype)  # this block's tile of A
    sb = cuda.shared.array((TILE, TILE), a.dtype)  # and of B
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    i = cuda.blockIdx.y * TILE + ty  # the C_ij this thread owns
    j = cuda.blockIdx.x * TILE + tx
    n, k = a.shape
    m = b.shape[1]
    zero = acc = c.dtype.type(0)  # typed zeros: a bare 0 would make float32 code float64
    for p0 in range(0, k, TILE):
        # each thread loads one element of each tile (zero padding past the edges)
        sa[ty, tx] = a[i, p0 + tx] if i < n and p0 + tx < k else zero
        sb[ty, tx] = b[p0 + ty, j] if p0 + ty < k and j < m else zero
        cuda.syncthreads()  # the tiles are complete before anyone reads them
        # C_ij += \sum_q A_i,p0+q B_p0+q,j  from shared memory: each value used TILE times
        for q in range(TILE):
            acc += sa[ty, q] * sb[q, tx]
        cuda.syncthreads()  # everyone is done before the next tiles overwrite these
    if i < n and j < m:
        c[i, j] = acc


def _matmul(op: str, kernel: Any, a: Any, b: Any) -> Any:
    ck.check_matmul(op, a, b)
    ck.check_float(op, a=a, b=b)
    da, host = device(a)
    db, _ = device(b)
    c = cuda.device_array((a.shape[0], b.shape[1]), dtype=a.dtype)  # (n, m)
    grid = ((b.shape[1] + TILE - 1) // TILE, (a.shape[0] + TILE - 1) // TILE)
    if c.size:
        kernel[grid, (TILE, TILE)](da, db, c)
    return host_or_device(c, host)


def matmul_naive(a: Any, b: Any) -> Any:
    """(n, k) @ (k, m), one thread per output, all loads from global memory."""
    return _matmul("matmul_naive", _matmul_naive, a, b)


def matmul_tiled(a: Any, b: Any) -> Any:
    """(n, k) @ (k, m) through TILE x TILE shared-memory tiles (models use cuBLAS)."""
    return _matmul("matmul_tiled", _matmul_tiled, a, b)


def matmul_backward(a: Any, b: Any, dc: Any) -> tuple[Any, Any]:
    """dA = dC B^T, dB = A^T dC with the tiled kernel."""
    ck.check_matmul_backward(a, b, dc)
    # on the GPU the transposes are strided views: the kernels read any strides
    return matmul_tiled(dc, b.T), matmul_tiled(a.T, dc)  # (n, k), (k, m)


# ----------------------------------------------------------------------------- softmax


@cuda.jit
def _softmax_rows(x, y, scale, t_queries, causal, log):
    buf = cuda.shared.array(MAX_THREADS, x.dtype)
    r, t, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x  # row, thread, threads
    n = x.shape[1]
    # causal: query i = r mod T sees keys j <= i + (S - T); otherwise every key
    seen = r % t_queries + (n - t_queries) + 1 if causal else n
    # m = max_j scale x_j: each thread over its columns, then across the block
    m = x[r, 0] * scale
    for j in range(t, seen, nt):
        v = x[r, j] * scale
        m = v if v > m else m  # max(m, v); numba.cuda's max() builtin needs a live GPU to type
    m = block_max(buf, m)
    # s = \sum_j exp(scale x_j - m)
    s = x.dtype.type(0)
    for j in range(t, seen, nt):
        s += math.exp(x[r, j] * scale - m)
    s = block_sum(buf, s)
    log_s = math.log(s) if log else s
    for j in range(t, n, nt):
        if j >= seen:
            y[r, j] = 0  # masked key: exp(-inf) = 0
        elif log:
            # log-softmax: y_j = x_j - m - log s
            y[r, j] = x[r, j] * scale - m - log_s
        else:
            # softmax: y_j = exp(scale x_j - m) / s   (exp recomputed, not stored and reread)
            y[r, j] = math.exp(x[r, j] * scale - m) / s


@cuda.jit
def _softmax_backward_rows(y, dy, dx, scale, log):
    buf = cuda.shared.array(MAX_THREADS, y.dtype)
    r, t, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    n = y.shape[1]
    s = y.dtype.type(0)
    for j in range(t, n, nt):
        # log-softmax needs \sum_j dy_j, softmax \sum_j dy_j y_j
        s += dy[r, j] if log else dy[r, j] * y[r, j]
    s = block_sum(buf, s)
    for j in range(t, n, nt):
        if log:
            # dx_j = dy_j - exp(y_j) s
            dx[r, j] = dy[r, j] - math.exp(y[r, j]) * s
        else:
            # dx_j = scale y_j (dy_j - s)
            dx[r, j] = scale * y[r, j] * (dy[r, j] - s)


def _rows_launch(x: Any) -> tuple[int, int]:
    """(blocks, threads) for one block per row of the 2-D view of x."""
    n = tuple(x.shape)[-1]  # a tuple: simulated device arrays reject negative indices
    return x.size // n, threads_for(n, MAX_THREADS)


def _forward(op: str, x: Any, scale: float, t_queries: int, causal: bool, log: bool) -> Any:
    ck.check_float(op, x=x)
    dx, host = device(x)
    y = cuda.device_array(tuple(x.shape), dtype=x.dtype)
    if x.size:
        blocks, threads = _rows_launch(x)
        shape = (blocks, x.size // blocks)
        x2, y2 = dx.reshape(shape), y.reshape(shape)
        _softmax_rows[blocks, threads](x2, y2, x.dtype.type(scale), t_queries, causal, log)
    return host_or_device(y, host)


def _backward(op: str, y: Any, dy: Any, scale: float, log: bool) -> Any:
    ck.check_last_axis(op, y)
    ck.check_same_shape(op, y=y, dy=dy)
    ck.check_float(op, y=y, dy=dy)
    d_y, host = device(y)
    d_dy, _ = device(dy)
    dx = cuda.device_array(tuple(y.shape), dtype=y.dtype)
    if y.size:
        blocks, threads = _rows_launch(y)
        shape = (blocks, y.size // blocks)
        _softmax_backward_rows[blocks, threads](
            d_y.reshape(shape), d_dy.reshape(shape), dx.reshape(shape), y.dtype.type(scale), log
        )
    return host_or_device(dx, host)


# softmax_forward and the five others: the same checks and launches as cupy_kernels.py's
(
    softmax_forward, softmax_backward, log_softmax_forward, log_softmax_backward,
    causal_softmax_forward, causal_softmax_backward,
) = softmax_family(_forward, _backward)  # fmt: skip
