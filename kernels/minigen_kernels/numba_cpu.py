r"""The hot loops as fused Numba CPU kernels (backend "numba-cpu").

Read beside `reference.py`: each kernel computes what the NumPy function of the
same name computes, but in *one* sweep over each row instead of one sweep per
array operation. NumPy's softmax reads and writes the whole (R, N) array five
times and allocates four temporaries; the kernel below reads a row (64 floats:
256 bytes, which stays in the L1 cache), finds its max, exponentiates and sums it,
and scales it, touching main memory about once in and once out.

How the loops are compiled:
- `parallel=True` with `prange` over rows: rows are independent, so the cores split
  them. Waking the worker threads costs from tens of microseconds (idle machine) to
  milliseconds (busy machine), more than a whole 0.2 ms softmax, and BLAS's threads
  already hold the cores, so by default every call runs on one core (`PARALLEL_MIN_SIZE`,
  see `_numba_cpu_common.py` for the measurement), which is where fusing alone must beat
  NumPy. `set_parallel_min_size(0)` uses every core for every call.
- `fastmath={"reassoc", "contract"}` only on the kernels that *sum* (softmax family,
  layer norm): it lets LLVM keep 8 partial sums in SIMD lanes (another rounding
  order, not another result beyond rounding) and fuse multiply-adds. We never
  assume "no inf, no NaN" (`ninf`, `nnan`): the causal mask and the row maximum
  use -inf.
- `error_model="numpy"`: x / 0 gives inf or nan, as in NumPy, instead of raising.
  Python's model tests every divisor for zero, a branch in each iteration that keeps
  a loop with a division from being vectorised (GELU ran 10 times slower with it).
- `cache=True`: the compiled machine code is kept in __pycache__, so only the first
  run pays the compilation.
- `fast_exp` (see `_numba_cpu_common.py`) is an exp LLVM can vectorise for float32.

Each public function checks its arguments, makes its inputs C-contiguous with the
reduced axis last, viewed as 2-D (rows, N), and calls a kernel that fills a
preallocated output. Matmul: models keep calling BLAS (`a @ b`: register blocking,
hand-tuned SIMD, all cores); the two kernels here show why loop order and blocking
matter. The naive loop walks B down its columns (a cache miss per multiply-add);
the tiled loop runs along rows (SIMD) and reuses blocks of B from cache. At
1024 x 1024 we measured, on a busy 2-core machine: naive 7.9 s, tiled 0.15 s,
BLAS 0.07 s.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from . import KERNELS
from . import _checks as ck
from . import _numba_cpu_common as _common
from ._numba_cpu_common import fast_exp, use_threads
from .numba_cpu_groupnorm import (  # noqa: F401 (re-exported: one module per backend)
    group_norm_silu_backward,
    group_norm_silu_forward,
)
from .numba_cpu_norm import (  # noqa: F401 (re-exported, as in numba_cuda.py: one module per backend)
    adamw_step,
    ddpm_step,
    gelu_backward,
    gelu_forward,
    layer_norm_backward,
    layer_norm_forward,
)

__all__ = ["set_parallel_min_size", *KERNELS]

_FAST = {"reassoc", "contract"}  # vectorised sums; no assumptions about inf or NaN
TILE = 64  # rows per block: 64 rows of B (64 x m floats) stay in the L2 cache


def set_parallel_min_size(elements: int) -> int:
    """Run kernels on all of Numba's threads from this many elements on; returns the old value.

    0 parallelises every call (best on an idle many-core machine); a huge value keeps
    every call on one core (best on a busy shared machine).
    """
    previous = _common.PARALLEL_MIN_SIZE
    _common.PARALLEL_MIN_SIZE = int(elements)
    return previous


def _rows(x: np.ndarray) -> np.ndarray:
    """x as a C-contiguous (rows, N) array, N the last axis (a view when possible)."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


# ----------------------------------------------------------------------------- matmul
# Each kernel is written as the work of one unit (a row, a band of rows) plus a loop
# over the units: `prange` (split over the cores) when `threads` is True, else a plain
# `range` on the calling core, which starts no thread at all. The unit functions are
# inlined into the loops (`inline="always"`): a call per 64-float row cost 20%.


@njit(inline="always", error_model="numpy")
def _matmul_naive_row(a, b, c, i):
    for j in range(b.shape[1]):
        acc = c.dtype.type(0)
        # C_ij = \sum_p A_ip B_pj: B is walked down a column, m floats apart, so each
        # B_pj is on a new cache line; for m >= 16 nearly every load misses the cache.
        for p in range(a.shape[1]):
            acc += a[i, p] * b[p, j]
        c[i, j] = acc


@njit(parallel=True, cache=True, error_model="numpy")
def _matmul_naive(a, b, c, threads):
    if threads:
        for i in prange(a.shape[0]):  # rows of C split over the cores
            _matmul_naive_row(a, b, c, i)
    else:
        for i in range(a.shape[0]):
            _matmul_naive_row(a, b, c, i)


