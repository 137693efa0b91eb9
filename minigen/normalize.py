"""Normalisation over the last axis, the shared core of layer norm and group norm.

With n the size of the last axis:
    xhat = (x - mean(x)) / sqrt(var(x) + eps),   mean and var over the last axis
and its backward, from dL/dxhat:
    dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),   rstd = 1 / sqrt(var + eps)
`functional.layer_norm` normalises each row (then w, b); `conv.group_norm` reshapes each
group of channels into one row first.
"""

from __future__ import annotations

from typing import Any

from minigen import backend

__all__ = ["normalize_forward", "normalize_backward"]


def _mean_last(x: Any) -> Any:
    """x.mean(axis=-1, keepdims=True) as a matrix-vector product x (1/n, ..., 1/n): the
    same sum, but BLAS runs it far faster than NumPy's reduction along short rows."""
    n = x.shape[-1]
    return (x @ backend.array_module(x).full(n, 1 / n, dtype=x.dtype))[..., None]


def _mean_of_product(a: Any, b: Any) -> Any:
    """(a * b).mean(axis=-1, keepdims=True), without the temporary a * b."""
    return backend.array_module(a).einsum("...i,...i->...", a, b)[..., None] / a.shape[-1]


def normalize_forward(x: Any, eps: float) -> tuple[Any, Any]:
    """(x - mean) / sqrt(var + eps) over the last axis; returns (xhat, rstd)."""
    xp = backend.array_module(x)
    xc = x - _mean_last(x)
    rstd = 1 / xp.sqrt(_mean_of_product(xc, xc) + eps)  # (..., 1)
    xc *= rstd
    return xc, rstd


def normalize_backward(dxhat: Any, xhat: Any, rstd: Any) -> Any:
    # dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), means over the last axis
    dx = xhat * _mean_of_product(dxhat, xhat)
    dx += _mean_last(dxhat)
    backend.array_module(dx).subtract(dxhat, dx, out=dx)
    dx *= rstd
    return dx
