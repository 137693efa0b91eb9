"""Argument checks shared by every kernel backend, so each one fails the same way.

A kernel reads raw memory: a wrong shape or dtype that NumPy would broadcast or
promote silently becomes an out-of-bounds read or a second compilation in Numba.
So every public function checks its arrays first and names the op, the argument
and both shapes (or dtypes) when something does not match.

`ddpm_scalars` and `adamw_scalars` also compute, once for every backend, the host-side
scalars of a DDPM step and of an AdamW step that its kernels read.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
APPROXIMATIONS = ("tanh", "none")


def check_float(op: str, **arrays: Any) -> np.dtype:
    """All arrays are float32 or all are float64; return that dtype.

    Runs on every kernel call, so the usual case costs a few comparisons.
    """
    dtype = None
    for name, a in arrays.items():
        if a.dtype != _F32 and a.dtype != _F64:
            raise TypeError(f"{op}: {name} must be float32 or float64, got {a.dtype}")
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            listed = ", ".join(f"{n} {v.dtype}" for n, v in arrays.items())
            raise TypeError(f"{op}: arrays must share one dtype, got {listed}")
    return dtype


def check_last_axis(op: str, x: Any) -> None:
    """The array has a last axis to reduce over."""
    if len(x.shape) == 0:
        raise ValueError(f"{op}: expected an array with at least one axis, got shape ()")


def check_same_shape(op: str, **arrays: Any) -> None:
    """Every array has the shape of the first one."""
    first, a0 = next(iter(arrays.items()))
    for name, a in arrays.items():
        if a.shape != a0.shape:
            raise ValueError(
                f"{op}: {name} has shape {tuple(a.shape)} but {first} has {tuple(a0.shape)}"
            )


def check_matmul(op: str, a: Any, b: Any) -> None:
    """a is (n, k) and b is (k, m)."""
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise ValueError(
            f"{op}: expected 2-D operands (n, k) @ (k, m), got {tuple(a.shape)} @ {tuple(b.shape)}"
        )
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"{op}: inner sizes differ: a is {tuple(a.shape)} and b is {tuple(b.shape)}"
        )


def check_matmul_backward(a: Any, b: Any, dc: Any) -> None:
    """a (n, k), b (k, m) of one float dtype, and dc (n, m), the gradient of a @ b."""
    check_matmul("matmul_backward", a, b)
    check_float("matmul_backward", a=a, b=b, dc=dc)
    if tuple(dc.shape) != (a.shape[0], b.shape[1]):
        raise ValueError(
            f"matmul_backward: dc has shape {tuple(dc.shape)} but a {tuple(a.shape)} @ "
            f"b {tuple(b.shape)} is {(a.shape[0], b.shape[1])}"
        )


def check_scores(op: str, scores: Any) -> tuple[int, int]:
    """Attention scores are (..., T, S) with S >= T keys; return (T, S)."""
    if len(scores.shape) < 2:
        raise ValueError(f"{op}: scores must be (..., T, S), got shape {tuple(scores.shape)}")
    t, s = tuple(scores.shape)[-2:]
    if s < t:
        raise ValueError(
            f"{op}: scores {tuple(scores.shape)} have S={s} keys for T={t} queries; "
            "the causal mask needs S >= T (the last query sees every key)"
        )
    return t, s


def check_layer_norm(op: str, x: Any, weight: Any, **rows: Any) -> None:
    """x is (..., C), weight (C,), and each per-row array (mean, rstd) has shape x.shape[:-1]."""
    check_last_axis(op, x)
    shape = tuple(x.shape)  # a tuple: simulated device arrays reject negative indices
    if tuple(weight.shape) != shape[-1:]:
        raise ValueError(
            f"{op}: weight has shape {tuple(weight.shape)} but x {shape} needs {shape[-1:]}"
        )
    for name, r in rows.items():
        if tuple(r.shape) != shape[:-1]:
            raise ValueError(
                f"{op}: {name} has shape {tuple(r.shape)} but x {shape} needs {shape[:-1]}"
            )


def check_approximate(op: str, approximate: str) -> None:
    if approximate not in APPROXIMATIONS:
        raise ValueError(
            f"{op}: approximate must be 'tanh' or 'none' (exact erf), got {approximate!r}"
        )


def check_ddpm(x_t: Any, eps: Any, z: Any) -> None:
    """x_t, eps and z (None at the last step) share one shape and one float dtype."""
    arrays = {"x_t": x_t, "eps": eps} | ({} if z is None else {"z": z})
    check_same_shape("ddpm_step", **arrays)
    check_float("ddpm_step", **arrays)


def ddpm_scalars(
    x_t: Any, eps: Any, z: Any, beta_t: float, alpha_t: float, abar_t: float, sigma_t: float
) -> tuple[Any, Any, Any]:
    """Check the arrays of a DDPM step and return its scalars in their dtype, in the order
    the kernels take them: (c_eps, c_x, sigma_t), where

        x_{t-1} = (x_t - c_eps eps) c_x + sigma_t z,
        c_eps = beta_t / sqrt(1 - abar_t),  c_x = 1 / sqrt(alpha_t).
    """
    check_ddpm(x_t, eps, z)
    dt = x_t.dtype.type
    return dt(beta_t / math.sqrt(1.0 - abar_t)), dt(1.0 / math.sqrt(alpha_t)), dt(sigma_t)


def adamw_scalars(
    p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float, beta2: float, eps: float,
    weight_decay: float, step: int,
) -> tuple[Any, ...]:  # fmt: skip
    """Check the buffers of an AdamW step (one shape, one float dtype) and return its
    scalars in that dtype, in the order the kernels take them:
    (decay, 1 - b1, b2, 1 - b2, step_size, eps_hat), where, with c2 = sqrt(1 - b2^t),

        p <- p decay - step_size m / (sqrt(v) + eps_hat),
        decay = 1 - lr wd,  step_size = lr c2 / (1 - b1^t),  eps_hat = eps c2.
    """
    check_same_shape("adamw_step", p=p, g=g, m=m, v=v)
    dt = check_float("adamw_step", p=p, g=g, m=m, v=v).type
    c2 = math.sqrt(1.0 - beta2**step)
    return (
        dt(1.0 - lr * weight_decay), dt(1.0 - beta1), dt(beta2), dt(1.0 - beta2),
        dt(lr * c2 / (1.0 - beta1**step)), dt(eps * c2),
    )  # fmt: skip


def check_group_norm(op: str, x: Any, weight: Any, num_groups: int, **groups: Any) -> None:
    """x is (N, C, ...) with C a multiple of num_groups, weight (C,), and each per-group
    array (mean, rstd) has shape (N, num_groups)."""
    shape = tuple(x.shape)
    if len(shape) < 2:
        raise ValueError(f"{op}: x must be (N, C, ...), got shape {shape}")
    if num_groups < 1 or shape[1] % num_groups:
        raise ValueError(f"{op}: {shape[1]} channels do not split into {num_groups} groups")
    if tuple(weight.shape) != shape[1:2]:
        raise ValueError(f"{op}: weight has shape {tuple(weight.shape)}, expected {shape[1:2]}")
    for name, r in groups.items():
        if tuple(r.shape) != (shape[0], num_groups):
            raise ValueError(
                f"{op}: {name} has shape {tuple(r.shape)}, expected {(shape[0], num_groups)}"
            )
