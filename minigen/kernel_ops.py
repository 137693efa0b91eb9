r"""The kernel-backed entries of the dispatch table, for the "numba" and "cupy" backends.

`backend.use("numba")` puts the functions below into `backend.kernels` with
`minigen_kernels.numba_cpu` as their kernels; `use("cupy")` does the same with
`minigen_kernels.cupy_kernels`. Each function has the signature of minigen's NumPy
function of the same name (functional.py, ops.py, diffusion/schedulers.py): the ops
that call the table do not know which one they got. Both kernel modules take and
return arrays of their backend's module (NumPy, or CuPy on the GPU), and the matrix
products here stay `@` (BLAS, or cuBLAS): the kernels fuse what BLAS does not.

What the kernels fuse, per op (the NumPy functions make one pass over memory per line):
    softmax, log-softmax  max, exp, sum, scale of a row in one pass (and the backward)
    attention             the causal mask, the scale and the softmax of the scores
    layer norm            mean, variance, normalisation and affine map of a row; the
                          backward fuses dx with the column sums dw, db
    GELU                  the whole elementwise formula, forward and backward
    DDPM noise step       x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)
                          + sigma_t z, one read of each input and one write
    AdamW                 the moments' and the parameters' updates, one pass over p, g, m, v

Where a kernel does not cover a case, the function hands it to minigen's NumPy
function (`backend.numpy_kernels`), which runs on either array module:
- a softmax over another axis than the last; dtypes other than float32 and float64,
  or operands of different dtypes (the kernels compute in the dtype of their inputs);
- attention with an explicit mask (the kernels know the causal mask only), or a
  causal mask with fewer keys than queries;
- a noise step whose coefficients are arrays (one timestep per example) or whose
  z is a nonzero number;
- an AdamW step on buffers that are not all C-contiguous of one float dtype and shape.
A forward that returns `saved` records which of the two ran, so its backward matches.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from minigen import backend

__all__ = ["install", *backend.KERNEL_NAMES]

_k: Any = None  # the kernel module of the selected backend (numba_cpu or cupy_kernels)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def install(kernel_module: ModuleType) -> dict[str, Any]:
    """Call `kernel_module`'s kernels from now on; returns the entries of the dispatch table."""
    global _k
    _k = kernel_module
    return {name: globals()[name] for name in backend.KERNEL_NAMES}


def _numpy(name: str) -> Any:
    """minigen's NumPy function `name`, the fallback."""
    return backend.numpy_kernels[name]


def _floats(*arrays: Any) -> bool:
    """All arrays are float32, or all float64: what the kernels compute on."""
    dtype = arrays[0].dtype
    return dtype in _FLOATS and all(a.dtype == dtype for a in arrays)


def _last(x: Any, axis: int) -> bool:
    """`axis` is the last axis of x (the axis the row kernels reduce)."""
    return x.ndim > 0 and axis in (-1, x.ndim - 1)


# ----------------------------------------------------------------------------- softmax


def softmax_forward(x: Any, axis: int = -1) -> Any:
    if not (_last(x, axis) and _floats(x)):
        return _numpy("softmax_forward")(x, axis)
    return _k.softmax_forward(x)


def softmax_backward(y: Any, dy: Any, axis: int = -1) -> Any:
    if not (_last(y, axis) and _floats(y, dy) and y.shape == dy.shape):
        return _numpy("softmax_backward")(y, dy, axis)
    return _k.softmax_backward(y, dy)


def log_softmax_forward(x: Any, axis: int = -1) -> Any:
    if not (_last(x, axis) and _floats(x)):
        return _numpy("log_softmax_forward")(x, axis)
    return _k.log_softmax_forward(x)


def log_softmax_backward(y: Any, dy: Any, axis: int = -1) -> Any:
    if not (_last(y, axis) and _floats(y, dy) and y.shape == dy.shape):
        return _numpy("log_softmax_backward")(y, dy, axis)
    return _k.log_softmax_backward(y, dy)


# ----------------------------------------------------------------------------- attention


def attention_forward(
    q: Any, k: Any, v: Any, scale: float, is_causal: bool, mask: Any = None, keep: Any = None
) -> tuple[Any, Any]:
    T, S = q.shape[-2], k.shape[-2]
    if mask is not None or not _floats(q, k, v) or (is_causal and S < T):
        return _numpy("attention_forward")(q, k, v, scale, is_causal, mask, keep)
    s = q @ k.swapaxes(-1, -2)  # (..., T, S) = Q K^T, by BLAS
    if is_causal:
        # att = softmax(scale s + M): scale, mask and softmax in one pass per row
        att = _k.causal_softmax_forward(s, scale)  # (..., T, S)
    else:
        s *= scale
        att = _k.softmax_forward(s)  # (..., T, S)
    return (att if keep is None else att * keep) @ v, att  # (..., T, Dv), (..., T, S)


