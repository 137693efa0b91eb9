"""Small plotting helpers shared by the CLI, the demo and the lessons."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from minigen.checkpoint import atomic_write

__all__ = ["save_figure"]


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib figure to `path` (PNG by its suffix) atomically, then close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())
