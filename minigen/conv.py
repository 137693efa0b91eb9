"""Image ops for the diffusion U-Net: conv2d, group norm, average pooling, upsampling.

Images are (N, C, H, W). A 2-D convolution with weights w of shape (O, C, kh, kw):
    y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] x[n, c, s i + u - p, s j + v - p]
computed as one matrix product over *windows* ("im2col"). The windows are taken
channels-last: the padded input is laid out (N, H, W, C), a strided view of it of
shape (N, Ho, Wo, kh, kw, C) is copied into the (N Ho Wo, kh kw C) matrix of
windows (each copy moves C contiguous values, which is several times faster than
gathering windows out of (N, C, H, W)), and multiplied by w laid out (kh kw C, O):
    y = cols @ w                       (N Ho Wo, O)
The backward reuses the forward's windows, so each gradient is one more product:
    dL/dw = cols^T @ g                 (kh kw C, O)
    dL/dx: at stride 1, itself a convolution: of g, padded by k - 1 - p, with the
           kernel flipped and its two channel axes swapped, by windows again;
           otherwise the windows' gradient g @ w^T, each kernel offset's slice of it
           added back where its windows came from ("col2im").
All the arithmetic is in these matrix products (BLAS); the rest is one copy each way
between the layouts (measured on the U-Net's shapes: benchmarks/README.md, "U-Net").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minigen import backend
from minigen.normalize import normalize_backward, normalize_forward
from minigen.tensor import Tensor, node

__all__ = ["conv2d", "group_norm", "avg_pool2d", "upsample_nearest2d"]


def _windows(xpad: Any, kh: int, kw: int, stride: int) -> Any:
    """A view of shape (N, Ho, Wo, kh, kw, C): window (i, j) of the padded (N, H, W, C) input."""
    xp = backend.array_module(xpad)
    N, H, W, C = xpad.shape
    Ho, Wo = (H - kh) // stride + 1, (W - kw) // stride + 1
    sN, sH, sW, sC = xpad.strides
    shape, strides = (N, Ho, Wo, kh, kw, C), (sN, sH * stride, sW * stride, sH, sW, sC)
    if xp is np:  # read-only, so a write through the overlapping view cannot happen
        return np.lib.stride_tricks.as_strided(xpad, shape, strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(xpad, shape, strides)  # cupy has no writeable=


def _pad_nhwc(a: Any, ph: int, pw: int) -> Any:
    """(N, C, H, W) -> (N, H + 2 ph, W + 2 pw, C), zero-padded, channels-last."""
    xp = backend.array_module(a)
    N, C, H, W = a.shape
    if ph == pw == 0:
        return xp.ascontiguousarray(a.transpose(0, 2, 3, 1))
    out = xp.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=a.dtype)
    out[:, ph : ph + H, pw : pw + W, :] = a.transpose(0, 2, 3, 1)
    return out


def _im2col(xpad: Any, kh: int, kw: int, stride: int) -> tuple[Any, tuple[int, int]]:
    """The matrix of windows (N Ho Wo, kh kw C) of a padded (N, H, W, C) input, and (Ho, Wo):
    a copy, except for a 1x1 kernel at stride 1 (then it is xpad itself, reshaped)."""
    win = _windows(xpad, kh, kw, stride)  # (N, Ho, Wo, kh, kw, C), a view
    cols = win.reshape(-1, kh * kw * xpad.shape[3])  # one row per output pixel
    return cols, win.shape[1:3]


def conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1, padding: int = 0
) -> Tensor:
    """2-D cross-correlation: x (N, C, H, W), weight (O, C, kh, kw) -> (N, O, Ho, Wo)."""
    xd, w = x.data, weight.data
    if xd.ndim != 4 or w.ndim != 4 or xd.shape[1] != w.shape[1]:
        raise ValueError(
            f"conv2d: input of shape {xd.shape} and weight of shape {w.shape} do not fit "
            "(need input (N, C, H, W) and weight (O, C, kh, kw))"
        )
    if bias is not None and bias.shape != (w.shape[0],):
        raise ValueError(f"conv2d: bias has shape {bias.shape}, expected ({w.shape[0]},)")
    xp = backend.array_module(xd)
    N, C, H, W = xd.shape
    O, _, kh, kw = w.shape
    p, s = padding, stride
    if H + 2 * p < kh or W + 2 * p < kw:
        raise ValueError(
            f"conv2d: kernel {kh}x{kw} is larger than the padded input {(N, C, H + 2 * p, W + 2 * p)}"
        )
    dt = xp.result_type(xd, w)
    xpad = _pad_nhwc(xd.astype(dt, copy=False), p, p)  # (N, H + 2p, W + 2p, C)
    cols, (Ho, Wo) = _im2col(xpad, kh, kw, s)  # (N Ho Wo, kh kw C)
    wmat = w.transpose(2, 3, 1, 0).reshape(kh * kw * C, O)  # (kh kw C, O)
    # y[n, i, j] = b + sum_{u, v, c} xpad[n, s i + u, s j + v, c] w[o, c, u, v]
    y = cols @ wmat  # (N Ho Wo, O)
    if bias is not None:
        y += bias.data
    y = xp.ascontiguousarray(y.reshape(N, Ho, Wo, O).transpose(0, 3, 1, 2))  # (N, O, Ho, Wo)

    def backward(g):  # g: (N, O, Ho, Wo)
        dx = dw = db = None
        g2 = g.transpose(0, 2, 3, 1).reshape(-1, O)  # (N Ho Wo, O), a copy
        if weight.requires_grad:
            # dL/dw[o, c, u, v] = sum over output pixels of xpad[s i + u, s j + v, c] g[i, j, o]
            dw = (cols.T @ g2).reshape(kh, kw, C, O).transpose(3, 2, 0, 1)  # (O, C, kh, kw)
        if x.requires_grad:
            if s == 1 and p <= min(kh, kw) - 1:
                # dL/dx: g (padded by k - 1 - p) correlated with the kernel flipped, C <-> O
                gpad = _pad_nhwc(g, kh - 1 - p, kw - 1 - p)  # (N, H + kh - 1, W + kw - 1, O)
                gcols, _ = _im2col(gpad, kh, kw, 1)  # (N H W, kh kw O)
                wflip = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(kh * kw * O, C)
                dx = (gcols @ wflip).reshape(N, H, W, C)
            else:  # each kernel offset adds its windows' gradient back ("col2im")
                wk = w.transpose(2, 3, 0, 1).reshape(kh * kw, O, C)  # (kh kw, O, C)
                dcols = (g2 @ wk).reshape(kh, kw, N, Ho, Wo, C)  # per offset: dL/d(window)
                dpad = xp.zeros(xpad.shape, dtype=g.dtype)  # (N, H + 2p, W + 2p, C)
                for u in range(kh):
                    for v in range(kw):
                        dpad[:, u : u + s * Ho : s, v : v + s * Wo : s, :] += dcols[u, v]
                dx = dpad[:, p : p + H, p : p + W, :]  # (N, H, W, C)
            dx = xp.ascontiguousarray(dx.transpose(0, 3, 1, 2))  # (N, C, H, W)
        if bias is not None and bias.requires_grad:
            # dL/db = sum of g over the pixels, as (1, ..., 1) @ g2: BLAS, many times faster
            # than NumPy's sum down the columns of a narrow matrix
            db = xp.ones(g2.shape[0], dtype=g2.dtype) @ g2
        return (dx, dw, db) if bias is not None else (dx, dw)

    return node(y, (x, weight, bias) if bias is not None else (x, weight), backward)


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalise each group of C / num_groups channels (over them and all pixels) per sample."""
    xd = x.data
    N, C = xd.shape[:2]
    if C % num_groups:
        raise ValueError(f"group_norm: {C} channels do not split into {num_groups} groups")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (C,):
            raise ValueError(f"group_norm: {name} has shape {p.shape}, expected ({C},)")
    chan = (1, C) + (1,) * (xd.ndim - 2)  # per-channel affine, broadcast over pixels
    xhat, rstd = normalize_forward(xd.reshape(N, num_groups, -1), eps)  # (N, G, C/G * pixels)
    xhat = xhat.reshape(xd.shape)
    y = xhat * weight.data.reshape(chan) if weight is not None else xhat.copy()
    if bias is not None:
        y += bias.data.reshape(chan)
    axes = (0, *range(2, xd.ndim))

    def backward(g):
        dxhat = g * weight.data.reshape(chan) if weight is not None else g
        dx = normalize_backward(
            dxhat.reshape(N, num_groups, -1), xhat.reshape(N, num_groups, -1), rstd
        ).reshape(xd.shape)
        grads = [dx]
        if weight is not None:
            grads.append((g * xhat).sum(axis=axes))
        if bias is not None:
            grads.append(g.sum(axis=axes))
        return tuple(grads)

    return node(y, tuple(t for t in (x, weight, bias) if t is not None), backward)


def avg_pool2d(x: Tensor, kernel_size: int = 2) -> Tensor:
    """Mean over non-overlapping k x k blocks (trailing rows/columns that do not fill a block
    are dropped, as in PyTorch)."""
    k = kernel_size
    N, C, H, W = x.shape
    Ho, Wo = H // k, W // k
    if Ho == 0 or Wo == 0:
        raise ValueError(f"avg_pool2d: kernel {k} is larger than the image {H}x{W}")
    xc = x if (H, W) == (Ho * k, Wo * k) else x[:, :, : Ho * k, : Wo * k]
    return xc.reshape(N, C, Ho, k, Wo, k).mean(axis=(3, 5))


def upsample_nearest2d(x: Tensor, scale_factor: int = 2) -> Tensor:
    """Repeat each pixel into an s x s block: (N, C, H, W) -> (N, C, sH, sW)."""
    s = scale_factor
    N, C, H, W = x.shape
    blocks = x.reshape(N, C, H, 1, W, 1).broadcast_to((N, C, H, s, W, s))
    return blocks.reshape(N, C, H * s, W * s)