@njit(inline="always", error_model="numpy")
def _matmul_band(a, b, c, i0, i1):
    k, m = b.shape
    for p0 in range(0, k, TILE):
        p1 = min(p0 + TILE, k)
        # C[I, :] += A[I, P] B[P, :]: the block B[P, :] (TILE rows) is loaded into cache
        # once and reused by all the rows i of the band, instead of being streamed from
        # memory again for every row of C.
        for i in range(i0, i1):
            for p in range(p0, p1):
                a_ip = a[i, p]
                # C_i,: += A_ip B_p,:  both rows contiguous: SIMD multiply-adds. The loop
                # runs over whole rows from 0, so Numba knows j >= 0 and drops its
                # negative-index check, which would block vectorisation.
                for j in range(m):
                    c[i, j] += a_ip * b[p, j]


@njit(parallel=True, cache=True, error_model="numpy")
def _matmul_tiled(a, b, c, threads):
    n = a.shape[0]
    bands = (n + TILE - 1) // TILE  # bands of TILE rows of C
    if threads:
        for ib in prange(bands):
            _matmul_band(a, b, c, ib * TILE, min(ib * TILE + TILE, n))
    else:
        for ib in range(bands):
            _matmul_band(a, b, c, ib * TILE, min(ib * TILE + TILE, n))


