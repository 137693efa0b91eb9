"""Small plotting helpers shared by the CLI, the demo and the lessons: the loss curve of every
training loop (the GPT's, the denoisers', CLIP's) and writing a figure to a file."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minigen.checkpoint import atomic_write

__all__ = ["plot_losses", "save_figure"]


def plot_losses(
    losses: Sequence[float],
    title: str = "",
    ylabel: str = "loss",
    estimates: Sequence[Mapping[str, float]] = (),
    log_scale: bool = False,
) -> Any:
    """The loss of each step's batch (faint), its running mean, and estimates if given.

    The running mean spans a 50th of the run (drawn from 20 steps on); `estimates` are
    dicts {"step", "train", "val"} (the GPT's periodic loss estimates on both splits), drawn
    as markers; `log_scale` puts the loss on a log axis. Returns the matplotlib Figure
    (write it with `save_figure`).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    loss = np.asarray(losses, dtype=np.float64)  # (steps,)
    steps = np.arange(1, len(loss) + 1)  # the loss after step k is plotted at k
    ax.plot(steps, loss, lw=0.5, alpha=0.4, color="C0", label="batch loss")
    if len(loss) >= 20:
        w = max(1, len(loss) // 50)
        mean = np.convolve(loss, np.ones(w) / w, "valid")  # (steps - w + 1,)
        ax.plot(steps[w - 1 :], mean, color="C0", lw=1, label=f"mean of {w} steps")
    if estimates:
        s = [e["step"] for e in estimates]
        train, val = [e["train"] for e in estimates], [e["val"] for e in estimates]
        ax.plot(s, train, "o-", color="C1", ms=3, label="train (estimate)")
        ax.plot(s, val, "s-", color="C3", ms=3, label="validation")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib figure to `path` (PNG by its suffix) atomically, then close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())
