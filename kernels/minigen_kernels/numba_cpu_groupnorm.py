r"""Group norm followed by SiLU as one fused Numba CPU kernel, forward and backward.

The third part of the "numba-cpu" backend (`numba_cpu.py` re-exports these functions;
the compilation choices are explained there). Read beside `reference.py`, whose
`group_norm_silu_*` run minigen's NumPy code: `conv.group_norm`, then `ops.silu`.

Per sample n and group g of C / G channels, over those channels and all pixels:

    \mu = mean(x),  rstd = 1 / sqrt(var(x) + \epsilon),  \hat x = (x - \mu) rstd
    z = \gamma_c \hat x + \beta_c,   y = silu(z) = z s(z),   s = sigmoid

NumPy makes about a dozen passes over the (N, C, H, W) array for this (mean, centring,
variance, scaling, affine map, the four of the sigmoid, the product) and keeps five
arrays of its size for the backward; the kernel reads x three times per group (mean,
variance, output) while the group stays in cache, and keeps only \mu and rstd, (N, G).

The backward recomputes \hat x, z and s(z) from x. With dz = dy s (1 + z (1 - s)) and
g = \gamma_c dz (the gradient reaching \hat x):

    dx = rstd (g - mean(g) - \hat x mean(g \hat x)),    means over the group
    d\gamma_c = \sum_{n, pixels} dz \hat x,   d\beta_c = \sum_{n, pixels} dz

Each (n, g) is independent, so `prange` splits them over the cores; each writes its own
channels' partial sums of d\gamma and d\beta into row n of an (N, C) array (no races),
summed over n at the end.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import GROUP_NORM
from . import _checks as ck
from ._numba_cpu_common import fast_exp, use_threads

__all__ = list(GROUP_NORM)

_FAST = {"reassoc", "contract"}  # vectorised sums; no assumptions about inf or NaN


@njit(inline="always", fastmath=_FAST, error_model="numpy")
def _sigmoid(z, one):
    # s(z) = 1 / (1 + exp(-z)), from e = exp(-|z|) <= 1 so it never overflows
    e = fast_exp(-abs(z))
    t = one / (one + e)
    return t if z >= 0 else e * t


@njit(inline="always", fastmath=_FAST, error_model="numpy")
def _forward_group(x, w, b, G, eps, y, mean, rstd, i):
    n, g = i // G, i % G
    cg = x.shape[1] // G
    c0 = g * cg
    one = x.dtype.type(1)
    inv_m = one / x.dtype.type(cg * x.shape[2])
    # \mu: the mean over the group's channels and pixels
    s = x.dtype.type(0)
    for c in range(c0, c0 + cg):
        for p in range(x.shape[2]):
            s += x[n, c, p]
    mu = s * inv_m
    # rstd = 1 / sqrt(\sigma^2 + \epsilon), the variance by the two-pass formula
    v = x.dtype.type(0)
    for c in range(c0, c0 + cg):
        for p in range(x.shape[2]):
            d = x[n, c, p] - mu
            v += d * d
    rs = one / math.sqrt(v * inv_m + eps)
    for c in range(c0, c0 + cg):
        a = rs * w[c]
        for p in range(x.shape[2]):
            # z = \gamma (x - \mu) rstd + \beta;  y = z s(z)
            z = (x[n, c, p] - mu) * a + b[c]
            y[n, c, p] = z * _sigmoid(z, one)
    mean[n, g] = mu
    rstd[n, g] = rs


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _forward(x, w, b, G, eps, y, mean, rstd, threads):
    if threads:
        for i in prange(x.shape[0] * G):
            _forward_group(x, w, b, G, eps, y, mean, rstd, i)
    else:
        for i in range(x.shape[0] * G):
            _forward_group(x, w, b, G, eps, y, mean, rstd, i)


@njit(inline="always", fastmath=_FAST, error_model="numpy")
def _backward_group(dy, x, w, b, mean, rstd, dx, dw_part, db_part, G, i):
    n, g = i // G, i % G
    cg = x.shape[1] // G
    c0 = g * cg
    one = x.dtype.type(1)
    inv_m = one / x.dtype.type(cg * x.shape[2])
    mu, rs = mean[n, g], rstd[n, g]
    sg = x.dtype.type(0)
    sgx = x.dtype.type(0)
    for c in range(c0, c0 + cg):
        dwc = x.dtype.type(0)
        dbc = x.dtype.type(0)
        for p in range(x.shape[2]):
            xh = (x[n, c, p] - mu) * rs
            z = xh * w[c] + b[c]
            s = _sigmoid(z, one)
            # dz = dy silu'(z) = dy s (1 + z (1 - s));  g = \gamma dz, kept in dx
            dz = dy[n, c, p] * s * (one + z * (one - s))
            gx = dz * w[c]
            dx[n, c, p] = gx
            sg += gx
            sgx += gx * xh
            dwc += dz * xh
            dbc += dz
        dw_part[n, c] = dwc
        db_part[n, c] = dbc
    sg *= inv_m
    sgx *= inv_m
    for c in range(c0, c0 + cg):
        for p in range(x.shape[2]):
            xh = (x[n, c, p] - mu) * rs
            # dx = rstd (g - mean(g) - \hat x mean(g \hat x))
            dx[n, c, p] = rs * (dx[n, c, p] - sg - xh * sgx)


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _backward(dy, x, w, b, mean, rstd, dx, dw_part, db_part, threads):
    G = mean.shape[1]
    if threads:
        for i in prange(x.shape[0] * G):
            _backward_group(dy, x, w, b, mean, rstd, dx, dw_part, db_part, G, i)
    else:
        for i in range(x.shape[0] * G):
            _backward_group(dy, x, w, b, mean, rstd, dx, dw_part, db_part, G, i)


def _as_ncp(x: np.ndarray) -> np.ndarray:
    """x (N, C, ...) as a C-contiguous (N, C, pixels) array (a view when possible)."""
    return np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)


def group_norm_silu_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, num_groups: int, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, mean, rstd): y = silu(group_norm(x)), one fused sweep per (sample, group)."""
    ck.check_group_norm("group_norm_silu_forward", x, weight, num_groups)
    ck.check_same_shape("group_norm_silu_forward", weight=weight, bias=bias)
    ck.check_float("group_norm_silu_forward", x=x, weight=weight, bias=bias)
    x3 = _as_ncp(x)  # (N, C, P)
    y = np.empty_like(x3)  # (N, C, P)
    mean = np.empty((x.shape[0], num_groups), dtype=x.dtype)  # (N, G)
    rstd = np.empty((x.shape[0], num_groups), dtype=x.dtype)  # (N, G)
    if x.size:
        w, b = np.ascontiguousarray(weight), np.ascontiguousarray(bias)
        eps_t = x.dtype.type(eps)
        _forward(x3, w, b, num_groups, eps_t, y, mean, rstd, use_threads(x3.size))
    return y.reshape(x.shape), mean, rstd


