"""Reading a scene back from any image, and scoring it against a caption (after picoclvr).

`parse` recovers the objects of an image, generated or sampled from a model:

1. each pixel x_p is read as a palette colour u_c covering a share beta of the pixel (blur and
   dim samples give beta < 1), plus noise: for every colour,
       beta_c = clip(<x_p, u_c> / ||u_c||^2, 0, 1),   r_c = || x_p - beta_c u_c ||,
   the pixel takes the colour of smallest residual r_c, and is background unless that
   colour covers at least min_coverage of it with a residual of at most max_residual;
2. every template T (shape, position) is matched against every colour mask M_c by
       IoU(T, M_c) = |T & M_c| / |T | (M_c & W_T)|,
   where W_T is T's box grown by GROW = 2 pixels: stray pixels of the same colour near the
   shape count against it, so a big blob is no square, and a few missing pixels barely matter;
3. greedily, the best (colour, template) with IoU >= min_iou is kept, the placements that
   overlap it are dropped, and its pixels stop counting against the others (explaining away:
   shapes of one colour close together are all found); until no IoU reaches min_iou.

`score(image, caption)` then checks each property of the caption (see `captions`) on the
detections, and returns which hold and their fraction

    score = (1 / |P|) sum_{p in P} 1[p holds in the image],

the measure of Fleuret's picoclvr: 1 for a faithful image, 0 for one that misses everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from minigen.synthesis.captions import Exists, Property, Relation, Thing, parse_caption
from minigen.synthesis.scenes import COLOURS, GRID, PALETTE, SHAPES, layout, templates, to_unit

__all__ = [
    "Detection",
    "Score",
    "classify_pixels",
    "parse",
    "parse_batch",
    "satisfied",
    "check",
    "score",
    "score_batch",
]

ValueRange = tuple[float, float]
GROW = 2  # the margin (px) around a template in which pixels of its colour count against it


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    y: float  # centre of the matched template, in pixels
    x: float
    row: int  # grid cell of the centre
    col: int
    iou: float  # how well the template fits, in [min_iou, 1]

    @property
    def thing(self) -> Thing:
        return Thing(self.colour, self.shape)


@dataclass(frozen=True)
class Score:
    properties: list[Property]
    holds: list[bool]  # one per property
    fraction: float  # the share of properties that hold, in [0, 1]


def classify_pixels(
    images: np.ndarray,
    value_range: ValueRange = (0.0, 1.0),
    min_coverage: float = 0.4,
    max_residual: float = 0.4,
) -> np.ndarray:
    """(N, 3, H, W) or (3, H, W) images -> labels (N, H, W) or (H, W): colour index, -1 = none."""
    x = to_unit(images, value_range)  # (..., 3, H, W)
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W) or (3, H, W), got {x.shape}")
    x = np.moveaxis(x, -3, -1)  # (..., H, W, 3)
    u = PALETTE  # (C, 3)
    # beta_c = clip(<x, u_c> / ||u_c||^2, 0, 1)
    beta = np.clip((x[..., None, :] * u).sum(-1) / (u * u).sum(1), 0.0, 1.0)  # (..., H, W, C)
    # r_c^2 = ||x - beta_c u_c||^2
    r2 = ((x[..., None, :] - beta[..., None] * u) ** 2).sum(-1)  # (..., H, W, C)
    best = r2.argmin(-1)[..., None]  # (..., H, W, 1)
    cover = np.take_along_axis(beta, best, -1)[..., 0]  # (..., H, W)
    fit = np.take_along_axis(r2, best, -1)[..., 0] <= max_residual**2
    return np.where((cover >= min_coverage) & fit, best[..., 0], -1)


@cache
def _placements(size: int) -> tuple[np.ndarray, ...]:
    """Every template at every position where it fits the image, P = S * m * m of them
    (m = H - s + 1), flattened in the order (shape, top, left).

    Returns masks (P, H, W) bool, areas |T| (P,), shape index, top, left (P,) each, and
    overlaps (P, P) bool (two placements share a pixel).
    """
    s = layout(size).shape_size
    tm = templates(s)  # (S, s, s)
    m = size - s + 1
    grids = np.meshgrid(np.arange(len(tm)), np.arange(m), np.arange(m), indexing="ij")
    shape, top, left = (g.ravel() for g in grids)  # (P,) each
    masks = np.zeros((len(shape), size, size), dtype=bool)  # (P, H, W)
    for i, (t, r, c) in enumerate(zip(shape, top, left, strict=True)):  # once per image size
        masks[i, r : r + s, c : c + s] = tm[t]
    flat = masks.reshape(len(shape), -1).astype(np.float32)  # (P, H*W)
    overlaps = (flat @ flat.T) > 0  # (P, P)
    return masks, flat.sum(1), shape, top, left, overlaps


def _window_sums(x: np.ndarray, s: int) -> np.ndarray:
    """|x & W_T| for every position of a template of side s: x (..., H, W) -> (..., m, m).

    With the integral image I[i, j] = sum of x[:i, :j] (x zero-padded by GROW),
    the sum over a k x k box is I[i + k, j + k] - I[i, j + k] - I[i + k, j] + I[i, j].
    """
    k, (h, w) = s + 2 * GROW, x.shape[-2:]
    i = np.zeros((*x.shape[:-2], h + 2 * GROW + 1, w + 2 * GROW + 1), np.float32)
    i[..., GROW + 1 : GROW + 1 + h, GROW + 1 : GROW + 1 + w] = x
    i = i.cumsum(-1).cumsum(-2)  # (..., H + 2 GROW + 1, W + 2 GROW + 1)
    return i[..., k:, k:] - i[..., :-k, k:] - i[..., k:, :-k] + i[..., :-k, :-k]  # (..., m, m)


def _counts(labels: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """For label maps (n, H, W): the colour masks M_c (n, C, H, W), and |T & M_c| and
    |M_c & W_T| for every image, colour and placement, (n, C, P) each."""
    s = layout(size).shape_size
    tm = templates(s)  # (S, s, s)
    m = size - s + 1
    n, c = len(labels), len(COLOURS)
    onehot = (labels[:, None] == np.arange(c)[None, :, None, None]).astype(np.float32)
    # |T & M_c| at (top, left) = sum_{(a, b) in T} M_c[top + a, left + b]: a correlation, one
    # shifted slice per template pixel (no loop over image pixels)
    inter = np.zeros((n, c, len(tm), m, m), np.float32)  # (n, C, S, m, m)
    for t, tmpl in enumerate(tm):
        for a, b in zip(*np.nonzero(tmpl), strict=True):
            inter[:, :, t] += onehot[:, :, a : a + m, b : b + m]
    in_window = np.broadcast_to(_window_sums(onehot, s)[:, :, None], inter.shape)
    return onehot, inter.reshape(n, c, -1), in_window.reshape(n, c, -1)


def _greedy(
    onehot: np.ndarray, inter: np.ndarray, in_window: np.ndarray, size: int, min_iou: float
) -> list[Detection]:
    """Keep the best (colour, placement), drop the placements that overlap it, explain its
    pixels away, repeat while an IoU reaches min_iou. onehot (C, H, W); inter, in_window (C, P)."""
    lay = layout(size)
    masks, area, shape, top, left, overlaps = _placements(size)
    n_shapes = len(SHAPES)
    half = (lay.shape_size - 1) / 2
    in_window = in_window.copy()
    free = np.ones(len(area), dtype=bool)  # (P,) placements not overlapping a kept one
    found = []
    while free.any():
        # IoU = |T & M_c| / (|T| + |M_c & W_T| - |T & M_c|)
        iou = np.divide(
            inter, area + in_window - inter, out=np.full_like(inter, -1.0), where=free
        )  # (C, P), -1 where not free
        c, p = np.unravel_index(iou.argmax(), iou.shape)
        if iou[c, p] < min_iou:
            break
        y, x = float(top[p] + half), float(left[p] + half)
        row, col = (min(max(int((v - lay.origin) // lay.cell), 0), GRID - 1) for v in (y, x))
        found.append(Detection(COLOURS[c], SHAPES[shape[p]], y, x, row, col, float(iou[c, p])))
        free &= ~overlaps[p]
        # the kept object's pixels no longer count against its neighbours of the same colour
        explained = _window_sums(masks[p] * onehot[c], lay.shape_size)  # (m, m)
        in_window[c] -= np.tile(explained.ravel(), n_shapes)  # (P,)
    return found


def parse_batch(
    images: np.ndarray,
    *,
    value_range: ValueRange = (0.0, 1.0),
    min_coverage: float = 0.4,
    max_residual: float = 0.4,
    min_iou: float = 0.6,
    chunk: int = 1024,
) -> list[list[Detection]]:
    """The objects found in each of the images (N, 3, H, W), best match first."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"expected square images of shape (N, 3, H, W), got {images.shape}")
    size = images.shape[-1]
    out: list[list[Detection]] = []
    for start in range(0, len(images), chunk):  # bounded memory: (chunk, C, P) floats at a time
        part = images[start : start + chunk]  # (n, 3, H, W)
        labels = classify_pixels(part, value_range, min_coverage, max_residual)  # (n, H, W)
        for counts in zip(*_counts(labels, size), strict=True):
            out.append(_greedy(*counts, size, min_iou))
    return out


