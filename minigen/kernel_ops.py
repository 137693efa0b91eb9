r"""The kernel-backed functions of the fused ops, for the "numba" and "cupy" backends.

`dispatch.pick(reference)` returns one of these, bound to two first arguments: `numpy`, the
NumPy reference it stands for (functional.py, ops.py, optim.py), and `k`, the backend's
kernel module (`minigen_kernels.numba_cpu` for "numba", `minigen_kernels.cupy_kernels` for
"cupy"). The other parameters, and what is returned, are those of the reference: the ops
that call `pick` do not know which one they got. Both kernel modules take and return arrays
of their backend's module (NumPy, or CuPy on the GPU), and the matrix products here stay
`@` (BLAS, or cuBLAS): the kernels fuse what BLAS does not.

What the kernels fuse, per op (the NumPy functions make one pass over memory per line):
    softmax, log-softmax  max, exp, sum, scale of a row in one pass (and the backward)
    attention             the causal mask, the scale and the softmax of the scores
    layer norm            mean, variance, normalisation and affine map of a row; the
                          backward fuses dx with the column sums dw, db
    group norm + SiLU     per (sample, group): mean, variance, normalisation, affine map
                          and SiLU; the backward fuses dx with the per-channel sums dw, db
    GELU                  the whole elementwise formula, forward and backward
    AdamW                 the moments' and the parameters' updates, one pass over p, g, m, v
(A part's fused ops live in the part: the DDPM noise step in diffusion/noise_step.py.)

Where a kernel does not cover a case, the function hands it to `numpy`, which runs on
either array module:
- a softmax over another axis than the last; dtypes other than float32 and float64,
  or operands of different dtypes (the kernels compute in the dtype of their inputs);
- attention with an explicit mask (the kernels know the causal mask only), or a
  causal mask with fewer keys than queries;
- an AdamW step on buffers that are not all C-contiguous of one float dtype and shape.
A forward that returns `saved` records which of the two ran, so its backward matches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minigen import backend

__all__ = [
    "same_float_dtype", "softmax_forward", "softmax_backward", "log_softmax_forward",
    "log_softmax_backward", "attention_forward", "attention_backward", "layer_norm_forward",
    "layer_norm_backward", "group_norm_silu_forward", "group_norm_silu_backward",
    "gelu_forward", "gelu_backward", "adamw_step",
]  # fmt: skip

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
Fn = Any  # the NumPy reference a function stands for
Kernels = Any  # the kernel module: minigen_kernels.numba_cpu or minigen_kernels.cupy_kernels


def same_float_dtype(*arrays: Any) -> bool:
    """All arrays are float32, or all float64: what the kernels compute on."""
    dtype = arrays[0].dtype
    return dtype in _FLOATS and all(a.dtype == dtype for a in arrays)


_floats = same_float_dtype


def _last(x: Any, axis: int) -> bool:
    """`axis` is the last axis of x (the axis the row kernels reduce)."""
    return x.ndim > 0 and axis in (-1, x.ndim - 1)


# ----------------------------------------------------------------------------- softmax


# The softmax and the log-softmax have the same two guards; each keeps its own four lines so
# that "go to definition" from the table shows the kernel it calls.


def softmax_forward(numpy: Fn, k: Kernels, x: Any, axis: int = -1) -> Any:
    if not (_last(x, axis) and _floats(x)):
        return numpy(x, axis)
    return k.softmax_forward(x)


def softmax_backward(numpy: Fn, k: Kernels, y: Any, dy: Any, axis: int = -1) -> Any:
    if not (_last(y, axis) and _floats(y, dy) and y.shape == dy.shape):
        return numpy(y, dy, axis)
    return k.softmax_backward(y, dy)


def log_softmax_forward(numpy: Fn, k: Kernels, x: Any, axis: int = -1) -> Any:
    if not (_last(x, axis) and _floats(x)):
        return numpy(x, axis)
    return k.log_softmax_forward(x)


def log_softmax_backward(numpy: Fn, k: Kernels, y: Any, dy: Any, axis: int = -1) -> Any:
    if not (_last(y, axis) and _floats(y, dy) and y.shape == dy.shape):
        return numpy(y, dy, axis)
    return k.log_softmax_backward(y, dy)


# ----------------------------------------------------------------------------- attention


def attention_forward(
    numpy: Fn, kernels: Kernels, q: Any, k: Any, v: Any, scale: float, is_causal: bool,
    mask: Any = None, keep: Any = None,
) -> tuple[Any, Any]:  # fmt: skip
    T, S = q.shape[-2], k.shape[-2]
    if mask is not None or not _floats(q, k, v) or (is_causal and S < T):
        return numpy(q, k, v, scale, is_causal, mask, keep)
    s = q @ k.swapaxes(-1, -2)  # (..., T, S) = Q K^T, by BLAS
    if is_causal:
        # att = softmax(scale s + M): scale, mask and softmax in one pass per row
        att = kernels.causal_softmax_forward(s, scale)  # (..., T, S)
    else:
        s *= scale
        att = kernels.softmax_forward(s)  # (..., T, S)
    return (att if keep is None else att * keep) @ v, att  # (..., T, Dv), (..., T, S)


def attention_backward(
    numpy: Fn, kernels: Kernels, dy: Any, q: Any, k: Any, v: Any, att: Any, scale: float,
    keep: Any = None,
) -> tuple[Any, Any, Any]:  # fmt: skip
    if not _floats(dy, q, k, v, att):
        return numpy(dy, q, k, v, att, scale, keep)
    dv = (att if keep is None else att * keep).swapaxes(-1, -2) @ dy  # (..., S, Dv)
    datt = dy @ v.swapaxes(-1, -2)  # (..., T, S)
    if keep is not None:
        datt *= keep  # through the dropout
    # ds = scale att (datt - sum_j datt_j att_j): through the softmax and the scale
    T, S = att.shape[-2:]
    if S >= T and att.shape == datt.shape:
        ds = kernels.causal_softmax_backward(att, datt, scale)  # masked entries have att = 0
    else:
        ds = (datt - (datt * att).sum(axis=-1, keepdims=True)) * att * scale
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv  # dq (..., T, D), dk (..., S, D), dv


# ----------------------------------------------------------------------------- layer norm


def layer_norm_forward(
    numpy: Fn, k: Kernels, x: Any, w: Any, b: Any, eps: float
) -> tuple[Any, Any]:
    xp, C = backend.array_module(x), x.shape[-1] if x.ndim else 0
    w1 = w if w is not None else xp.ones(C, dtype=x.dtype)
    b0 = b if b is not None else xp.zeros(C, dtype=x.dtype)
    if x.ndim == 0 or not _floats(x, w1, b0):
        y, saved = numpy(x, w, b, eps)
        return y, (False, saved)
    # the kernel keeps the row means and 1 / std; its backward recomputes xhat from x
    y, mean, rstd = k.layer_norm_forward(x, w1, b0, eps)  # (..., C), (...), (...)
    return y, (True, (x, mean, rstd))


def layer_norm_backward(numpy: Fn, k: Kernels, dy: Any, saved: Any, w: Any) -> tuple[Any, Any, Any]:
    kernel_ran, state = saved
    if not kernel_ran:
        return numpy(dy, state, w)
    x, mean, rstd = state
    w1 = w if w is not None else backend.array_module(x).ones(x.shape[-1], dtype=x.dtype)
    return k.layer_norm_backward(dy.astype(x.dtype, copy=False), x, w1, mean, rstd)


# ----------------------------------------------------------------------------- group norm + SiLU


def group_norm_silu_forward(
    numpy: Fn, k: Kernels, x: Any, num_groups: int, w: Any, b: Any, eps: float
) -> tuple[Any, Any]:
    xp, C = backend.array_module(x), x.shape[1]
    w1 = w if w is not None else xp.ones(C, dtype=x.dtype)
    b0 = b if b is not None else xp.zeros(C, dtype=x.dtype)
    if not _floats(x, w1, b0):
        y, saved = numpy(x, num_groups, w, b, eps)
        return y, (False, saved)
    # the kernel keeps each (sample, group)'s mean and 1 / std; its backward recomputes
    # xhat, z and s(z) from x
    y, mean, rstd = k.group_norm_silu_forward(x, w1, b0, num_groups, eps)  # (N, C, ...), (N, G)
    return y, (True, (x, w1, b0, mean, rstd))


def group_norm_silu_backward(
    numpy: Fn, k: Kernels, dy: Any, saved: Any, w: Any
) -> tuple[Any, Any, Any]:
    kernel_ran, state = saved
    if not kernel_ran:
        return numpy(dy, state, w)
    x, w1, b0, mean, rstd = state
    return k.group_norm_silu_backward(dy.astype(x.dtype, copy=False), x, w1, b0, mean, rstd)


# ----------------------------------------------------------------------------- GELU


def gelu_forward(numpy: Fn, k: Kernels, x: Any, approximate: str) -> tuple[Any, Any]:
    if approximate not in ("none", "tanh") or not _floats(x):  # the NumPy one names the error
        y, saved = numpy(x, approximate)
        return y, (False, saved)
    return k.gelu_forward(x, approximate), (True, x)  # the backward recomputes from x


def gelu_backward(numpy: Fn, k: Kernels, saved: Any, dy: Any, approximate: str) -> Any:
    kernel_ran, state = saved
    if not kernel_ran:
        return numpy(state, dy, approximate)
    return k.gelu_backward(state, dy.astype(state.dtype, copy=False), approximate)


# ----------------------------------------------------------------------------- AdamW


def adamw_step(
    numpy: Fn, k: Kernels, p: Any, g: Any, m: Any, v: Any, tmp: Any, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, step: int,
) -> None:  # fmt: skip
    buffers = (p, g, m, v)
    if not _floats(*buffers) or not all(
        a.shape == p.shape and a.flags.c_contiguous for a in buffers
    ):  # the kernel updates raw memory in place
        numpy(p, g, m, v, tmp, lr, beta1, beta2, eps, weight_decay, step)
        return
    # m, v <- the moments; p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps), one pass
    k.adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
