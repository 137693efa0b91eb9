"""Every hypothesis strategy of the test suite, in one module.

Bounded floats without NaN or infinity, small random shapes, and shapes that
broadcast together; the profile in conftest.py sets `deadline=None`.
"""

from __future__ import annotations

from typing import Any

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


def positive_arrays(shape: Any, lo: float = 0.2, hi: float = 3.0) -> st.SearchStrategy[np.ndarray]:
    """Entries in [lo, hi] (domains of log, sqrt, pow)."""
    return arrays(shape, lo, hi)


@st.composite
def nonzero_arrays(draw: st.DrawFn, shape: Any, lo: float = 0.5, hi: float = 3.0) -> np.ndarray:
    """Entries with |x| in [lo, hi], either sign (denominators)."""
    shp = draw(shape) if isinstance(shape, st.SearchStrategy) else shape
    mags = draw(arrays(shp, lo, hi))
    return np.where(draw(hnp.arrays(np.bool_, shp)), -mags, mags)


@st.composite
def separated_arrays(draw: st.DrawFn, shape: Any, gap: float = 0.01) -> np.ndarray:
    """Distinct entries at least `gap` apart and away from 0: no ties or kinks within a
    finite-difference step (for max, relu, abs, clip...)."""
    shp = draw(shape) if isinstance(shape, st.SearchStrategy) else shape
    n = int(np.prod(shp))
    ints = draw(st.lists(st.integers(-300, 300).filter(bool), min_size=n, max_size=n, unique=True))
    return (np.array(ints, dtype=np.float64) * gap + gap / 2).reshape(shp)


@st.composite
def reduce_args(draw: st.DrawFn, min_dims: int = 1) -> tuple[tuple[int, ...], Any, bool]:
    """(shape, axis, keepdims) with axis None, an int (maybe negative) or a tuple of axes."""
    shape = draw(shapes(min_dims=min_dims, max_dims=3))
    nd = len(shape)
    axis = draw(
        st.one_of(
            st.none(),
            st.integers(-nd, nd - 1),
            st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple),
        )
    )
    return shape, axis, draw(st.booleans())


@st.composite
def index_args(draw: st.DrawFn) -> tuple[tuple[int, ...], Any]:
    """(shape, index): basic slices/ints, an integer array with repeats, or a boolean mask."""
    shape = draw(shapes(min_dims=1, max_dims=3, max_side=5))
    kind = draw(st.sampled_from(["basic", "ints", "mask"]))
    if kind == "ints":
        idx = np.array(draw(st.lists(st.integers(-shape[0], shape[0] - 1), min_size=1, max_size=6)))
        return shape, idx
    if kind == "mask":
        return shape, draw(hnp.arrays(np.bool_, shape))
    parts: list[Any] = []
    for n in shape:
        parts.append(
            draw(
                st.one_of(
                    st.integers(-n, n - 1),
                    st.builds(
                        slice, st.integers(-n, n), st.integers(-n, n), st.sampled_from([1, 2, -1])
                    ),
                )
            )
        )
    return shape, tuple(parts)


@st.composite
def conv_args(draw: st.DrawFn) -> dict[str, Any]:
    """Shapes for conv2d: x (N, C, H, W), w (O, C, k, k), a stride and a padding that fit."""
    N, C, O = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k, stride, pad = (
        draw(st.sampled_from([1, 2, 3])),
        draw(st.integers(1, 2)),
        draw(st.integers(0, 1)),
    )
    H = draw(st.integers(max(1, k - 2 * pad), 6))
    W = draw(st.integers(max(1, k - 2 * pad), 6))
    return {"x": (N, C, H, W), "w": (O, C, k, k), "stride": stride, "padding": pad}


@st.composite
def attention_shapes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv) with S >= T."""
    B, H, T = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    S, D, Dv = T + draw(st.integers(0, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    return (B, H, T, D), (B, H, S, D), (B, H, S, Dv)


# ----------------------------------------------------------------------------- text (tokenizers)

# The hard cases of GPT-2's pre-tokeniser: contractions (lower case only are special), runs of
# whitespace of every kind (U+001C..U+001F are isspace() but not \s), digits and other
# numbers, punctuation runs, accents (composed and combining), CJK, emoji with modifiers, NUL.
_TEXT_PIECES = [
    *["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'", "''", "n't", "it's"],
    *[" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "  x", "\xa0", "\u3000", "\x85"],
    *["\x1c", "\x1f", "\x0b", "\u2028", "\x00", "\x7f", "\ufeff", "\u200b"],
    *["0", "42", " 2024", "3.14", "½", "Ⅻ", "٣", "...", "!?", " --", "(", ")", '"', "#"],
    *["a", " the", "The", "é", "e\u0301", "ß", "Ω", "日本語", "😀", "👍🏽", "🇫🇷", " 🙂"],
]

# every code point but the unassigned ones (Cn), whose class the `regex` module and
# transformers (newer Unicode versions) may know when this Python does not
_ASSIGNED = st.characters(exclude_categories=("Cs", "Cn"))


def texts(max_pieces: int = 30) -> st.SearchStrategy[str]:
    """Any Python string, lone surrogates included, rich in the pre-tokeniser's hard cases."""
    piece = st.one_of(
        st.sampled_from([*_TEXT_PIECES, "\ud800", "\udfff", "\ud83d"]),
        st.text(st.characters(exclude_categories=()), max_size=6),
    )
    return st.lists(piece, max_size=max_pieces).map("".join)


def assigned_texts(max_pieces: int = 30, specials: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    """Strings of assigned code points (no surrogates), the hard cases and `specials`."""
    piece = st.one_of(
        st.sampled_from(_TEXT_PIECES + list(specials)), st.text(_ASSIGNED, max_size=6)
    )
    return st.lists(piece, max_size=max_pieces).map("".join)


# ----------------------------------------------------------------------------- text (GPT)


@st.composite
def gpt_attention_args(draw: st.DrawFn) -> tuple[tuple[int, int, int], int]:
    """(B, T, 3 d) packed q, k, v of a causal self-attention with n_head heads, d = n_head hs."""
    B, T = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    n_head, hs = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (B, T, 3 * n_head * hs), n_head


@st.composite
def gpt_embedding_args(draw: st.DrawFn) -> dict[str, Any]:
    """Token ids (B, T) below V, and a first position `start` with start + T <= P."""
    V, P, D = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, P))
    start = draw(st.integers(0, P - T))
    ids = np.array(draw(st.lists(st.integers(0, V - 1), min_size=B * T, max_size=B * T)))
    return {"V": V, "P": P, "D": D, "ids": ids.reshape(B, T), "start": start}
