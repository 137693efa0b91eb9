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


# ----------------------------------------------------------------------------- synthesis: scenes


@st.composite
def scene_objects(draw: st.DrawFn, max_objects: int = 3, distinct_things: bool = False) -> list:
    """The objects of one valid scene (minigen.synthesis.scenes.SceneObject): 1..max_objects
    objects in distinct cells, never two of one colour in 4-adjacent cells; with
    distinct_things, no two objects share both colour and shape."""
    from minigen.synthesis.scenes import COLOURS, GRID, SHAPES, SceneObject

    k = draw(st.integers(1, max_objects))
    cell = st.tuples(st.integers(0, GRID - 1), st.integers(0, GRID - 1))
    cells = draw(st.lists(cell, min_size=k, max_size=k, unique=True))
    objects: list = []
    for r, c in cells:
        near = {o.colour for o in objects if abs(o.row - r) + abs(o.col - c) == 1}
        colour = draw(st.sampled_from([x for x in COLOURS if x not in near]))
        used = {o.shape for o in objects if o.colour == colour} if distinct_things else set()
        shape = draw(st.sampled_from([s for s in SHAPES if s not in used]))
        objects.append(SceneObject(colour, shape, r, c))
    return objects