def attention_backward(
    dy: Any, q: Any, k: Any, v: Any, att: Any, scale: float, keep: Any = None
) -> tuple[Any, Any, Any]:
    if not _floats(dy, q, k, v, att):
        return _numpy("attention_backward")(dy, q, k, v, att, scale, keep)
    dv = (att if keep is None else att * keep).swapaxes(-1, -2) @ dy  # (..., S, Dv)
    datt = dy @ v.swapaxes(-1, -2)  # (..., T, S)
    if keep is not None:
        datt *= keep  # through the dropout
    # ds = scale att (datt - sum_j datt_j att_j): through the softmax and the scale
    T, S = att.shape[-2:]
    if S >= T and att.shape == datt.shape:
        ds = _k.causal_softmax_backward(att, datt, scale)  # masked entries have att = 0
    else:
        ds = _numpy("softmax_backward")(att, datt, -1) * scale
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv  # dq (..., T, D), dk (..., S, D), dv


# ----------------------------------------------------------------------------- layer norm


def layer_norm_forward(x: Any, w: Any, b: Any, eps: float) -> tuple[Any, Any]:
    xp, C = backend.array_module(x), x.shape[-1] if x.ndim else 0
    w1 = w if w is not None else xp.ones(C, dtype=x.dtype)
    b0 = b if b is not None else xp.zeros(C, dtype=x.dtype)
    if x.ndim == 0 or not _floats(x, w1, b0):
        y, saved = _numpy("layer_norm_forward")(x, w, b, eps)
        return y, (False, saved)
    # the kernel keeps the row means and 1 / std; its backward recomputes xhat from x
    y, mean, rstd = _k.layer_norm_forward(x, w1, b0, eps)  # (..., C), (...), (...)
    return y, (True, (x, mean, rstd))


def layer_norm_backward(dy: Any, saved: Any, w: Any) -> tuple[Any, Any, Any]:
    kernel_ran, state = saved
    if not kernel_ran:
        return _numpy("layer_norm_backward")(dy, state, w)
    x, mean, rstd = state
    w1 = w if w is not None else backend.array_module(x).ones(x.shape[-1], dtype=x.dtype)
    return _k.layer_norm_backward(dy.astype(x.dtype, copy=False), x, w1, mean, rstd)


# ----------------------------------------------------------------------------- GELU


def gelu_forward(x: Any, approximate: str) -> tuple[Any, Any]:
    if approximate not in ("none", "tanh") or not _floats(x):  # the NumPy one names the error
        y, saved = _numpy("gelu_forward")(x, approximate)
        return y, (False, saved)
    return _k.gelu_forward(x, approximate), (True, x)  # the backward recomputes from x


def gelu_backward(saved: Any, dy: Any, approximate: str) -> Any:
    kernel_ran, state = saved
    if not kernel_ran:
        return _numpy("gelu_backward")(state, dy, approximate)
    return _k.gelu_backward(state, dy.astype(state.dtype, copy=False), approximate)


# ----------------------------------------------------------------------------- DDPM


def ddpm_noise_step(
    x_t: Any, eps: Any, z: Any, beta_t: Any, alpha_t: Any, abar_t: Any, sigma_t: Any
) -> Any:
    coefficients = (beta_t, alpha_t, abar_t, sigma_t)
    no_noise = isinstance(z, int | float) and z == 0  # the last step: z = 0
    arrays = (x_t, eps) if no_noise else (x_t, eps, z)
    if (
        not all(isinstance(c, int | float) for c in coefficients)  # np.float64 is a float
        or not all(hasattr(a, "dtype") and a.shape == x_t.shape for a in arrays)
        or not _floats(*arrays)
    ):
        return _numpy("ddpm_noise_step")(x_t, eps, z, beta_t, alpha_t, abar_t, sigma_t)
    # x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, one pass
    c = tuple(float(v) for v in coefficients)
    return _k.ddpm_step(x_t, eps, None if no_noise else z, *c)


# ----------------------------------------------------------------------------- AdamW


def adamw_step(
    p: Any, g: Any, m: Any, v: Any, tmp: Any, lr: float, beta1: float, beta2: float,
    eps: float, weight_decay: float, step: int,
) -> None:  # fmt: skip
    buffers = (p, g, m, v)
    if not _floats(*buffers) or not all(
        a.shape == p.shape and a.flags.c_contiguous for a in buffers
    ):  # the kernel updates raw memory in place
        _numpy("adamw_step")(p, g, m, v, tmp, lr, beta1, beta2, eps, weight_decay, step)
        return
    # m, v <- the moments; p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps), one pass
    _k.adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
