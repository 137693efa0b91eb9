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
"""

from __future__ import annotations

import numpy as np

from minigen.synthesis.captions import PAD, VOCAB
from minigen.synthesis.scenes import COLOURS, GRID, SHAPES, Scenes

__all__ = ["NOWHERE", "IGNORE", "token_cells", "is_mention"]

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
