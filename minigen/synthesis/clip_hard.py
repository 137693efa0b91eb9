"""Hard negatives for CLIP: captions one edit away from the truth, and the loss that uses them.

A batch of random captions rarely holds the caption that differs from an image's own by one
word, so contrastive training learns to tell "a red circle" from "a blue square" long before it
tells "a red circle left of a blue square" from "... right of ...". `minimal_edits` writes
those near misses (a colour or a shape replaced, a relation reversed, the colours of a relation
clause's two things swapped); `hard_negatives` draws k of them per scene among those that do
not describe it; `hard_negative_loss` asks each image to pick its own caption among them:

    logits_i = e^s [z_img_i . z_txt_i, z_img_i . z_hard_i1, ..., z_img_i . z_hard_ik]   (1 + k)
    L_hard = (1 / |V|) sum_{i in V} CE(logits_i, 0),     V: the images with k edits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from minigen import functional as F
from minigen.shape_ops import concatenate
from minigen.synthesis.captions import Exists, Property, Relation, parse_caption
from minigen.synthesis.scenes import COLOURS, SHAPES, SceneObject
from minigen.tensor import Tensor

__all__ = [
    "describes",
    "minimal_edits",
    "seen_combinations",
    "hard_negatives",
    "hard_negative_loss",
]


def describes(caption: str | Sequence[Property], objects: Sequence[SceneObject]) -> bool:
    """Whether the caption (or its properties) names exactly the scene's things and each of
    its relations holds."""
    props = parse_caption(caption) if isinstance(caption, str) else caption
    named = {(p.thing.colour, p.thing.shape) for p in props if isinstance(p, Exists)}
    if named != {(o.colour, o.shape) for o in objects}:
        return False
    for p in props:
        if isinstance(p, Relation):
            a_s = [o for o in objects if (o.colour, o.shape) == (p.a.colour, p.a.shape)]
            b_s = [o for o in objects if (o.colour, o.shape) == (p.b.colour, p.b.shape)]
            ok = {
                "left of": lambda a, b: a.col < b.col,
                "right of": lambda a, b: a.col > b.col,
                "above": lambda a, b: a.row < b.row,
                "below": lambda a, b: a.row > b.row,
            }[p.relation]
            if not any(ok(a, b) for a in a_s for b in b_s if a is not b):
                return False
    return True


def minimal_edits(caption: str) -> list[str]:
    """Captions one edit away, for hard negatives: one colour or one shape replaced, one
    relation reversed, or the colours of a relation clause's two things swapped (binding)."""
    ws = caption.split()
    out = []
    for i, w in enumerate(ws):
        for vocab in (COLOURS, SHAPES):
            if w in vocab:
                out += [" ".join([*ws[:i], v, *ws[i + 1 :]]) for v in vocab if v != w]
    rel = {"left": "right", "right": "left", "above": "below", "below": "above"}
    for i, w in enumerate(ws):
        if w in rel:
            out.append(" ".join([*ws[:i], rel[w], *ws[i + 1 :]]))
            # "a c1 s1 REL [of] a c2 s2": swap c1 and c2
            j = i + (2 if w in ("left", "right") else 1)
            if ws[i - 2] != ws[j + 1]:
                swapped = list(ws)
                swapped[i - 2], swapped[j + 1] = ws[j + 1], ws[i - 2]
                out.append(" ".join(swapped))
    return list(dict.fromkeys(out))


def seen_combinations(properties: Sequence[Sequence[Property]]) -> frozenset:
    """The things and (colour, relation, colour) triples that some caption names."""
    out = set()
    for props in properties:
        for p in props:
            out.add(p.thing if isinstance(p, Exists) else (p.a.colour, p.relation, p.b.colour))
    return frozenset(out)


def hard_negatives(
    captions: Sequence[str],
    objects: Sequence[Sequence[SceneObject]],
    k: int,
    gen: np.random.Generator,
    seen: frozenset | None = None,
) -> tuple[list[str], np.ndarray]:
    """k minimal edits per caption that do not describe its scene (drawn without replacement),
    as one list of len(captions) * k captions, and which captions have k of them, (B,) bool
    (the others' places hold their own caption and are left out of the loss). With `seen`
    (`seen_combinations` of the training captions) only edits that name seen things and
    relation triples: an edit into a held-out combination would teach that it never matches."""
    out, valid = [], np.zeros(len(captions), dtype=bool)
    for i, (cap, objs) in enumerate(zip(captions, objects, strict=True)):
        edits = [c for c in minimal_edits(cap) if not describes(c, objs)]
        if seen is not None:
            edits = [c for c in edits if seen_combinations([parse_caption(c)]) <= seen]
        valid[i] = len(edits) >= k
        out += (
            [edits[j] for j in gen.choice(len(edits), k, replace=False)] if valid[i] else [cap] * k
        )
    return out, valid


def hard_negative_loss(
    z_img: Tensor,
    z_txt: Tensor,
    z_hard: Tensor,
    log_scale: Tensor,
    valid: np.ndarray,
    max_scale: float = 100.0,
) -> Tensor:
    """L_hard of the module docstring: z_img, z_txt (B, E), z_hard (B k, E) (image i's edits at
    rows i k .. i k + k - 1), valid (B,) bool; 0 when no image is valid."""
    B, E = z_img.shape
    k = z_hard.shape[0] // B
    valid = np.asarray(valid, dtype=bool)
    if not valid.any():
        return (z_img * 0.0).sum()
    scale = log_scale.clip(hi=math.log(max_scale)).exp()
    own = (z_img * z_txt).sum(axis=-1, keepdims=True)  # (B, 1) z_img_i . z_txt_i
    hard = (z_img.reshape(B, 1, E) * z_hard.reshape(B, k, E)).sum(axis=-1)  # (B, k)
    logits = concatenate([own, hard], axis=1) * scale  # (B, 1 + k)
    # CE(logits_i, 0) = -log softmax(logits_i)_0, averaged over the valid images
    logp = F.log_softmax(logits, axis=1)  # (B, 1 + k)
    w = (valid / valid.sum()).astype(z_img.dtype)[:, None]  # (B, 1)
    return -(logp[:, 0:1] * w).sum()
