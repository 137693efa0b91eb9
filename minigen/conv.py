"""Image ops for the diffusion U-Net: conv2d, group norm, average pooling, upsampling.

Images are (N, C, H, W). A 2-D convolution with weights w of shape (O, C, kh, kw):
    y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] x[n, c, s i + u - p, s j + v - p]
computed as one matrix product over *windows* ("im2col"): a strided view of the
padded input of shape (N, C, Ho, Wo, kh, kw), contracted with w over (C, kh, kw).
"""

from __future__ import annotations

from typing import Any

from minigen import backend
from minigen.tensor import Tensor, node

__all__ = ["conv2d", "group_norm", "avg_pool2d", "upsample_nearest2d"]


def _windows(xpad: Any, kh: int, kw: int, stride: int) -> Any:
    """A view of shape (N, C, Ho, Wo, kh, kw): window (i, j) of the padded input."""
    xp = backend.array_module(xpad)
    N, C, H, W = xpad.shape
    Ho, Wo = (H - kh) // stride + 1, (W - kw) // stride + 1
    sN, sC, sH, sW = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, (N, C, Ho, Wo, kh, kw), (sN, sC, sH * stride, sW * stride, sH, sW), writeable=False
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
    xpad = xp.pad(xd, ((0, 0), (0, 0), (p, p), (p, p))) if p else xd
    if xpad.shape[2] < kh or xpad.shape[3] < kw:
        raise ValueError(f"conv2d: kernel {kh}x{kw} is larger than the padded input {xpad.shape}")
    cols = _windows(xpad, kh, kw, stride)  # (N, C, Ho, Wo, kh, kw)
    Ho, Wo = cols.shape[2], cols.shape[3]
    y = xp.tensordot(cols, w, axes=([1, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, O)
    if bias is not None:
        y += bias.data
    y = xp.ascontiguousarray(y.transpose(0, 3, 1, 2))  # (N, O, Ho, Wo)

    def backward(g):  # g: (N, O, Ho, Wo)
        dx = dw = db = None
        if weight.requires_grad:
            dw = xp.tensordot(g, cols, axes=([0, 2, 3], [0, 2, 3]))  # (O, C, kh, kw)
        if x.requires_grad:
            dcols = xp.tensordot(g, w, axes=([1], [0]))  # (N, Ho, Wo, C, kh, kw)
            dpad = xp.zeros(xpad.shape, dtype=g.dtype)  # (N, C, H + 2p, W + 2p)
            for u in range(kh):  # each kernel offset adds its slice back ("col2im")
                for v in range(kw):
                    dpad[:, :, u : u + stride * Ho : stride, v : v + stride * Wo : stride] += dcols[
                        :, :, :, :, u, v
                    ].transpose(0, 3, 1, 2)
            dx = dpad[:, :, p : p + H, p : p + W] if p else dpad
        if bias is not None and bias.requires_grad:
            db = g.sum(axis=(0, 2, 3))
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
