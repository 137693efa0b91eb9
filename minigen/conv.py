"""Image ops for the diffusion U-Net: conv2d, group norm, average pooling, upsampling.

Images are (N, C, H, W). A 2-D convolution with weights w of shape (O, C, kh, kw):
    y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] x[n, c, s i + u - p, s j + v - p]
computed as one matrix product over *windows* ("im2col"). The windows are taken
channels-last: the padded input is laid out (N, H, W, C), a strided view of it of
shape (N, Ho, Wo, kh, kw, C) is copied into the (N Ho Wo, kh kw C) matrix of
windows (each copy moves C contiguous values, which is several times faster than
gathering windows out of (N, C, H, W)), and multiplied by w laid out (kh kw C, O).
"""

from __future__ import annotations

from typing import Any

from minigen import backend
from minigen.tensor import Tensor, node

__all__ = ["conv2d", "group_norm", "avg_pool2d", "upsample_nearest2d"]


def _windows(xpad: Any, kh: int, kw: int, stride: int) -> Any:
    """A view of shape (N, Ho, Wo, kh, kw, C): window (i, j) of the padded (N, H, W, C) input."""
    xp = backend.array_module(xpad)
    N, H, W, C = xpad.shape
    Ho, Wo = (H - kh) // stride + 1, (W - kw) // stride + 1
    sN, sH, sW, sC = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, (N, Ho, Wo, kh, kw, C), (sN, sH * stride, sW * stride, sH, sW, sC), writeable=False
    )


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
    p = padding
    if H + 2 * p < kh or W + 2 * p < kw:
        raise ValueError(
            f"conv2d: kernel {kh}x{kw} is larger than the padded input {(N, C, H + 2 * p, W + 2 * p)}"
        )
    dt = xp.result_type(xd, w)
    xpad = xp.zeros((N, H + 2 * p, W + 2 * p, C), dtype=dt)  # (N, H + 2p, W + 2p, C)
    xpad[:, p : p + H, p : p + W, :] = xd.transpose(0, 2, 3, 1)
    win = _windows(xpad, kh, kw, stride)  # (N, Ho, Wo, kh, kw, C)
    Ho, Wo = win.shape[1], win.shape[2]
    cols = win.reshape(N * Ho * Wo, kh * kw * C)  # a copy: one row per output pixel
    wm = w.transpose(2, 3, 1, 0).reshape(kh * kw * C, O)  # (kh kw C, O)
    y = cols @ wm  # (N Ho Wo, O)
    if bias is not None:
        y += bias.data
    y = xp.ascontiguousarray(y.reshape(N, Ho, Wo, O).transpose(0, 3, 1, 2))  # (N, O, Ho, Wo)

    def backward(g):  # g: (N, O, Ho, Wo)
        dx = dw = db = None
        g2 = g.transpose(0, 2, 3, 1).reshape(N * Ho * Wo, O)  # (N Ho Wo, O)
        if weight.requires_grad:
            # dL/dw = cols^T g, back to (O, C, kh, kw)
            dw = (cols.T @ g2).reshape(kh, kw, C, O).transpose(3, 2, 0, 1)
        if x.requires_grad:
            dcols = (g2 @ wm.T).reshape(N, Ho, Wo, kh, kw, C)  # dL/dcols = g w^T
            dpad = xp.zeros(xpad.shape, dtype=g.dtype)  # (N, H + 2p, W + 2p, C)
            for u in range(kh):  # each kernel offset adds its windows back ("col2im")
                for v in range(kw):
                    dpad[:, u : u + stride * Ho : stride, v : v + stride * Wo : stride, :] += dcols[
                        :, :, :, u, v, :
                    ]
            dx = xp.ascontiguousarray(dpad[:, p : p + H, p : p + W, :].transpose(0, 3, 1, 2))
        if bias is not None and bias.requires_grad:
            db = g2.sum(axis=0)
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
    from minigen.functional import normalize_backward, normalize_forward

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
