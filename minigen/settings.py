"""The two switches every tensor reads: whether ops record the graph, and the default dtype.

- `no_grad()` (a context manager and a decorator) turns the recording of the graph off: ops
  compute their outputs and build no backward closures (sampling, evaluation, EMA updates);
  `enable_grad()` turns it back on inside; `is_grad_enabled()` reads the switch (`tensor.node`).
- Python numbers and float arrays become tensors of the default float dtype (float32;
  `default_dtype(np.float64)` for gradient checks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

# minigen.tensor and minigen/__init__.py re-export these names: the same list, deliberately
__all__ = [
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "get_default_dtype",
    "set_default_dtype",
    "default_dtype",
]

_grad_enabled = True
_default_dtype: np.dtype = np.dtype(np.float32)


def is_grad_enabled() -> bool:
    """Whether ops record the graph now (False inside `no_grad()`)."""
    return _grad_enabled


class _grad_mode(contextlib.ContextDecorator):
    """The switch set to `enabled` inside the block (or the decorated call), and set back to
    what it was on the way out."""

    enabled: bool

    def __enter__(self) -> None:
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, self.enabled

    def __exit__(self, *exc: object) -> None:
        global _grad_enabled
        _grad_enabled = self._prev


class no_grad(_grad_mode):
    """Context manager (and decorator) under which no graph is recorded."""

    enabled = False


class enable_grad(_grad_mode):
    """Record the graph again inside a `no_grad` block."""

    enabled = True


def get_default_dtype() -> np.dtype:
    """The float dtype new tensors get from Python numbers and float arrays (float32)."""
    return _default_dtype


def set_default_dtype(dtype: Any) -> None:
    global _default_dtype
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"default dtype must be a float dtype, got {dt}")
    _default_dtype = dt


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """Temporarily change the default float dtype (e.g. float64 for gradient checks)."""
    prev = _default_dtype
    set_default_dtype(dtype)
    try:
        yield
    finally:
        set_default_dtype(prev)
