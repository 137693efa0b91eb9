"""Every hypothesis strategy of the test suite, in one module.

Bounded floats without NaN or infinity, small random shapes, and shapes that
broadcast together; the profile in conftest.py sets `deadline=None`.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# ----------------------------------------------------------------------------- core


def floats(lo: float = -3.0, hi: float = 3.0) -> st.SearchStrategy[float]:
    """Finite float64 values in [lo, hi]."""
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64)


def shapes(
    min_dims: int = 0, max_dims: int = 3, min_side: int = 1, max_side: int = 5
) -> st.SearchStrategy[tuple[int, ...]]:
    return hnp.array_shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    )


def arrays(
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]],
    lo: float = -3.0,
    hi: float = 3.0,
    dtype: type = np.float64,
) -> st.SearchStrategy[np.ndarray]:
    """float64 arrays of `shape` (a shape or a strategy of shapes), entries in [lo, hi]."""
    return hnp.arrays(dtype, shape, elements=floats(lo, hi))


def broadcastable_shapes(
    num: int = 2, min_dims: int = 0, max_dims: int = 3, max_side: int = 4
) -> st.SearchStrategy[tuple[tuple[int, ...], ...]]:
    """`num` input shapes that broadcast together (NumPy's rules)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num, min_dims=min_dims, max_dims=max_dims, max_side=max_side
    ).map(lambda bs: bs.input_shapes)


@st.composite
def matmul_shapes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes (..., n, k) and (..., k, m) with broadcastable batch axes, or 1-D operands."""
    n, k, m = (draw(st.integers(1, 4)) for _ in range(3))
    batch_a, batch_b = draw(broadcastable_shapes(2, max_dims=2, max_side=3))
    a = draw(st.sampled_from([(k,), (*batch_a, n, k)]))
    b = draw(st.sampled_from([(k,), (*batch_b, k, m)]))
    return a, b


# ----------------------------------------------------------------------------- kernels
# Inputs for the kernel parity suite (tests/test_kernels_*.py). Values come from a
# drawn seed (arrays of thousands of entries would be slow to draw one by one); the
# shapes, magnitudes and -inf patterns are drawn, so they shrink.

KERNEL_EDGE_SIZES = (1, 2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129)  # around tiles


def kernel_sizes(max_size: int) -> st.SearchStrategy[int]:
    """Sizes up to max_size, biased to 1 and to just below / at / past tile and block sizes."""
    edges = [s for s in KERNEL_EDGE_SIZES if s <= max_size]
    return st.one_of(st.sampled_from(edges), st.integers(1, max_size))


@st.composite
def row_shapes(
    draw: st.DrawFn, max_lead: int = 2, max_side: int = 5, max_cols: int = 70
) -> tuple[int, ...]:
    """(..., N): up to max_lead leading (batch) axes, and a last axis of N columns."""
    lead = draw(st.lists(st.integers(1, max_side), max_size=max_lead))
    return (*lead, draw(kernel_sizes(max_cols)))


@st.composite
def kernel_arrays(
    draw: st.DrawFn,
    shape: tuple[int, ...],
    dtype: type | np.dtype,
    scales: tuple[float, ...] = (1.0,),
) -> np.ndarray:
    """Standard normal values times a magnitude drawn from `scales`, cast to dtype."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from(scales))
    return (rng.standard_normal(shape) * scale).astype(dtype)


@st.composite
def masked_rows(draw: st.DrawFn, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """Rows with large magnitudes and some entries -inf (as after masking), never a whole row."""
    x = draw(kernel_arrays(shape, dtype, scales=(1.0, 30.0, 1e4)))
    mask = draw(hnp.arrays(np.bool_, shape)) if draw(st.booleans()) else np.zeros(shape, bool)
    keep = draw(st.integers(0, shape[-1] - 1))  # a column kept finite where a row is all masked
    mask[mask.all(axis=-1), keep] = False
    x[mask] = -np.inf
    return x


@st.composite
def causal_shapes(
    draw: st.DrawFn, max_lead: int = 2, max_side: int = 3, max_t: int = 40, max_extra: int = 5
) -> tuple[int, ...]:
    """Attention scores (..., T, S), S = T + extra keys (extra cached positions, maybe 0)."""
    lead = draw(st.lists(st.integers(1, max_side), max_size=max_lead))
    t = draw(kernel_sizes(max_t))
    return (*lead, t, t + draw(st.integers(0, max_extra)))


@st.composite
def matmul_2d_shapes(
    draw: st.DrawFn, max_side: int = 70
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(n, k) and (k, m), each side biased to tile edges."""
    n, k, m = (draw(kernel_sizes(max_side)) for _ in range(3))
    return (n, k), (k, m)