def group_norm_silu_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray,
    rstd: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(dx, dweight, dbias): dx and each sample's share of dweight, dbias in one sweep."""
    G = mean.shape[1] if mean.ndim == 2 else 0
    ck.check_group_norm("group_norm_silu_backward", x, weight, G, mean=mean, rstd=rstd)
    ck.check_same_shape("group_norm_silu_backward", x=x, dy=dy)
    ck.check_same_shape("group_norm_silu_backward", weight=weight, bias=bias)
    ck.check_float(
        "group_norm_silu_backward", dy=dy, x=x, weight=weight, bias=bias, mean=mean, rstd=rstd
    )
    x3 = _as_ncp(x)  # (N, C, P)
    dx = np.empty_like(x3)  # (N, C, P)
    dw_part = np.zeros(x3.shape[:2], dtype=x.dtype)  # (N, C)
    db_part = np.zeros(x3.shape[:2], dtype=x.dtype)  # (N, C)
    if x.size:
        _backward(
            _as_ncp(dy), x3, np.ascontiguousarray(weight), np.ascontiguousarray(bias),
            np.ascontiguousarray(mean), np.ascontiguousarray(rstd), dx, dw_part, db_part,
            use_threads(x3.size),
        )  # fmt: skip
    return dx.reshape(x.shape), dw_part.sum(axis=0), db_part.sum(axis=0)
