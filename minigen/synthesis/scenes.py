"""Small synthetic scenes of coloured shapes, the images of §7.2's text-conditioned synthesis.

A scene is an RGB image x of shape (3, H, W) (default 16 x 16), black background, with one to
three objects. Each object has a colour c from a palette of far-apart RGB corners, a shape from
{square, circle, triangle, cross} and a cell (r, k) of a 3 x 3 grid; its pixels are those of a
binary template T_shape of side s (5 px at 16 x 16):

    x[:, top + i, left + j] = rgb(c)   for every (i, j) with T_shape[i, j] = 1,
    top = origin + r * cell + pad,     left = origin + k * cell + pad.

Two objects never share a cell, and two objects of one colour never sit in 4-adjacent cells
(their pixels would touch and merge into one blob). Everything is exact, so the checker
(`minigen.synthesis.checker`) can tell whether a generated image matches its caption.
Generation is deterministic for a seed and vectorised over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

__all__ = [
    "COLOURS",
    "PALETTE",
    "SHAPES",
    "GRID",
    "Layout",
    "SceneObject",
    "Scenes",
    "layout",
    "templates",
    "generate",
    "from_objects",
    "concat",
    "to_unit",
    "mirror",
    "plot_grid",
]

# Colour names and their RGB in [0, 1]: corners of the cube, pairwise distance >= 1, and >= 1
# from the black background.
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
PALETTE = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.float32
)  # (C, 3)
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
GRID = 3  # objects sit in the cells of a GRID x GRID grid

ValueRange = tuple[float, float]


@dataclass(frozen=True)
class Layout:
    """Where the grid cells are in a size x size image: cell k spans origin + k*cell + [0, cell)."""

    size: int
    cell: int
    origin: int
    shape_size: int  # odd side s of the templates, s <= cell
    pad: int  # offset of a template inside its cell

    def top_left(self, row: Any, col: Any) -> tuple[Any, Any]:
        """Pixel of the upper-left corner of the template in cell (row, col)."""
        return (
            self.origin + row * self.cell + self.pad,
            self.origin + col * self.cell + self.pad,
        )


@cache
def layout(size: int = 16) -> Layout:
    """The grid of a size x size image: the largest odd template that fits a cell."""
    if size < 5 * GRID:
        raise ValueError(f"scene size must be >= {5 * GRID} px (5 px shapes), got {size}")
    cell = size // GRID
    s = cell if cell % 2 else cell - 1
    return Layout(size, cell, (size - GRID * cell) // 2, s, (cell - s) // 2)


@cache
def templates(s: int = 5) -> np.ndarray:
    """Binary masks of the shapes, in the order of SHAPES: (len(SHAPES), s, s) bool."""
    i, j = np.mgrid[:s, :s]  # (s, s) each
    c = (s - 1) / 2
    square = np.ones((s, s), dtype=bool)
    # disc: (i - c)^2 + (j - c)^2 <= (s / 2)^2
    circle = (i - c) ** 2 + (j - c) ** 2 <= (s / 2) ** 2
    # apex up: the half-width grows with the row, |j - c| <= floor(i c / (s - 1))
    triangle = np.abs(j - c) <= np.floor(i * c / (s - 1))
    # a plus sign with arms of odd thickness t
    half = ((s // 3) | 1) // 2
    cross = (np.abs(i - c) <= half) | (np.abs(j - c) <= half)
    out = np.stack([square, circle, triangle, cross])  # (S, s, s)
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    row: int  # 0 = top
    col: int  # 0 = left


@dataclass
class Scenes:
    """N scenes with up to K objects each; slot k of scene n is empty where colours[n, k] = -1."""

    images: np.ndarray  # (N, 3, H, W) float32 in value_range
    colours: np.ndarray  # (N, K) int64, index into COLOURS, -1 = empty slot
    shapes: np.ndarray  # (N, K) int64, index into SHAPES
    rows: np.ndarray  # (N, K) int64
    cols: np.ndarray  # (N, K) int64

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: Any) -> Scenes:
        """The scenes selected by an index array, a boolean mask or a slice."""
        if isinstance(idx, int | np.integer):
            idx = [idx]
        return Scenes(*(a[idx] for a in self._arrays()))

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.images, self.colours, self.shapes, self.rows, self.cols

    def objects(self, n: int) -> list[SceneObject]:
        """The objects of scene n, in slot order."""
        return [
            SceneObject(COLOURS[c], SHAPES[s], int(r), int(k))
            for c, s, r, k in zip(
                self.colours[n], self.shapes[n], self.rows[n], self.cols[n], strict=True
            )
            if c >= 0
        ]


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def to_unit(images: np.ndarray, value_range: ValueRange = (0.0, 1.0)) -> np.ndarray:
    """Map images from value_range to [0, 1], clipped: x' = (x - lo) / (hi - lo)."""
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must have lo < hi, got {value_range}")
    return np.clip((np.asarray(images, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def mirror(images: np.ndarray) -> np.ndarray:
    """The left-right mirror of images (..., H, W) on the grid: cell column k goes to column
    GRID - 1 - k with its template flipped (every shape is left-right symmetric), so the mirror
    of a scene is the scene of the mirrored objects. The grid's columns [a, b) are reversed, then
    shifted left by d = cell - 2 pad - s, the margin a template leaves on its cell's right (0 at
    16 px); the columns outside keep their values (background, for a scene)."""
    lay = layout(images.shape[-1])
    a, b = lay.origin, lay.origin + GRID * lay.cell  # the grid's columns [a, b)
    d = lay.cell - 2 * lay.pad - lay.shape_size
    out = np.array(images, copy=True)
    out[..., a : b - d] = images[..., a:b][..., ::-1][..., d:]
    return out


def _render(
    colours: np.ndarray,
    shapes: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    size: int,
    value_range: ValueRange,
) -> np.ndarray:
    """Paint the templates of every object at once (fancy indexing over objects x template)."""
    lay = layout(size)
    s = lay.shape_size
    n = len(colours)
    canvas = np.zeros((n, size, size), dtype=np.int64)  # (N, H, W): 0 = black, c + 1 = colour c
    img, slot = np.nonzero(colours >= 0)  # (M,) one entry per object
    top, left = lay.top_left(rows[img, slot], cols[img, slot])  # (M,) each
    mask = templates(s)[shapes[img, slot]]  # (M, s, s)
    ar = np.arange(s)
    ii = top[:, None, None] + ar[None, :, None]  # (M, s, 1)
    jj = left[:, None, None] + ar[None, None, :]  # (M, 1, s)
    ii, jj = np.broadcast_arrays(ii, jj)  # (M, s, s) each
    nn = np.broadcast_to(img[:, None, None], mask.shape)  # (M, s, s)
    value = np.broadcast_to((colours[img, slot] + 1)[:, None, None], mask.shape)  # (M, s, s)
    canvas[nn[mask], ii[mask], jj[mask]] = value[mask]
    rgb = np.concatenate([np.zeros((1, 3), np.float32), PALETTE])[canvas]  # (N, H, W, 3)
    lo, hi = value_range
    # x = lo + (hi - lo) * x_unit
    return (lo + (hi - lo) * rgb.transpose(0, 3, 1, 2)).astype(np.float32)  # (N, 3, H, W)


def _touching(colours: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N,) True where two objects of one colour sit in 4-adjacent cells."""
    same = (colours[:, :, None] == colours[:, None, :]) & (colours[:, :, None] >= 0)  # (N, K, K)
    dist = np.abs(rows[:, :, None] - rows[:, None, :]) + np.abs(cols[:, :, None] - cols[:, None, :])
    return (same & (dist == 1)).any(axis=(1, 2))


def _thing_table(things: Sequence[tuple[str, str]] | None) -> np.ndarray:
    """(T, 2) indices (colour, shape) of the allowed combinations; all of them by default."""
    if things is None:
        return np.array([(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))])
    table = []
    for colour, shape in things:
        if colour not in COLOURS or shape not in SHAPES:
            raise ValueError(
                f"unknown thing ({colour!r}, {shape!r}): colours are {COLOURS}, shapes {SHAPES}"
            )
        table.append((COLOURS.index(colour), SHAPES.index(shape)))
    if not table:
        raise ValueError("things must name at least one (colour, shape) pair")
    return np.array(table)


def generate(
    n: int,
    seed: int | np.random.Generator | None = 0,
    *,
    size: int = 16,
    min_objects: int = 1,
    max_objects: int = 3,
    things: Sequence[tuple[str, str]] | None = None,
    value_range: ValueRange = (0.0, 1.0),
) -> Scenes:
    """n random scenes with min_objects..max_objects objects each, in distinct grid cells.

    `things` restricts the (colour, shape) pairs that may appear (the train/held-out split
    uses it). Same seed, same scenes.
    """
    if n < 0:
        raise ValueError(f"the number of scenes must be >= 0, got {n}")
    if not 1 <= min_objects <= max_objects <= GRID * GRID:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {GRID * GRID}, "
            f"got min_objects={min_objects}, max_objects={max_objects}"
        )
    layout(size)  # validates the size
    rng = _rng(seed)
    table = _thing_table(things)
    k = max_objects
    count = rng.integers(min_objects, max_objects + 1, n)  # (N,)
    empty = np.arange(k)[None, :] >= count[:, None]  # (N, K)
    cells = np.empty((n, k), dtype=np.int64)
    pick = np.empty((n, k), dtype=np.int64)
    todo = np.ones(n, dtype=bool)
    # rejection: redraw the cells and things of the scenes where one colour touches itself
    for _ in range(1000):
        m = int(todo.sum())
        cells[todo] = np.argsort(rng.random((m, GRID * GRID)), axis=1)[:, :k]  # distinct cells
        pick[todo] = rng.integers(0, len(table), (m, k))
        colours = np.where(empty, -1, table[pick, 0])  # (N, K)
        todo = _touching(colours, cells // GRID, cells % GRID)
        if not todo.any():
            break
    else:  # pragma: no cover - needs a pathological `things`
        raise RuntimeError("could not place the objects without same-colour neighbours")
    shapes = np.where(empty, -1, table[pick, 1])
    rows, cols = np.where(empty, -1, cells // GRID), np.where(empty, -1, cells % GRID)
    return Scenes(
        _render(colours, shapes, rows, cols, size, value_range), colours, shapes, rows, cols
    )


def from_objects(
    scenes: Sequence[Sequence[SceneObject]],
    *,
    size: int = 16,
    value_range: ValueRange = (0.0, 1.0),
) -> Scenes:
    """Render given scenes exactly (e.g. a test's hand-written one); K = the most objects."""
    n, k = len(scenes), max((len(s) for s in scenes), default=0)
    colours = np.full((n, max(k, 1)), -1, dtype=np.int64)
    shapes, rows, cols = colours.copy(), colours.copy(), colours.copy()
    for i, scene in enumerate(scenes):
        cells = {(o.row, o.col) for o in scene}
        if len(cells) < len(scene):
            raise ValueError(f"scene {i}: two objects share a cell: {list(scene)}")
        for j, o in enumerate(scene):
            if o.colour not in COLOURS or o.shape not in SHAPES:
                raise ValueError(f"scene {i}: unknown colour or shape in {o}")
            if not (0 <= o.row < GRID and 0 <= o.col < GRID):
                raise ValueError(
                    f"scene {i}: cell ({o.row}, {o.col}) outside the {GRID}x{GRID} grid"
                )
            colours[i, j], shapes[i, j] = COLOURS.index(o.colour), SHAPES.index(o.shape)
            rows[i, j], cols[i, j] = o.row, o.col
    layout(size)
    return Scenes(
        _render(colours, shapes, rows, cols, size, value_range), colours, shapes, rows, cols
    )


def concat(parts: Sequence[Scenes]) -> Scenes:
    """Scenes one after the other (their K and image sizes must agree)."""
    if not parts:
        raise ValueError("concat needs at least one Scenes")
    shapes = {(p.images.shape[1:], p.colours.shape[1]) for p in parts}
    if len(shapes) > 1:
        raise ValueError(f"cannot concatenate scenes of (image shape, K) {sorted(shapes)}")
    return Scenes(*(np.concatenate(a) for a in zip(*(p._arrays() for p in parts), strict=True)))


def plot_grid(
    images: np.ndarray,
    captions: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    value_range: ValueRange = (0.0, 1.0),
    scale: float = 1.6,
) -> Any:
    """A matplotlib figure of the images (N, 3, H, W) in a grid, each titled with its caption."""
    import textwrap

    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"plot_grid expects images of shape (N, 3, H, W), got {images.shape}")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(scale * ncols, scale * nrows * (1.35 if captions else 1.0)),
        squeeze=False,
    )  # fmt: skip
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(to_unit(images[i], value_range).transpose(1, 2, 0), interpolation="nearest")
        if captions is not None:
            ax.set_title(textwrap.fill(captions[i], 18), fontsize=7)
    fig.tight_layout()
    return fig