def _matmul(op: str, kernel: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ck.check_matmul(op, a, b)
    ck.check_float(op, a=a, b=b)
    c = np.zeros((a.shape[0], b.shape[1]), dtype=a.dtype)  # (n, m); the tiled kernel adds to it
    threads = use_threads(a.shape[0] * a.shape[1] * b.shape[1])  # multiply-adds
    kernel(np.ascontiguousarray(a), np.ascontiguousarray(b), c, threads)
    return c


def matmul_naive(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, k) @ (k, m) by the triple loop i, j, p (for reading; models use BLAS)."""
    return _matmul("matmul_naive", _matmul_naive, a, b)


def matmul_tiled(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, k) @ (k, m) by blocks of TILE rows of A and B, loop order i, p, j (models use BLAS)."""
    return _matmul("matmul_tiled", _matmul_tiled, a, b)


def matmul_backward(a: np.ndarray, b: np.ndarray, dc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dA = dC B^T, dB = A^T dC, both with the tiled kernel."""
    ck.check_matmul_backward(a, b, dc)
    return matmul_tiled(dc, b.T), matmul_tiled(a.T, dc)  # (n, k), (k, m)


# ----------------------------------------------------------------------------- softmax


@njit(inline="always", error_model="numpy")
def _row_max(x, n):  # max(x[0], ..., x[n - 1]) for n >= 1
    # four running maxima, one per lane of j mod 4: max is associative, but without
    # fastmath's "no NaN" LLVM may not reorder it, so the loop below does it for LLVM;
    # the four chains run side by side (one max in a row waited on the last: 2x slower)
    k = n - n % 4
    m = x[0]
    if k:
        m0, m1, m2, m3 = x[0], x[1], x[2], x[3]
        for j in range(4, k, 4):
            m0 = max(m0, x[j])
            m1 = max(m1, x[j + 1])
            m2 = max(m2, x[j + 2])
            m3 = max(m3, x[j + 3])
        m = max(max(m0, m1), max(m2, m3))
    for j in range(k, n):
        m = max(m, x[j])
    return m


@njit(inline="always", fastmath=_FAST, error_model="numpy")
def _softmax_row(x, y, log):  # one row: x, y of shape (N,)
    n = x.shape[0]
    # m = max_j x_j
    m = _row_max(x, n)
    # s = \sum_j exp(x_j - m); write the exps as we go (y holds them for a moment)
    s = x.dtype.type(0)
    for j in range(n):
        e = fast_exp(x[j] - m)
        y[j] = e
        s += e
    if log:
        # y_j = (x_j - m) - log s   (not x_j - (m + log s): x_j - m is exact at the max)
        log_s = math.log(s)
        for j in range(n):
            y[j] = (x[j] - m) - log_s
    else:
        # y_j = e_j / s   (one division per row, then multiplications)
        inv = x.dtype.type(1) / s
        for j in range(n):
            y[j] *= inv


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _softmax_rows(x, y, log, threads):
    if threads:
        for r in prange(x.shape[0]):  # rows are independent: split over the cores
            _softmax_row(x[r], y[r], log)
    else:
        for r in range(x.shape[0]):
            _softmax_row(x[r], y[r], log)


@njit(inline="always", fastmath=_FAST, error_model="numpy")
def _causal_softmax_row(x, y, seen, scale):  # one query's row of S keys
    # query i sees keys j <= i + (S - T): the first `seen` of its row
    # m = max_j (scale x_j) = scale max_j x_j for scale > 0 (rounding keeps the order)
    if scale > 0:
        m = _row_max(x, seen) * scale
    else:
        m = x[0] * scale
        for j in range(1, seen):
            m = max(m, x[j] * scale)
    s = x.dtype.type(0)
    for j in range(seen):
        e = fast_exp(x[j] * scale - m)
        y[j] = e
        s += e
    inv = x.dtype.type(1) / s
    for j in range(seen):
        y[j] *= inv
    # masked keys: exp(-inf) = 0, written rather than computed
    for j in range(seen, x.shape[0]):
        y[j] = 0


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _causal_softmax_rows(x, y, t, scale, threads):
    extra = x.shape[1] - t  # S - T earlier (cached) keys every query sees
    if threads:
        for r in prange(x.shape[0]):  # rows are (batch..., query i), flattened: i = r % T
            _causal_softmax_row(x[r], y[r], r % t + extra + 1, scale)
    else:
        for r in range(x.shape[0]):
            _causal_softmax_row(x[r], y[r], r % t + extra + 1, scale)


@njit(inline="always", fastmath=_FAST, error_model="numpy")
def _softmax_backward_row(y, dy, dx, scale, log):
    n = y.shape[0]
    s = y.dtype.type(0)
    if log:
        # log-softmax: dx_i = dy_i - exp(y_i) \sum_j dy_j
        for j in range(n):
            s += dy[j]
        for j in range(n):
            dx[j] = dy[j] - fast_exp(y[j]) * s
    else:
        # softmax: dx_i = scale * y_i (dy_i - \sum_j dy_j y_j)
        for j in range(n):
            s += dy[j] * y[j]
        for j in range(n):
            dx[j] = scale * y[j] * (dy[j] - s)


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _softmax_backward_rows(y, dy, dx, scale, log, threads):
    if threads:
        for r in prange(y.shape[0]):
            _softmax_backward_row(y[r], dy[r], dx[r], scale, log)
    else:
        for r in range(y.shape[0]):
            _softmax_backward_row(y[r], dy[r], dx[r], scale, log)


def _row_op(op: str, x: np.ndarray, log: bool) -> np.ndarray:
    ck.check_last_axis(op, x)
    ck.check_float(op, x=x)
    if x.size == 0:
        return np.empty_like(x)
    x2 = _rows(x)  # (R, N)
    y = np.empty_like(x2)  # (R, N)
    _softmax_rows(x2, y, log, use_threads(x2.size))
    return y.reshape(x.shape)


def _row_backward(op: str, y: np.ndarray, dy: np.ndarray, scale: float, log: bool) -> np.ndarray:
    ck.check_last_axis(op, y)
    ck.check_same_shape(op, y=y, dy=dy)
    ck.check_float(op, y=y, dy=dy)
    if y.size == 0:
        return np.empty_like(y)
    dx = np.empty((y.size // y.shape[-1], y.shape[-1]), dtype=y.dtype)  # (R, N)
    scale = y.dtype.type(scale)
    _softmax_backward_rows(_rows(y), _rows(dy), dx, scale, log, use_threads(dx.size))
    return dx.reshape(y.shape)


def softmax_forward(x: np.ndarray) -> np.ndarray:
    """softmax over the last axis in one fused sweep per row."""
    return _row_op("softmax_forward", x, log=False)


def softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = y * (dy - sum(dy * y)) in one fused sweep per row."""
    return _row_backward("softmax_backward", y, dy, 1.0, log=False)


def log_softmax_forward(x: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis in one fused sweep per row."""
    return _row_op("log_softmax_forward", x, log=True)


def log_softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = dy - exp(y) * sum(dy) in one fused sweep per row."""
    return _row_backward("log_softmax_backward", y, dy, 1.0, log=True)


def causal_softmax_forward(scores: np.ndarray, scale: float) -> np.ndarray:
    """Scale, causal mask and softmax of (..., T, S) scores in one sweep per row.

    Masked keys are never read: their probabilities are written as 0.
    """
    t, _ = ck.check_scores("causal_softmax_forward", scores)
    ck.check_float("causal_softmax_forward", scores=scores)
    if scores.size == 0:
        return np.empty_like(scores)
    x2 = _rows(scores)  # (B*T, S)
    y = np.empty_like(x2)  # (B*T, S)
    scale = scores.dtype.type(scale)
    _causal_softmax_rows(x2, y, t, scale, use_threads(x2.size))
    return y.reshape(scores.shape)


def causal_softmax_backward(y: np.ndarray, dy: np.ndarray, scale: float) -> np.ndarray:
    """d scores = scale * y * (dy - sum(dy * y)); masked entries (y = 0) get 0."""
    ck.check_scores("causal_softmax_backward", y)
    return _row_backward("causal_softmax_backward", y, dy, scale, log=False)
