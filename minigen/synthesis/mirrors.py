"""Mirror pairs: the augmentation of the shipped conditional model (`--mirror-pairs`).

The left-right mirror of a scene (`scenes.mirror`) is a scene, and its caption is the caption
with "left" and "right" swapped (`mirror_tokens`); the noise of its diffusion is the mirrored
noise. Half of each batch is then the mirror of the other half, with the same t and the same
caption dropout (`mirror_pairs`): pairs that differ only by where things are and by the
relation word, so the word's gradient is not lost among everything else that differs between
two scenes. Only scenes whose mirrored caption asserts no held-out relation are drawn
(`mirror_safe`), and the cell targets (`cells.token_cells`) move with the objects
(`mirror_token_cells`).
"""

from __future__ import annotations

import numpy as np

from minigen.synthesis.captions import (
    VOCAB,
    CaptionedScenes,
    decode,
    is_held_out,
    make_split,
    parse_caption,
)
from minigen.synthesis.cells import NOWHERE
from minigen.synthesis.scenes import GRID, mirror

__all__ = ["mirror_tokens", "mirror_token_cells", "mirror_safe", "mirror_pairs"]


def mirror_tokens(tokens: np.ndarray) -> np.ndarray:
    """The caption of the mirrored scene (`scenes.mirror`): "left" and "right" swapped."""
    left, right = VOCAB.index("left"), VOCAB.index("right")
    out = np.array(tokens, copy=True)
    out[tokens == left], out[tokens == right] = right, left
    return out


def mirror_token_cells(cells: np.ndarray) -> np.ndarray:
    """`token_cells` of the mirrored scene and caption: column k goes to GRID - 1 - k (the
    tokens keep their places: "left" and "right" are one word each)."""
    out = np.array(cells, copy=True)
    inside = (cells >= 0) & (cells < NOWHERE)
    row, col = cells[inside] // GRID, cells[inside] % GRID
    out[inside] = row * GRID + (GRID - 1 - col)
    return out


def mirror_safe(data: CaptionedScenes, data_seed: int) -> np.ndarray:
    """The rows whose mirrored caption asserts no held-out relation of `make_split(..., data_seed)`
    (the mirror of "yellow right of red" is "yellow left of red", which may be held out)."""
    split = make_split(0, 0, data_seed)  # the held-out sets depend on the seed only
    mirrored = [parse_caption(decode(t)) for t in mirror_tokens(data.tokens)]
    held = [is_held_out(p, split.held_out_things, split.held_out_relations) for p in mirrored]
    return np.flatnonzero(~np.array(held, dtype=bool))  # (n_safe,)


def mirror_pairs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of n examples of a conditional model (`text2im.draw_batch`) followed by their n
    mirrors: the scene, its noise, its caption and its cell targets mirrored; the same t and
    the same caption dropout."""
    mirrored = {
        "x0": mirror(batch["x0"]),  # (n, 3, 16, 16)
        "tokens": mirror_tokens(batch["tokens"]),  # (n, L)
        "t": batch["t"],  # (n,)
        "eps": mirror(batch["eps"]),  # (n, 3, 16, 16)
        "drop": batch["drop"],  # (n,)
    }
    if "cells" in batch:  # where each token's object is: in the mirror, columns reversed
        mirrored["cells"] = mirror_token_cells(batch["cells"])  # (n, L)
    return {k: np.concatenate([v, mirrored[k]]) for k, v in batch.items()}  # (2n, ...) each
