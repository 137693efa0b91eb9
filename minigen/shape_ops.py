"""Ops that move entries around without changing them: reshape, transpose, index, join.

Their backward moves the gradient back the way the entries came: a reshape is
undone by the inverse reshape, a transpose by the inverse permutation, and an
index by scattering the gradient into zeros of the input's shape (adding, when
an integer index picks the same entry twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minigen import backend
from minigen.ops import _lift, unbroadcast
from minigen.tensor import Tensor, node

__all__ = [
    "reshape", "transpose", "swapaxes", "expand_dims", "squeeze", "broadcast_to",
    "concatenate", "stack", "split", "getitem",
]  # fmt: skip


def _shape_arg(shape: tuple[Any, ...]) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], Sequence):
        return tuple(shape[0])
    return tuple(shape)


def reshape(a: Tensor, *shape: Any) -> Tensor:
    """Same entries, new shape; accepts `reshape(2, 3)` or `reshape((2, 3))`, with one -1."""
    ad = a.data
    new = _shape_arg(shape)
    try:
        y = ad.reshape(new)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape shape {ad.shape} into {new}") from None
    return node(y, (a,), lambda g: (g.reshape(ad.shape),))


def transpose(a: Tensor, *axes: Any) -> Tensor:
    """Permute axes (reverse them when none are given)."""
    ad = a.data
    perm = tuple(range(ad.ndim))[::-1] if not axes else _shape_arg(axes)
    if sorted(p % max(ad.ndim, 1) for p in perm) != list(range(ad.ndim)):
        raise ValueError(f"transpose: axes {perm} are not a permutation of a {ad.ndim}-D shape")
    inverse = tuple(int(i) for i in np.argsort([p % ad.ndim for p in perm]))
    return node(ad.transpose(perm), (a,), lambda g: (g.transpose(inverse),))


def swapaxes(a: Tensor, ax1: int, ax2: int) -> Tensor:
    return node(a.data.swapaxes(ax1, ax2), (a,), lambda g: (g.swapaxes(ax1, ax2),))


def expand_dims(a: Tensor, axis: int | Sequence[int]) -> Tensor:
    ad = a.data
    y = backend.array_module(ad).expand_dims(ad, axis)
    return node(y, (a,), lambda g: (g.reshape(ad.shape),))


def squeeze(a: Tensor, axis: int | Sequence[int] | None = None) -> Tensor:
    ad = a.data
    y = backend.array_module(ad).squeeze(ad, axis)
    return node(y, (a,), lambda g: (g.reshape(ad.shape),))


def broadcast_to(a: Tensor, shape: Sequence[int]) -> Tensor:
    ad = a.data
    shape = tuple(shape)
    try:
        y = backend.array_module(ad).broadcast_to(ad, shape)
    except ValueError:
        raise ValueError(f"broadcast_to: cannot broadcast shape {ad.shape} to {shape}") from None
    return node(y, (a,), lambda g: (unbroadcast(g, ad.shape),))


def _joined(op: str, tensors: Sequence[Any]) -> tuple[tuple[Tensor, ...], list[Any], Any]:
    """The tensors `concatenate` or `stack` joins, their arrays and the array module; `op`
    names the caller in the error when there are none."""
    ts = tuple(_lift(t) for t in tensors)
    if not ts:
        raise ValueError(f"{op}: needs at least one tensor")
    datas = [t.data for t in ts]
    return ts, datas, backend.array_module(*datas)


def concatenate(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join along an existing axis; the gradient is cut back into the same pieces."""
    ts, datas, xp = _joined("concatenate", tensors)
    try:
        y = xp.concatenate(datas, axis=axis)
    except ValueError:
        shapes = ", ".join(str(d.shape) for d in datas)
        raise ValueError(f"concatenate: shapes {shapes} do not match along axis {axis}") from None
    cuts = np.cumsum([d.shape[axis] for d in datas])[:-1].tolist()
    return node(y, ts, lambda g: tuple(xp.split(g, cuts, axis=axis)))


def stack(tensors: Sequence[Any], axis: int = 0) -> Tensor:
    """Join along a new axis."""
    ts, datas, xp = _joined("stack", tensors)
    if len({d.shape for d in datas}) != 1:
        raise ValueError(f"stack: all shapes must be equal, got {[d.shape for d in datas]}")
    y = xp.stack(datas, axis=axis)
    return node(y, ts, lambda g: tuple(xp.squeeze(p, axis) for p in xp.split(g, len(ts), axis)))


def split(a: Tensor, indices_or_sections: int | Sequence[int], axis: int = 0) -> list[Tensor]:
    """Cut into pieces along `axis`, like `numpy.split` (each piece is an indexing op)."""
    n = a.shape[axis]
    if isinstance(indices_or_sections, int):
        if n % indices_or_sections:
            raise ValueError(
                f"split: axis {axis} of shape {a.shape} does not divide into "
                f"{indices_or_sections} equal pieces"
            )
        step = n // indices_or_sections
        bounds = list(range(0, n + 1, step))
    else:
        bounds = [0, *indices_or_sections, n]
    lead = (slice(None),) * (axis % a.ndim)
    pieces = zip(bounds[:-1], bounds[1:], strict=True)
    return [getitem(a, (*lead, slice(lo, hi))) for lo, hi in pieces]


def _is_basic(idx: Any) -> bool:
    """True for indices made of ints, slices, None and Ellipsis only (no index arrays)."""
    parts = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(p, int | slice) or p is None or p is Ellipsis for p in parts)


def getitem(a: Tensor, idx: Any) -> Tensor:
    """`a[idx]` with slices, ints, None, Ellipsis, boolean masks or integer arrays.

    Backward scatters the gradient into zeros shaped like `a`, adding where an
    integer array picks the same entry more than once.
    """
    if isinstance(idx, Tensor):
        idx = idx.data
    elif isinstance(idx, tuple):
        idx = tuple(i.data if isinstance(i, Tensor) else i for i in idx)
    elif isinstance(idx, list):
        idx = np.asarray(idx)
    ad = a.data
    y = ad[idx]
    basic = _is_basic(idx)

    def backward(g):
        z = backend.array_module(ad).zeros(ad.shape, dtype=g.dtype)
        if basic:
            z[idx] = g
        else:
            backend.scatter_add(z, idx, g)
        return (z,)

    return node(y, (a,), backward)


# Tensor's methods (`a[i]`, `a.reshape(2, 3)`, `a.T`), set beside their definitions: see the
# end of ops.py
Tensor.__getitem__ = getitem
Tensor.reshape, Tensor.transpose, Tensor.swapaxes = reshape, transpose, swapaxes
Tensor.T = property(transpose)
Tensor.expand_dims, Tensor.squeeze, Tensor.broadcast_to = expand_dims, squeeze, broadcast_to
