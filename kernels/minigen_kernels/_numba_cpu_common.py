r"""What the Numba CPU kernels share: an exp Numba can vectorise, and when to use threads.

Threads. A `parallel=True` kernel splits its `prange` loop over the cores, but first
wakes the worker threads: tens of microseconds on an idle machine, and milliseconds
on a busy one (measured here, on 2 shared cores: a 0.2 ms softmax took 8 ms when
its worker thread had to wait for a core). NumPy's own element-wise code runs on one
core. So each kernel has a `threads` flag: True (from `PARALLEL_MIN_SIZE` elements
on, see `use_threads`) runs its loop as `prange` on Numba's threads
(`numba.get_num_threads()`), False as a plain loop on the calling core, which wakes
no thread. `numba_cpu.set_parallel_min_size` changes the threshold (0: always threads).

By default no call uses threads: BLAS already runs the matrix products on every core, and
its threads spin between products, so on the 2-core machine Numba's split loops slowed a
whole GPT iteration (2 threads each) where they took effect, above 1M elements: width 256,
context 128: 247 ms with them, 175 ms without; width 512: 1,032 ms and 844 ms (PyTorch 196
and 946-1,032 ms; benchmarks/results/gpt_sizes-2026-12-08.md). On an idle many-core machine
`set_parallel_min_size(1 << 20)` gives them back.

Numba's on-disk cache does not notice edits to this file in the kernels that use
`fast_exp`: delete kernels/minigen_kernels/__pycache__ after changing it.

exp. NumPy's `np.exp` runs SIMD code: 8 or 16 float32 values per
instruction. Inside a Numba loop, `math.exp(v)` becomes one call to the C library's
`expf` per element, and a loop that calls a function cannot be vectorised (unless
Intel's SVML library is installed). A fused softmax that calls `math.exp` is then
*slower* than NumPy's five passes. So for float32 we write exp with arithmetic only
(multiply, add, round, integer shift), which LLVM turns into SIMD code:

    exp(x) = 2^n exp(r),   n = round(x / ln 2),   r = x - n ln 2  in [-ln2/2, ln2/2]
    exp(r) ~ \sum_{k=0}^{7} r^k / k!             (Taylor; error < 6e-9 on that interval)
    2^n    = the float32 whose exponent bits are n + 127

float64 arrays keep the C library's exact functions (gradient checks run in float64,
and there speed matters less). `fast_exp(v)` picks the version from the type of `v`
when Numba compiles the caller (an `overload`), so kernels are written once.

`fast_exp` is only used on the arguments the kernels give it:
x <= 0 (softmax's x - max, log-probabilities, -|v| in a sigmoid), where values
below -87 (results under 1.7e-38) are flushed to 0. Measured against float64:
relative error under 1e-7 (about one float32 ulp) on [-87, 0].
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

__all__ = ["fast_exp", "use_threads", "PARALLEL_MIN_SIZE"]

PARALLEL_MIN_SIZE = 1 << 62  # elements: below this, one core (so by default, always one core)


def use_threads(size: int) -> bool:
    """Whether a kernel call on `size` elements should split its loop over the cores."""
    return size >= PARALLEL_MIN_SIZE


_f = np.float32
# ln 2 split in two (Cody & Waite): n * LN2_HI is exact in float32 for |n| < 2^9,
# so r = x - n ln 2 loses no digits to cancellation.
_LN2_HI = _f(0.693359375)
_LN2_LO = _f(-2.12194440e-4)
_LOG2E = _f(1.4426950408889634)
_EXP_MIN = _f(-87.0)  # exp(-87) = 1.6e-38, near float32's smallest normal number


# Compiled without fastmath, and kept a separate function (not inlined at Numba's
# level) so a caller's fastmath flags cannot reassociate the Cody-Waite subtraction.
@njit(cache=True, error_model="numpy")
def _exp_f32(x):  # float32, x <= 0
    xc = max(x, _EXP_MIN)
    # n = round(x / ln 2)
    n = np.floor(xc * _LOG2E + _f(0.5))
    # r = x - n ln 2, in two steps (exact, then the small correction)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    # exp(r) ~ 1 + r + r^2/2! + ... + r^7/7!   (Horner's rule)
    p = _f(1 / 5040)
    p = p * r + _f(1 / 720)
    p = p * r + _f(1 / 120)
    p = p * r + _f(1 / 24)
    p = p * r + _f(1 / 6)
    p = p * r + _f(0.5)
    p = p * r + _f(1.0)
    p = p * r + _f(1.0)
    # 2^n: put n + 127 in the exponent bits (23 to 30) of a float32
    two_n = np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)
    # below -87 the result is 0; written "not x < min" so that a NaN stays NaN
    return _f(0.0) if x < _EXP_MIN else p * two_n


def fast_exp(x):
    """exp(x) for x <= 0: vectorisable for float32, the C library's for float64."""
    return math.exp(x)


@overload(fast_exp, jit_options={"cache": True})
def _fast_exp_overload(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)
