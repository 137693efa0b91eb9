"""One random generator for the whole library, so one seed fixes everything.

Weight initialisation, dropout masks, data batches and sampling all draw from
`generator()` unless they are handed a generator of their own; `manual_seed(s)`
resets it. (A NumPy `Generator`; the CuPy backend draws on the host and copies.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minigen import backend
from minigen.tensor import get_default_dtype

__all__ = ["manual_seed", "generator", "randn", "rand", "get_state", "set_state"]

_gen = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Reset the library's generator to `seed`; returns it."""
    global _gen
    _gen = np.random.default_rng(seed)
    return _gen


def generator() -> np.random.Generator:
    return _gen


def get_state() -> dict[str, Any]:
    """The generator's state (JSON-serialisable), for resumable training."""
    return _gen.bit_generator.state


def set_state(state: dict[str, Any]) -> None:
    _gen.bit_generator.state = state


def _to_backend(arr: np.ndarray) -> Any:
    return backend.xp.asarray(arr)


def randn(*shape: int, dtype: Any = None, gen: np.random.Generator | None = None) -> Any:
    """Standard normal samples as an array of the current backend."""
    g = gen or _gen
    return _to_backend(g.standard_normal(shape, dtype=np.dtype(dtype or get_default_dtype())))


def rand(*shape: int, dtype: Any = None, gen: np.random.Generator | None = None) -> Any:
    """Uniform [0, 1) samples as an array of the current backend."""
    g = gen or _gen
    return _to_backend(g.random(shape, dtype=np.dtype(dtype or get_default_dtype())))
