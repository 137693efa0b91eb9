"""Figures of §7.2: samples (points or an image grid) and Figure 7.2.

Figure 7.2 of the book shows image synthesis by denoising diffusion: "each sample
starts as a white noise x_T (top), and is gradually de-noised by sampling
iteratively x_{t-1} | x_t ~ N(x_t + f(x_t, t; w), sigma_t)". `figure_7_2` draws the
same grid: one column per sample, rows from x_T (top) to x_0 (bottom). For 2-D
points, `point_trajectories` shows the whole cloud at those steps, left to right.

Every function returns a matplotlib Figure (write it with minigen.plotting.save_figure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["LOSS_LABEL", "plot_points", "image_grid", "figure_7_2", "point_trajectories"]

PIXEL_RANGE = (0.0, 16.0)  # the digits' pixel values
# the y axis of a denoiser's loss curve (`minigen.plotting.plot_losses`, on a log scale)
LOSS_LABEL = r"$\|\epsilon - \epsilon_\theta(x_t, t)\|^2$"


def plot_points(
    samples: np.ndarray, reference: np.ndarray | None = None, title: str = "", ax: Any = None
) -> Any:
    """A scatter of 2-D samples (n, 2), over the reference data in grey if given."""
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.75", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    if reference is not None:
        ax.legend(loc="upper right", markerscale=4, fontsize=8)
    return fig if fig is not None else ax.figure


def _pixels(img: np.ndarray) -> np.ndarray:
    """One (1, H, W) or (H, W) image as (H, W), clipped to the digits' pixel range."""
    return np.clip(np.asarray(img).reshape(img.shape[-2:]), *PIXEL_RANGE)


def image_grid(images: np.ndarray, ncols: int = 10, title: str = "", labels: Any = None) -> Any:
    """Images (n, 1, H, W) in data units (0..16 for the digits) as a grid, white on black."""
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * 0.8, nrows * 0.8 + 0.4), squeeze=False, layout="constrained"
    )
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(_pixels(images[k]), cmap="gray", vmin=PIXEL_RANGE[0], vmax=PIXEL_RANGE[1])
            if labels is not None:
                ax.set_title(str(labels[k]), fontsize=7, pad=1)
    fig.suptitle(title)
    return fig


def figure_7_2(trajectory: Sequence[np.ndarray], frame_t: Sequence[int], title: str = "") -> Any:
    """Figure 7.2: one column per sample, one row per recorded x_t, x_T at the top.

    `trajectory[k]` is the batch (n, 1, H, W) of x_t for t = `frame_t[k]`, in pixel
    units; rows are drawn in the order given (the forward process reads top-down too).
    """
    import matplotlib.pyplot as plt

    rows, n = len(trajectory), len(trajectory[0])
    fig, axes = plt.subplots(
        rows, n, figsize=(n * 0.75 + 0.6, rows * 0.75 + 0.4), squeeze=False, layout="constrained"
    )
    for r, (frame, t) in enumerate(zip(trajectory, frame_t, strict=True)):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(_pixels(frame[c]), cmap="gray", vmin=PIXEL_RANGE[0], vmax=PIXEL_RANGE[1])
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"$x_{{{t}}}$", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title or "From white noise $x_T$ (top) to a sample $x_0$ (bottom)", fontsize=9)
    return fig


def point_trajectories(
    trajectory: Sequence[np.ndarray],
    frame_t: Sequence[int],
    reference: np.ndarray | None = None,
    title: str = "",
) -> Any:
    """The 2-D cloud x_t for each t of `frame_t`, left to right (x_T first when sampling)."""
    import matplotlib.pyplot as plt

    k = len(trajectory)
    fig, axes = plt.subplots(1, k, figsize=(2.2 * k, 2.4), squeeze=False)
    lo = np.min([f.min(0) for f in trajectory], axis=0)
    hi = np.max([f.max(0) for f in trajectory], axis=0)
    for ax, frame, t in zip(axes[0], trajectory, frame_t, strict=True):
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.85")
        ax.scatter(frame[:, 0], frame[:, 1], s=1, c="C0")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"$x_{{{t}}}$")
    fig.suptitle(title, fontsize=9, y=1.06)
    return fig
