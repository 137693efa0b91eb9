"""Image ops for the diffusion U-Net: conv2d, group norm, average pooling, upsampling.

Images are (N, C, H, W). A 2-D convolution with weights w of shape (O, C, kh, kw):
    y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] x[n, c, s i + u - p, s j + v - p]
computed as one matrix product over *windows* ("im2col"). The windows are taken
channels-last: the padded input is laid out (N, H, W, C), a strided view of it of
shape (N, Ho, Wo, kh, kw, C) is copied into the (N Ho Wo, kh kw C) matrix of
windows (each copy moves C contiguous values, which is several times faster than
gathering windows out of (N, C, H, W)), and multiplied by w laid out (kh kw C, O).
At stride 1, when the output has fewer channels than the input (O < C), the same sum is
taken the other way round, which copies kh kw O values per pixel instead of kh kw C:
one product z = x w[u, v] for every kernel offset at once, then y[i, j] = sum_{u, v}
z[i + u, j + v, u, v] (`_correlate`). The gradient with respect to the input is itself
such a correlation: of the gradient, padded by k - 1 - p, with the kernel flipped and
its two channel axes swapped.
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
    out = xp.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=a.dtype)
    out[:, ph : ph + H, pw : pw + W, :] = a.transpose(0, 2, 3, 1)
    return out


def _correlate(xpad: Any, wk: Any) -> Any:
    """Stride-1 cross-correlation, channels-last: xpad (N, Hp, Wp, C), wk (kh, kw, C, O)
    -> (N, Hp - kh + 1, Wp - kw + 1, O), and the windows if it built them.

    Two ways to one sum, y[n, i, j] = sum_{u, v} xpad[n, i + u, j + v] @ wk[u, v]; each builds
    an intermediate of kh kw values per pixel and per channel of one side, so the side with
    fewer channels is taken:
    - C <= O, windows ("im2col"): y = [xpad[i + u, j + v] for u, v] @ wk, one row per output pixel;
    - C > O, shifted products: z[a, b, u, v] = xpad[a, b] @ wk[u, v] for every padded pixel,
      one matrix product, then y[i, j] = sum_{u, v} z[i + u, j + v, u, v].
    """
    xp = backend.array_module(xpad)
    N, Hp, Wp, C = xpad.shape
    kh, kw, _, O = wk.shape
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    if C <= O:
        cols = _windows(xpad, kh, kw, 1).reshape(N * Ho * Wo, kh * kw * C)  # a copy
        return (cols @ wk.reshape(kh * kw * C, O)).reshape(N, Ho, Wo, O), cols
    wz = wk.transpose(2, 0, 1, 3).reshape(C, kh * kw * O)  # (C, kh kw O)
    z = (xpad.reshape(N * Hp * Wp, C) @ wz).reshape(N, Hp, Wp, kh, kw, O)
    y = xp.zeros((N, Ho, Wo, O), dtype=z.dtype)  # (N, Ho, Wo, O)
    for u in range(kh):
        for v in range(kw):
            y += z[:, u : u + Ho, v : v + Wo, u, v, :]
    return y, None


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
    wk = w.transpose(2, 3, 1, 0)  # (kh, kw, C, O)
    if s == 1:
        y, cols = _correlate(xpad, wk)  # (N, Ho, Wo, O)
    else:  # strided: the windows of every s-th pixel
        win = _windows(xpad, kh, kw, s)  # (N, Ho, Wo, kh, kw, C)
        cols = win.reshape(-1, kh * kw * C)  # a copy: one row per output pixel
        y = (cols @ wk.reshape(kh * kw * C, O)).reshape(*win.shape[:3], O)
    Ho, Wo = y.shape[1], y.shape[2]
    if bias is not None:
        y += bias.data
    y = xp.ascontiguousarray(y.transpose(0, 3, 1, 2))  # (N, O, Ho, Wo)

    def backward(g):  # g: (N, O, Ho, Wo)
        dx = dw = db = None
        g4 = g.transpose(0, 2, 3, 1)  # (N, Ho, Wo, O), a view
        if weight.requires_grad:
            # dL/dw[u, v] = sum over output pixels of xpad[i s + u, j s + v]^T g[i, j]
            if cols is not None:  # = cols^T g
                dwk = (cols.T @ g4.reshape(-1, O)).reshape(kh, kw, C, O)
            else:  # stride 1, C > O: g shifted by (u, v) beside every padded pixel
                gs = xp.zeros(
                    (N, *xpad.shape[1:3], kh, kw, O), dtype=g.dtype
                )  # (N, Hp, Wp, kh, kw, O)
                for u in range(kh):
                    for v in range(kw):
                        gs[:, u : u + Ho, v : v + Wo, u, v, :] = g4
                dwk = (xpad.reshape(-1, C).T @ gs.reshape(-1, kh * kw * O)).reshape(C, kh, kw, O)
                dwk = dwk.transpose(1, 2, 0, 3)
            dw = dwk.transpose(3, 2, 0, 1)  # (O, C, kh, kw)
        if x.requires_grad:
            if s == 1 and p <= min(kh, kw) - 1:
                # dL/dx: g (padded by k - 1 - p) correlated with the kernel flipped, C <-> O
                gpad = _pad_nhwc(g, kh - 1 - p, kw - 1 - p)  # (N, H + kh - 1, W + kw - 1, O)
                dxn, _ = _correlate(gpad, wk[::-1, ::-1].transpose(0, 1, 3, 2))  # (N, H, W, C)
                dx = xp.ascontiguousarray(dxn.transpose(0, 3, 1, 2))
            else:  # each kernel offset adds its windows back ("col2im")
                dcols = (g4.reshape(-1, O) @ wk.reshape(kh * kw * C, O).T).reshape(
                    N, Ho, Wo, kh, kw, C
                )
                dpad = xp.zeros(xpad.shape, dtype=g.dtype)  # (N, H + 2p, W + 2p, C)
                for u in range(kh):
                    for v in range(kw):
                        dpad[:, u : u + s * Ho : s, v : v + s * Wo : s, :] += dcols[
                            :, :, :, u, v, :
                        ]
                dx = xp.ascontiguousarray(dpad[:, p : p + H, p : p + W, :].transpose(0, 3, 1, 2))
        if bias is not None and bias.requires_grad:
            db = g4.sum(axis=(0, 1, 2))
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