def parse(image: np.ndarray, **kwargs: float | ValueRange) -> list[Detection]:
    """The objects found in one image (3, H, W); keywords as in `parse_batch`."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"parse expects one image of shape (3, H, W), got {image.shape}")
    return parse_batch(image[None], **kwargs)[0]  # type: ignore[arg-type]


def satisfied(prop: Property, found: Sequence[Detection], margin: float) -> bool:
    """Whether one property is true of the detections (relations need a gap of `margin` px)."""
    if isinstance(prop, Exists):
        return any(d.thing == prop.thing for d in found)
    if not isinstance(prop, Relation):
        raise TypeError(f"not a property: {prop!r}")
    for i, a in enumerate(found):
        for j, b in enumerate(found):
            if i == j or a.thing != prop.a or b.thing != prop.b:
                continue
            # a left of b: x_a < x_b - margin; a above b: y_a < y_b - margin
            if (
                (prop.relation == "left of" and a.x < b.x - margin)
                or (prop.relation == "right of" and a.x > b.x + margin)
                or (prop.relation == "above" and a.y < b.y - margin)
                or (prop.relation == "below" and a.y > b.y + margin)
            ):
                return True
    return False


def check(found: Sequence[Detection], caption: str | Sequence[Property], size: int = 16) -> Score:
    """Score detections (of a size x size image) against a caption or a list of properties."""
    props = parse_caption(caption) if isinstance(caption, str) else list(caption)
    if not props:
        raise ValueError("cannot score against an empty list of properties")
    margin = layout(size).cell / 2
    ok = [satisfied(p, found, margin) for p in props]
    return Score(props, ok, sum(ok) / len(ok))


def score(
    image: np.ndarray, caption: str | Sequence[Property], **kwargs: float | ValueRange
) -> Score:
    """Which properties of the caption hold in the image (3, H, W), and their fraction."""
    return check(parse(image, **kwargs), caption, np.asarray(image).shape[-1])


def score_batch(
    images: np.ndarray,
    captions: Sequence[str | Sequence[Property]],
    **kwargs: float | ValueRange,
) -> np.ndarray:
    """The fraction of caption properties that hold, for each image: (N,) float64."""
    images = np.asarray(images)
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    found = parse_batch(images, **kwargs)  # type: ignore[arg-type]
    size = images.shape[-1]
    return np.array([check(f, c, size).fraction for f, c in zip(found, captions, strict=True)])
