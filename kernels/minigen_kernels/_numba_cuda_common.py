"""Pieces shared by the numba.cuda kernels: block reductions, launch sizes, transfers."""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

MAX_THREADS = 256  # threads per block of the row kernels; a power of two


def threads_for(n: int, cap: int = MAX_THREADS) -> int:
    """The smallest power of two >= n, at most `cap`: threads per block.

    Tree reductions halve the active threads each step, so the count must be a power
    of two; a short row does not need more threads than it has columns.
    """
    t = 1
    while t < n and t < cap:
        t *= 2
    return t


@cuda.jit(device=True)
def block_sum(buf, v):
    """\\sum of v over the block's threads; every thread of the block must call it.

    Each thread writes its v to shared memory; then half the threads add the other
    half's values to theirs, a quarter do the same, ... (log2(threads) steps).
    """
    t = cuda.threadIdx.x
    buf[t] = v
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            buf[t] += buf[t + half]
        cuda.syncthreads()  # this step's sums are written before the next step reads
        half //= 2
    total = buf[0]
    cuda.syncthreads()  # everyone has read buf[0] before buf is reused
    return total


@cuda.jit(device=True)
def block_max(buf, v):
    """max of v over the block's threads (the same tree as `block_sum`).

    Written twice on purpose: a numba.cuda device function cannot take the combining
    operator as an argument, so the tree is spelled once with + and once with max.
    """
    t = cuda.threadIdx.x
    buf[t] = v
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            other = buf[t + half]
            if other > buf[t]:
                buf[t] = other
        cuda.syncthreads()
        half //= 2
    total = buf[0]
    cuda.syncthreads()
    return total


def device(a: Any) -> tuple[Any, bool]:
    """(a on the GPU, whether `a` was a host array): NumPy arrays are copied over."""
    if isinstance(a, np.ndarray | np.generic):
        return cuda.to_device(np.ascontiguousarray(a)), True
    if hasattr(a, "copy_to_host"):  # a numba device array
        return a, False
    if hasattr(a, "__cuda_array_interface__"):  # another library's, e.g. CuPy's
        return cuda.as_cuda_array(a), False
    raise TypeError(f"expected a NumPy or CUDA device array, got {type(a).__name__}")


def host_or_device(a: Any, host: bool) -> Any:
    """The result as a NumPy array if the inputs were, else left on the GPU."""
    return a.copy_to_host() if host else a
