"""Reductions (sum, mean, var, max, min, logsumexp), each with its hand-written backward.

A reduction over `axis` (None: all axes) sends its gradient back by broadcasting it over
the reduced axes (`_expand`): d sum / dx_i = 1, d mean / dx_i = 1 / n; max and min send
it to the extreme entries, split evenly on ties. Re-exported by `ops.py`.
"""

from __future__ import annotations

import math
from typing import Any

from minigen import backend
from minigen.tensor import Tensor, node

__all__ = ["sum", "mean", "var", "max", "min", "logsumexp"]


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(ax % ndim for ax in axis)


def _expand(g: Any, shape: tuple[int, ...], axis: Any, keepdims: bool) -> Any:
    """Put the reduced axes back into `g` and broadcast it to `shape`."""
    xp = backend.array_module(g)
    if not keepdims:
        g = xp.expand_dims(g, _axes(axis, len(shape)))
    return xp.broadcast_to(g, shape)


def _count(shape: tuple[int, ...], axis: Any) -> int:
    return math.prod(shape[ax] for ax in _axes(axis, len(shape)))


def sum(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    shape = a.data.shape
    y = a.data.sum(axis=axis, keepdims=keepdims)
    return node(y, (a,), lambda g: (_expand(g, shape, axis, keepdims),))


def mean(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    shape = a.data.shape
    y = a.data.mean(axis=axis, keepdims=keepdims)
    n = _count(shape, axis)
    return node(y, (a,), lambda g: (_expand(g / n, shape, axis, keepdims),))


def var(a: Tensor, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Tensor:
    """Variance with NumPy's convention: divide by n - ddof (ddof=0 by default)."""
    shape, n = a.data.shape, _count(a.data.shape, axis)
    xc = a.data - a.data.mean(axis=axis, keepdims=True)
    y = (xc * xc).sum(axis=axis, keepdims=keepdims) / (n - ddof)
    # d/dx_i sum_j (x_j - mu)^2 / (n - ddof) = 2 (x_i - mu) / (n - ddof)
    return node(y, (a,), lambda g: (_expand(g, shape, axis, keepdims) * (2 / (n - ddof)) * xc,))


def _extreme(a: Tensor, axis: Any, keepdims: bool, which: str) -> Tensor:
    ad = a.data
    reduce = ad.max if which == "max" else ad.min
    y = reduce(axis=axis, keepdims=keepdims)

    def backward(g):  # the gradient goes to the extreme entries, split evenly on ties
        share = (ad == _expand(y, ad.shape, axis, keepdims)).astype(g.dtype)
        share /= share.sum(axis=axis, keepdims=True)
        return (_expand(g, ad.shape, axis, keepdims) * share,)

    return node(y, (a,), backward)


def max(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    return _extreme(a, axis, keepdims, "max")


def min(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    return _extreme(a, axis, keepdims, "min")


def logsumexp(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    xp, ad = backend.array_module(a.data), a.data
    m = ad.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    # log sum_i e^{x_i} = m + log sum_i e^{x_i - m}, with m = max_i x_i (no overflow)
    lse = xp.log(xp.exp(ad - m).sum(axis=axis, keepdims=True)) + m
    y = lse if keepdims else lse.reshape(_squeezed(lse.shape, axis))

    def backward(g):  # d lse / dx_i = softmax(x)_i
        return (_expand(g, ad.shape, axis, keepdims) * xp.exp(ad - lse),)

    return node(y, (a,), backward)


def _squeezed(shape: tuple[int, ...], axis: Any) -> tuple[int, ...]:
    axes = _axes(axis, len(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


# Tensor's methods (`a.sum(axis=0)`), set beside their definitions: see the end of ops.py
Tensor.sum, Tensor.mean, Tensor.var = sum, mean, var
Tensor.max, Tensor.min, Tensor.logsumexp = max, min, logsumexp
