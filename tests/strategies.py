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
def conv_args(draw: st.DrawFn, max_padding: int = 1, square: bool = True) -> dict[str, Any]:
    """Shapes for conv2d: x (N, C, H, W), w (O, C, kh, kw) (kh = kw unless `square` is
    False), a stride and a padding up to `max_padding` that fit."""
    N, C, O = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k, stride, pad = (
        draw(st.sampled_from([1, 2, 3])),
        draw(st.integers(1, 2)),
        draw(st.integers(0, max_padding)),
    )
    kw = k if square else draw(st.sampled_from([1, 2, 3]))
    H = draw(st.integers(max(1, k - 2 * pad), 6))
    W = draw(st.integers(max(1, kw - 2 * pad), 6))
    return {"x": (N, C, H, W), "w": (O, C, k, kw), "stride": stride, "padding": pad}


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


# ----------------------------------------------------------------------------- synthesis: CLIP


@st.composite
def contrastive_batches(draw: st.DrawFn, max_batch: int = 5, max_dim: int = 4) -> tuple:
    """(z_img (B, E), z_txt (B, E), s (), positive (B, B) bool) for the contrastive loss:
    raw float64 embeddings (not normalised), a log-scale s in [0, 4.5] (below the cap at
    log 100: no kink), and the positives of a random grouping of the B captions (an
    equivalence: symmetric, with a true diagonal)."""
    B = draw(st.integers(1, max_batch))
    E = draw(st.integers(1, max_dim))
    z_img = draw(nonzero_arrays((B, E)))
    z_txt = draw(nonzero_arrays((B, E)))
    s = np.asarray(draw(floats(0.0, 4.5)))
    labels = np.asarray(draw(st.lists(st.integers(0, B - 1), min_size=B, max_size=B)))
    return z_img, z_txt, s, labels[:, None] == labels[None, :]


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


# ----------------------------------------------------------------------------- backends
# Inputs for the parity suite over the backend switch (tests/test_backend_parity.py).


@st.composite
def backend_attention_shapes(
    draw: st.DrawFn, max_lead: int = 2, max_t: int = 33, max_d: int = 17
) -> tuple[tuple[int, ...], int, int, int, int]:
    """(leading axes, T queries, S >= T keys, D, Dv) of an attention, sizes near block edges."""
    *lead, t, s = draw(causal_shapes(max_lead, 3, max_t))
    return tuple(lead), t, s, draw(kernel_sizes(max_d)), draw(kernel_sizes(max_d))


@st.composite
def gpt_batches(draw: st.DrawFn, block_size: int = 17) -> tuple[int, int, int]:
    """(batch B, length T <= block_size, seed) of a GPT training batch."""
    return draw(st.integers(1, 3)), draw(kernel_sizes(block_size)), draw(st.integers(0, 2**16))


# ----------------------------------------------------------------------------- few-shot (ICL)


@st.composite
def piece_texts(draw: st.DrawFn, pieces: tuple[str, ...], max_pieces: int = 30) -> str:
    """A text written with a PieceTokenizer's pieces (any order, pieces may overlap)."""
    return "".join(draw(st.lists(st.sampled_from(pieces), max_size=max_pieces)))


def icl_demos(inputs: str, labels: str, max_demos: int = 8) -> st.SearchStrategy[list]:
    """Demonstrations (input, label) of a consistent random mapping, for few-shot prompts."""
    mapping = st.dictionaries(st.sampled_from(inputs), st.sampled_from(labels), min_size=1)
    return mapping.flatmap(
        lambda m: st.lists(st.sampled_from(sorted(m.items())), min_size=1, max_size=max_demos)
    )


# ----------------------------------------------------------------------------- data parallelism


@st.composite
def shard_splits(draw: st.DrawFn, max_batch: int = 9) -> tuple[int, int, int]:
    """(batch B, shards S <= B, seed) of a step whose gradient is summed over shards."""
    batch = draw(st.integers(1, max_batch))
    return batch, draw(st.integers(1, batch)), draw(st.integers(0, 2**16))


# ----------------------------------------------------------------------------- attention (plain)


@st.composite
def attention_problems(draw: st.DrawFn) -> dict[str, Any]:
    """An attention q (B, H, T, d), k (B, H, S, d), v (B, H, S, dv) with T = 1 among the sizes,
    its mask M ("none"; "causal", with S >= T; a boolean (T, S) or (S,) mask in which every
    query sees a key; or an additive float (T, S) mask) and its scale (None: 1 / sqrt(d))."""
    B, H, T, d, dv = (draw(st.integers(1, n)) for n in (2, 3, 5, 4, 3))
    kind = draw(st.sampled_from(["none", "causal", "boolean", "boolean 1-D", "additive"]))
    S = draw(st.integers(T if kind == "causal" else 1, T + 3))
    mask = None
    if kind.startswith("boolean"):
        rows = 1 if kind.endswith("1-D") else T
        mask = draw(hnp.arrays(bool, (rows, S)))
        seen = draw(st.lists(st.integers(0, S - 1), min_size=rows, max_size=rows))
        mask[np.arange(rows), seen] = True  # every query sees some key
        mask = mask[0] if kind.endswith("1-D") else mask
    elif kind == "additive":
        mask = draw(arrays((T, S)))
    scale = draw(st.none() | floats(0.1, 2.0))
    return {
        "shapes": ((B, H, T, d), (B, H, S, d), (B, H, S, dv)),
        "kind": kind,
        "mask": mask,
        "scale": scale,
    }


@st.composite
def group_norm_shapes(
    draw: st.DrawFn, max_n: int = 3, max_groups: int = 4, max_per_group: int = 4, max_side: int = 9
) -> tuple[tuple[int, ...], int]:
    """((N, C, H, W), G) with C = G * channels per group; G = 1 and G = C (one channel per
    group) drawn often, and H, W around small block sizes (1, 2, 7, ...)."""
    groups = draw(st.one_of(st.just(1), st.integers(1, max_groups)))
    per_group = draw(st.one_of(st.just(1), st.integers(1, max_per_group)))  # 1: G = C
    n = draw(st.integers(1, max_n))
    h, w = draw(kernel_sizes(max_side)), draw(kernel_sizes(max_side))
    return (n, groups * per_group, h, w), groups
