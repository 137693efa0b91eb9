"""Neural-network ops with fused forward and backward passes.

`import minigen.functional as F`. Each op here is one node of the graph, however
many NumPy passes its math takes, so the Python overhead stays per op, not per
elementary operation. The array-level math is kept in plain functions
(`softmax_forward`, `layer_norm_backward`, `attention_forward`, ...) that take and
return arrays. They are the NumPy references of the fused ops (minigen/dispatch.py): the
ops call them through `dispatch.pick(softmax_forward)(...)`, so `backend.use("numba")` or
`"cupy"` runs the fused kernels of `minigen_kernels` instead (held to these by its
`reference.py`).

Softmax over the last axis, with m = max_j x_j for stability:
    softmax(x)_i = e^{x_i - m} / sum_j e^{x_j - m}
Layer norm over the last axis of size C:
    y = (x - mean(x)) / sqrt(var(x) + eps) * w + b
Attention (Vaswani et al. 2017), per head, with a causal mask for autoregression:
    Att(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V,   M_ij = -inf where key j is in the future
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from minigen import backend, dispatch, rng
from minigen.conv import avg_pool2d, conv2d, group_norm, upsample_nearest2d
from minigen.normalize import (
    group_norm_silu_backward,
    group_norm_silu_forward,
    normalize_backward,
    normalize_forward,
)
from minigen.ops import _constant, gelu, relu, sigmoid, silu, tanh, unbroadcast
from minigen.tensor import Tensor, node

__all__ = [
    "relu", "gelu", "silu", "sigmoid", "tanh", "logsigmoid", "softmax", "log_softmax",
    "cross_entropy", "mse_loss", "linear", "layer_norm", "embedding", "dropout", "attention",
    "scaled_dot_product_attention", "causal_mask", "conv2d", "group_norm", "avg_pool2d",
    "upsample_nearest2d", "group_norm_silu",
]  # fmt: skip

# ----------------------------------------------------------------------------- softmax


def softmax_forward(x: Any, axis: int = -1) -> Any:
    xp = backend.array_module(x)
    e = x - x.max(axis=axis, keepdims=True)
    xp.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def softmax_backward(y: Any, dy: Any, axis: int = -1) -> Any:
    # dx_i = y_i (dy_i - sum_j dy_j y_j)
    dx = dy - (dy * y).sum(axis=axis, keepdims=True)
    dx *= y
    return dx


def log_softmax_forward(x: Any, axis: int = -1) -> Any:
    xp = backend.array_module(x)
    z = x - x.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def log_softmax_backward(y: Any, dy: Any, axis: int = -1) -> Any:
    # dx_i = dy_i - softmax(x)_i sum_j dy_j,  with softmax(x) = e^y
    xp = backend.array_module(y)
    return dy - xp.exp(y) * dy.sum(axis=axis, keepdims=True)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    # softmax_forward, or the selected backend's kernel for it (minigen/dispatch.py)
    y, backward = dispatch.pick(softmax_forward)(x.data, axis), dispatch.pick(softmax_backward)
    return node(y, (x,), lambda g: (backward(y, g, axis),))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    y = dispatch.pick(log_softmax_forward)(x.data, axis)
    backward = dispatch.pick(log_softmax_backward)
    return node(y, (x,), lambda g: (backward(y, g, axis),))


def logsigmoid(x: Tensor) -> Tensor:
    """log sigmoid(x) = min(x, 0) - log(1 + e^{-|x|}), stable for either sign."""
    xp, xd = backend.array_module(x.data), x.data
    y = xp.minimum(xd, 0) - xp.log1p(xp.exp(-xp.abs(xd)))
    # d/dx log sigmoid(x) = 1 - sigmoid(x) = e^{log sigmoid(x) - x}
    return node(y, (x,), lambda g: (g * xp.exp(y - xd),))


# ----------------------------------------------------------------------------- losses


def cross_entropy(
    logits: Tensor, target: Any, ignore_index: int = -100, reduction: str = "mean"
) -> Tensor:
    """-log softmax(logits)[target], averaged over the targets that are not `ignore_index`.

    logits: (..., C) scores; target: (...) integer class ids.
    """
    x = logits.data
    t = target.data if isinstance(target, Tensor) else backend.array_module(x).asarray(target)
    xp = backend.array_module(x)
    if x.shape[:-1] != t.shape:
        raise ValueError(
            f"cross_entropy: logits of shape {x.shape} need targets of shape {x.shape[:-1]}, "
            f"got targets of shape {t.shape}"
        )
    if t.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: targets must be integer class ids, got dtype {t.dtype}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be mean, sum or none, got {reduction!r}")
    C = x.shape[-1]
    valid = t != ignore_index  # (...)
    if bool(((t < 0) | (t >= C))[valid].any()):
        raise ValueError(f"cross_entropy: a target lies outside [0, {C}) (and is not ignore_index)")
    t_safe = xp.where(valid, t, 0)[..., None]  # (..., 1)
    logp = dispatch.pick(log_softmax_forward)(x, -1)  # (..., C)
    # the loss of one example: -log p(target) = -log softmax(x)_target
    nll = -xp.take_along_axis(logp, t_safe, axis=-1)[..., 0] * valid  # (...)
    n = int(valid.sum()) if reduction == "mean" else 1
    y = nll if reduction == "none" else nll.sum() / n

    def backward(g):
        # d(-log softmax(x)_t)/dx = softmax(x) - onehot(t)
        d = xp.exp(logp)  # (..., C)
        xp.put_along_axis(d, t_safe, xp.take_along_axis(d, t_safe, axis=-1) - 1, axis=-1)
        scale = (g[..., None] if reduction == "none" else g / n) * valid[..., None]
        return (d * scale,)

    return node(y, (logits,), backward)


def mse_loss(pred: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """mean((pred - target)^2); both must have the same shape."""
    tgt = target if isinstance(target, Tensor) else Tensor(target, dtype=pred.dtype)
    if pred.shape != tgt.shape:
        raise ValueError(f"mse_loss: pred has shape {pred.shape} but target has shape {tgt.shape}")
    diff = pred.data - tgt.data
    n = diff.size if reduction == "mean" else 1
    y = (diff * diff).sum() / n if reduction != "none" else diff * diff

    def backward(g):  # d/dpred (pred - target)^2 = 2 (pred - target)
        d = 2 * diff * (g / n if reduction != "none" else g)
        return (d, -d)

    return node(y, (pred, tgt), backward)


# ----------------------------------------------------------------------------- layers


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W + b, with W of shape (in, out): one GEMM over all leading axes."""
    xd, w = x.data, weight.data
    if xd.shape[-1] != w.shape[0]:
        raise ValueError(
            f"linear: input of shape {xd.shape} does not match weight of shape {w.shape} "
            f"({xd.shape[-1]} != {w.shape[0]})"
        )
    x2 = xd.reshape(-1, xd.shape[-1])  # (N, in)
    try:
        y = x2 @ w  # (N, out)
    except TypeError:
        backend.array_module(x2, w, op="linear")  # arrays of two backends: say so
        raise
    if bias is not None:
        y += bias.data
    y = y.reshape(*xd.shape[:-1], w.shape[1])

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])  # (N, out)
        return (
            (g2 @ w.T).reshape(xd.shape) if x.requires_grad else None,  # dL/dx = g W^T
            x2.T @ g2 if weight.requires_grad else None,  # dL/dW = x^T g
            g2.sum(axis=0) if bias is not None and bias.requires_grad else None,
        )

    parents = (x, weight, bias) if bias is not None else (x, weight)
    return node(y, parents, backward if bias is not None else lambda g: backward(g)[:2])


