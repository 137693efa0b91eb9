"""Where each word's object is: the cell targets of the shipped conditional model's cell map.

The scene generator puts every object in one cell of a GRID x GRID grid (`scenes.py`), so a
caption's mention "a <colour> <shape>" of an object the scene holds once names a cell,
row * GRID + col. `token_cells` reads these targets off the training scenes; the caption
encoder of `caption_unet.CaptionUNet` learns to predict them from the caption alone, by the
cross-entropy

    CE(P_j, cell of token j's object)     for each token j with a target,

and the U-Net reads the map they make (`xunet.cell_painter`). Tokens that name no object
(<bos>, "a", "left", "and", <eos>, ...) have the class NOWHERE; <pad>, and a mention that fits
several objects, have no target (IGNORE).

In sampling the cells are drawn (`place_jointly`): all the objects of a caption from one joint
distribution, the product of their P_j restricted to placements where no two objects share a
cell and every relation the caption states holds between the cells,

    p(c_1, ..., c_K) ∝ prod_k P_{j_k}(c_k) [c_i != c_k] prod_{(a rel b)} [rel(c_a, c_b)],

so "a red circle left of a blue square" never puts both in one column.
"""

from __future__ import annotations

import numpy as np

from minigen.synthesis.captions import PAD, VOCAB
from minigen.synthesis.scenes import COLOURS, GRID, SHAPES, Scenes

__all__ = ["NOWHERE", "IGNORE", "token_cells", "is_mention", "mention_relations", "place_jointly"]

NOWHERE = GRID * GRID  # the class of a token that names no object: cells are 0 .. GRID^2 - 1
IGNORE = -100  # no target: padding, or an object the scene holds twice


def token_cells(tokens: np.ndarray, scenes: Scenes) -> np.ndarray:
    """Where each token's object is, (N, L) ints: for the colour and the shape word of "a
    <colour> <shape>", the grid cell row * GRID + col of the one object of that colour and shape
    in the scene; NOWHERE for every other token of the caption (<bos> .. <eos>); IGNORE (-100)
    for <pad>, and for a mention that fits several objects."""
    out = np.full(tokens.shape, NOWHERE, dtype=np.int64)  # (N, L)
    out[tokens == PAD] = IGNORE
    for n, i in zip(*np.nonzero(is_mention(tokens)), strict=True):
        colour, shape = VOCAB[tokens[n, i]], VOCAB[tokens[n, i + 1]]
        fits = [o for o in scenes.objects(n) if o.colour == colour and o.shape == shape]
        cell = fits[0].row * GRID + fits[0].col if len(fits) == 1 else IGNORE
        out[n, i] = out[n, i + 1] = cell
    return out


def is_mention(tokens: np.ndarray) -> np.ndarray:
    """(..., L) bool: True at the colour word of each "<colour> <shape>" (the shape word next)."""
    tokens = np.asarray(tokens)
    colour = np.isin(tokens, [VOCAB.index(c) for c in COLOURS])
    shape = np.isin(tokens, [VOCAB.index(s) for s in SHAPES])
    out = np.zeros(tokens.shape, dtype=bool)
    out[..., :-1] = colour[..., :-1] & shape[..., 1:]
    return out


# the first word of each relation -> (which coordinate it compares: 0 row, 1 col; the sign)
_RELATION_WORDS = {"left": (1, -1), "right": (1, 1), "above": (0, -1), "below": (0, 1)}


def mention_relations(row: np.ndarray) -> tuple[np.ndarray, list[tuple[int, str, int]]]:
    """The mentions of one caption's tokens (L,): the positions of their colour words, in
    order, and the relations between them, (k_a, relation word, k_b) for "a <colour> <shape>
    <relation> a <colour> <shape>" (k: the index of a mention among the mentions)."""
    js = np.flatnonzero(is_mention(row))  # (K,)
    rels = []
    for k in range(len(js) - 1):
        word = VOCAB[row[js[k] + 2]] if js[k] + 2 < len(row) else ""
        if word in _RELATION_WORDS:
            rels.append((k, word, k + 1))
    return js, rels


def place_jointly(
    logits: np.ndarray, tokens: np.ndarray, eos: np.ndarray, generator: np.random.Generator
) -> np.ndarray:
    """Draw where every mentioned object goes, (B, L) ints: for each caption all its objects'
    cells at once from the joint distribution of the module docstring (P_j: the softmax of
    `logits` (B, L', GRID^2 [+ 1]) at the mention's colour word, over the cells only); both
    words of a mention get its cell; other tokens NOWHERE, those after <eos> (index `eos`
    (B,)) IGNORE. Raises ValueError for a caption whose objects cannot all be placed."""
    tokens = np.asarray(tokens)
    z = np.asarray(logits, dtype=np.float64)[:, :, : GRID * GRID]  # (B, L', G^2)
    out = np.full(tokens.shape, NOWHERE, dtype=np.int64)  # (B, L)
    out[np.arange(tokens.shape[1])[None, :] > np.asarray(eos)[:, None]] = IGNORE
    row_col = np.divmod(np.arange(GRID * GRID), GRID)  # (row, col) of each cell
    for b in range(len(tokens)):
        js, rels = mention_relations(tokens[b, : z.shape[1]])
        K = len(js)
        if K == 0:
            continue
        if K > GRID * GRID:
            raise ValueError(f"a caption with {K} objects: the grid has {GRID * GRID} cells")
        logp = z[b, js] - z[b, js].max(-1, keepdims=True)  # (K, G^2) log P_j, up to a constant
        # log prod_k P_{j_k}(c_k) over every placement (c_1, ..., c_K): (G^2,) * K
        joint = sum(logp[k].reshape((-1,) + (1,) * (K - 1 - k)) for k in range(K))
        joint = np.broadcast_to(joint, (GRID * GRID,) * K).copy()
        cell = np.indices(joint.shape)  # (K, G^2, ..., G^2): c_k of each placement
        allowed = np.ones(joint.shape, dtype=bool)
        for i in range(K):  # [c_i != c_k]
            for k in range(i + 1, K):
                allowed &= cell[i] != cell[k]
        for a, word, c in rels:  # rel(c_a, c_b): "left of": col_a < col_b, ...
            axis, sign = _RELATION_WORDS[word]
            coord = row_col[axis]
            allowed &= sign * (coord[cell[a]] - coord[cell[c]]) > 0
        if not allowed.any():
            raise ValueError(f"no placement of {K} objects satisfies the caption's relations")
        p = np.where(allowed, np.exp(joint - joint[allowed].max()), 0.0).ravel()
        pick = np.unravel_index(generator.choice(p.size, p=p / p.sum()), joint.shape)
        for k, j in enumerate(js):
            out[b, j] = out[b, j + 1] = pick[k]
    return out
