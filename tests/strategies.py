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


# ----------------------------------------------------------------------------- diffusion


def timesteps(num_train_timesteps: int = 1000) -> st.SearchStrategy[int]:
    """A timestep index 0 .. T-1 (diffusers' convention: k names the book's x_{k+1})."""
    return st.integers(0, num_train_timesteps - 1)


def schedule_names() -> st.SearchStrategy[str]:
    """The noise schedules minigen.diffusion implements."""
    return st.sampled_from(["linear", "cosine"])


def timestep_batches(num_train_timesteps: int = 1000) -> st.SearchStrategy[list[int]]:
    """One timestep per sample of a small batch (1 to 4 samples)."""
    return st.lists(timesteps(num_train_timesteps), min_size=1, max_size=4)


@st.composite
def timestep_requests(draw: st.DrawFn, max_T: int = 2000) -> tuple[int, int, str]:
    """(T, num_inference_steps, spacing) with 1 <= num_inference_steps <= T."""
    T = draw(st.integers(1, max_T))
    n = draw(st.integers(1, T))
    return T, n, draw(st.sampled_from(["leading", "trailing", "linspace"]))