def layer_norm_forward(x: Any, w: Any, b: Any, eps: float) -> tuple[Any, Any]:
    """(y, saved): y = xhat w + b, and saved = (xhat, rstd), what the backward reads."""
    xhat, rstd = normalize_forward(x, eps)
    y = xhat * w if w is not None else xhat.copy()
    if b is not None:
        y += b
    return y, (xhat, rstd)


def layer_norm_backward(dy: Any, saved: Any, w: Any) -> tuple[Any, Any, Any]:
    """(dx, dw, db) from dL/dy and the forward's (xhat, rstd)."""
    xhat, rstd = saved
    xp, C = backend.array_module(dy), xhat.shape[-1]
    dx = normalize_backward(dy * w if w is not None else dy, xhat, rstd)
    dy2 = dy.reshape(-1, C)
    dw = xp.einsum("ni,ni->i", dy2, xhat.reshape(-1, C))  # sum over rows of dy xhat
    db = dy2.sum(axis=0)
    return dx, dw, db


def layer_norm(
    x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """Normalise the last axis to mean 0, variance 1, then scale by `weight`, shift by `bias`."""
    forward = dispatch.pick(layer_norm_forward)
    return _affine_norm_node(
        "layer_norm", x, x.shape[-1], weight, bias, lambda w, b: forward(x.data, w, b, eps),
        dispatch.pick(layer_norm_backward),
    )  # fmt: skip


def _affine_norm_node(op: str, x: Tensor, C: int, weight: Tensor | None, bias: Tensor | None,
                      forward: Callable, backward: Callable) -> Tensor:  # fmt: skip
    """The node of a normalisation over C channels with an optional weight and bias (C,):
    y, saved = forward(w, b); backward(g, saved, w) -> (dx, dw, db), kept for the given parents."""
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (C,):
            raise ValueError(f"{op}: {name} has shape {p.shape}, expected ({C},)")
    w = weight.data if weight is not None else None
    b = bias.data if bias is not None else None
    y, saved = forward(w, b)
    parents = tuple(t for t in (x, weight, bias) if t is not None)

    def grad(g):
        dx, dw, db = backward(g, saved, w)
        return (dx, *((dw,) if weight is not None else ()), *((db,) if bias is not None else ()))

    return node(y, parents, grad)


def group_norm_silu(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """silu(group_norm(x, num_groups, weight, bias, eps)) as one node: the NumPy functions
    (normalize.py) compute what the two ops compute; on "numba" one fused kernel runs."""
    C = x.shape[1]
    if C % num_groups:
        raise ValueError(f"group_norm_silu: {C} channels do not split into {num_groups} groups")
    forward = dispatch.pick(group_norm_silu_forward)
    # y = silu(gamma xhat + beta), xhat over each group of channels and all pixels
    return _affine_norm_node(
        "group_norm_silu", x, C, weight, bias,
        lambda w, b: forward(x.data, num_groups, w, b, eps), dispatch.pick(group_norm_silu_backward),
    )  # fmt: skip


def embedding(idx: Any, weight: Tensor) -> Tensor:
    """Rows of `weight` picked by integer ids: (...) -> (..., D)."""
    ids = idx.data if isinstance(idx, Tensor) else backend.array_module(weight.data).asarray(idx)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    V = weight.shape[0]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
        raise ValueError(f"embedding: ids must lie in [0, {V}), got [{ids.min()}, {ids.max()}]")
    wd = weight.data

    def backward(g):  # each row's gradient is the sum over the positions that picked it
        dw = backend.array_module(g).zeros(wd.shape, dtype=g.dtype)
        backend.scatter_add(dw, ids.reshape(-1), g.reshape(-1, wd.shape[1]))
        return (dw,)

    return node(wd[ids], (weight,), backward)


def dropout(x: Tensor, p: float = 0.5, training: bool = True, gen: Any = None) -> Tensor:
    """Zero each entry with probability p and scale the rest by 1/(1-p) (identity in eval)."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must lie in [0, 1], got {p}")
    if not training or p == 0:
        return x
    keep = rng.rand(*x.shape, dtype=x.dtype, gen=gen) >= p
    mask = keep / (1 - p) if p < 1 else keep * 0
    mask = mask.astype(x.dtype)
    return node(x.data * mask, (x,), lambda g: (g * mask,))


# ----------------------------------------------------------------------------- attention


def causal_mask(T: int, S: int, xp: Any = np) -> Any:
    """(T, S) booleans, True where query i may attend to key j: j <= i + (S - T) (the lower
    triangle when S == T; with S > T cached keys, the queries are the last T positions)."""
    return xp.tri(T, S, S - T, dtype=bool)


def attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Any = None, scale: float | None = None
) -> Tensor:
    """The plain reference, softmax(q k^T * scale + M) v, in three of minigen's ops (autograd
    gives the gradients): q (B, H, T, d), k (B, H, S, d), v (B, H, S, dv) -> (B, H, T, dv).
    `scale` s defaults to 1 / sqrt(d); `mask` M, broadcastable to (..., T, S), is boolean
    (True = may attend, e.g. `causal_mask(T, S)`) or additive. The models run the same fused,
    `scaled_dot_product_attention` (backward derived in `attention_backward`; tested equal).
    """
    s = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    m = 0.0 if mask is None else _constant(mask.data if isinstance(mask, Tensor) else mask)
    if mask is not None and m.dtype == bool:  # True (may attend): M = 0; False: M = -inf
        m = backend.array_module(m).where(m, 0.0, -math.inf).astype(q.dtype)  # (..., T, S)
    kT = k.swapaxes(-1, -2)  # K^T (B, H, d, S)
    # Att(Q, K, V) = softmax(Q K^T s + M) V
    return softmax(q @ kT * s + m) @ v  # P = softmax(S) (B, H, T, S), times V: (B, H, T, dv)


def attention_forward(
    q: Any, k: Any, v: Any, scale: float, is_causal: bool, mask: Any = None, keep: Any = None
) -> tuple[Any, Any]:
    """`attention` fused on arrays: (O, P) = (y, att), with `is_causal` (`causal_mask`'s M),
    `mask` (boolean or additive) and `keep`, a dropout mask on P scaled by 1 / (1 - p)."""
    xp = backend.array_module(q)
    # S^T = K (Q s)^T: the scores transposed, one key per row, so that the softmax over the
    # keys reduces over a leading axis, which NumPy vectorises across the queries (several
    # times faster than along short last-axis rows); then + M^T
    sT = k @ (q * scale).swapaxes(-1, -2)  # (..., S, T)
    S, T = sT.shape[-2:]
    if is_causal:
        sT += xp.where(causal_mask(T, S, xp).T, 0, -xp.inf).astype(sT.dtype)  # + M^T
    if mask is not None:
        mT = (mask[None, :] if mask.ndim < 2 else mask).swapaxes(-1, -2)  # a 1-D mask is (1, S)
        sT = xp.where(mT, sT, -xp.inf) if mask.dtype == bool else sT + mT
    # P = softmax(S): each query's softmax runs down a column of S^T (axis -2)
    att = softmax_forward(sT, axis=-2).swapaxes(-1, -2)  # P (..., T, S), a view
    # O = P V, or (P * keep) V with dropout
    return (att if keep is None else att * keep) @ v, att  # (..., T, Dv), (..., T, S)


def attention_backward(
    dy: Any, q: Any, k: Any, v: Any, att: Any, scale: float, keep: Any = None
) -> tuple[Any, Any, Any]:
    """dQ, dK, dV of `attention` from dO = dy and P = att, derived as llm.c does. Per head,
    with s = scale: S = Q K^T s + M (T, S), P = softmax(S) along rows, O = P V (T, dv); back
    one step at a time (* elementwise, rowsum keeps the axis):
        O = P V          =>  dV = P^T dO,  dP = dO V^T               (S, dv), (T, S)
        P = softmax(S)   =>  dS = P * (dP - rowsum(dP * P))           (T, S)
            as dP_ij/dS_ik = P_ij (delta_jk - P_ik): dS_ik = sum_j dP_ij P_ij (delta_jk - P_ik)
        S = Q K^T s + M  =>  dQ = dS K s,  dK = dS^T Q s              (T, d), (S, d)
    A hidden key has P = 0, so dS = 0 there. With dropout, dV = (P * keep)^T dO and
    dP = (dO V^T) * keep. dP and dS are held transposed (..., S, T), as the scores in
    `attention_forward`, so that the rowsum runs over axis -2.
    """
    # dV = P^T dO
    dv = (att if keep is None else att * keep).swapaxes(-1, -2) @ dy  # (..., S, Dv)
    # dP = dO V^T, held transposed: dP^T = V dO^T
    dpT = v @ dy.swapaxes(-1, -2)  # (..., S, T)
    if keep is not None:
        dpT *= keep.swapaxes(-1, -2)  # through the dropout
    # dS = P * (dP - rowsum(dP * P)), on the transposes: the sum over axis -2
    dsT = softmax_backward(att.swapaxes(-1, -2), dpT, axis=-2)  # dS^T (..., S, T)
    # dQ = dS K s
    dq = dsT.swapaxes(-1, -2) @ k  # (..., T, D)
    dq *= scale
    # dK = dS^T Q s
    dk = dsT @ q  # (..., S, D)
    dk *= scale
    return dq, dk, dv


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    is_causal: bool = False,
    attn_mask: Any = None,
    scale: float | None = None,
) -> Tensor:
    """Attention as one fused node, PyTorch's signature: q (..., T, D), k (..., S, D),
    v (..., S, Dv) -> (..., T, Dv), the same values and gradients as the plain `attention`.
    `attn_mask`: boolean (True = may attend) or additive, broadcastable to (..., T, S).
    """
    qd, kd, vd = q.data, k.data, v.data
    if qd.shape[-1] != kd.shape[-1] or kd.shape[-2] != vd.shape[-2]:
        raise ValueError(
            f"scaled_dot_product_attention: q {qd.shape}, k {kd.shape}, v {vd.shape} do not fit "
            "(need q (..., T, D), k (..., S, D), v (..., S, Dv))"
        )
    scale = 1 / math.sqrt(qd.shape[-1]) if scale is None else scale
    mask = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
    mask = _constant(mask)  # a NumPy mask follows the backend (onto the GPU with "cupy")
    # `attention` fused: attention_forward, or the selected backend's kernel; O and P
    y, att = dispatch.pick(attention_forward)(qd, kd, vd, scale, is_causal, mask)  # (..., T, Dv)
    attention_bwd = dispatch.pick(attention_backward)

    def backward(g):
        dq, dk, dv = attention_bwd(g, qd, kd, vd, att, scale)
        return unbroadcast(dq, qd.shape), unbroadcast(dk, kd.shape), unbroadcast(dv, vd.shape)

    return node(y, (q, k, v), backward)
