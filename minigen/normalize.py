"""Normalisation over the last axis, the shared core of layer norm and group norm.

With n the size of the last axis:
    xhat = (x - mean(x)) / sqrt(var(x) + eps),   mean and var over the last axis
and its backward, from dL/dxhat:
    dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),   rstd = 1 / sqrt(var + eps)
`functional.layer_norm` normalises each row (then w, b); `conv.group_norm` reshapes each
group of channels into one row first.

Group norm then SiLU, the U-Net's `SiLU(GroupNorm(x))`, as one op (`group_norm_silu`):
    z = gamma xhat + beta,  xhat normalised per sample and group over (C/G, H, W)
    y = silu(z) = z s(z),   s = sigmoid
The NumPy functions below compute exactly what `conv.group_norm` followed by `ops.silu`
computes, the same operations in the same order (so the "numpy" backend's numbers are
those of the two ops); on "numba" the dispatch row runs one fused kernel instead
(kernels/minigen_kernels/numba_cpu_groupnorm.py).
"""

from __future__ import annotations

from typing import Any

from minigen import backend

__all__ = [
    "normalize_forward", "normalize_backward", "group_norm_silu_forward",
    "group_norm_silu_backward",
]  # fmt: skip


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


def group_norm_silu_forward(x: Any, num_groups: int, w: Any, b: Any, eps: float) -> tuple[Any, Any]:
    """(y, saved): y = silu(xhat w + b), xhat normalised over each group of channels and
    all pixels of a sample; x (N, C, ...), w and b (C,) or None. saved: what the backward
    reads, (xhat, rstd, z, s)."""
    xp = backend.array_module(x)
    N, C = x.shape[:2]
    chan = (1, C) + (1,) * (x.ndim - 2)  # per-channel affine, broadcast over pixels
    xhat, rstd = normalize_forward(x.reshape(N, num_groups, -1), eps)  # (N, G, C/G * pixels)
    xhat = xhat.reshape(x.shape)
    # z = xhat w + b
    z = xhat * w.reshape(chan) if w is not None else xhat.copy()  # (N, C, ...)
    if b is not None:
        z += b.reshape(chan)
    # s(z) = (1 + tanh(z / 2)) / 2, as ops.silu computes it
    s = xp.array(z, copy=True)  # (N, C, ...)
    s *= 0.5
    xp.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    # y = silu(z) = z s(z)
    return z * s, (xhat, rstd, z, s)


def group_norm_silu_backward(dy: Any, saved: Any, w: Any) -> tuple[Any, Any, Any]:
    """(dx, dw, db) from dL/dy and the forward's saved arrays."""
    xhat, rstd, z, s = saved
    N, C = xhat.shape[:2]
    G = rstd.shape[1]
    chan = (1, C) + (1,) * (xhat.ndim - 2)
    axes = (0, *range(2, xhat.ndim))
    # dz = dy silu'(z),  silu'(z) = s(z) (1 + z (1 - s(z)))
    dz = dy * s * (1 + z * (1 - s))  # (N, C, ...)
    dxhat = dz * w.reshape(chan) if w is not None else dz
    dx = normalize_backward(dxhat.reshape(N, G, -1), xhat.reshape(N, G, -1), rstd)
    # dw = sum over samples and pixels of dz xhat;  db = the same sum of dz
    return dx.reshape(xhat.shape), (dz * xhat).sum(axis=axes), dz.sum(axis=axes)
