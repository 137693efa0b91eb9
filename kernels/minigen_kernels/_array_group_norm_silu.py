r"""Group norm + SiLU for the two GPU backends, as array operations (no fused GPU kernel yet).

`numba_cuda.py` and `cupy_kernels.py` must define every function of `KERNELS`; for group
norm + SiLU they run the formulas below with their array module `xp` (NumPy on the host
for numba-cuda, CuPy on the GPU for cupy), one array-wide pass per line, under the
kernels' signatures. The fused kernel is the CPU one (numba_cpu_groupnorm.py); a GPU
kernel (one block per sample and group) is left to write and to measure.

    xhat = (x - \mu) rstd per sample and group,   z = \gamma xhat + \beta,   y = z s(z)
    dz = dy s (1 + z (1 - s)),  g = \gamma dz,  dx = rstd (g - mean(g) - xhat mean(g xhat))
"""

from __future__ import annotations

from typing import Any

from . import _checks as ck

__all__ = ["forward", "backward"]


def _parts(xp: Any, x: Any, weight: Any, bias: Any, mean: Any, rstd: Any) -> tuple:
    """(xhat, z, s) of the forward, from x and each (sample, group)'s mean and rstd."""
    N, C = x.shape[:2]
    G = mean.shape[1]
    chan = (1, C) + (1,) * (x.ndim - 2)
    xg = x.reshape(N, G, -1)  # (N, G, C/G * pixels)
    xhat = ((xg - mean[:, :, None]) * rstd[:, :, None]).reshape(x.shape)  # (N, C, ...)
    z = xhat * weight.reshape(chan) + bias.reshape(chan)  # (N, C, ...)
    s = 1 / (1 + xp.exp(-z))  # (N, C, ...)
    return xhat, z, s


def forward(xp: Any, x: Any, weight: Any, bias: Any, num_groups: int, eps: float) -> tuple:
    """(y, mean, rstd) of y = silu(group_norm(x))."""
    ck.check_group_norm("group_norm_silu_forward", x, weight, num_groups)
    ck.check_same_shape("group_norm_silu_forward", weight=weight, bias=bias)
    ck.check_float("group_norm_silu_forward", x=x, weight=weight, bias=bias)
    xg = x.reshape(x.shape[0], num_groups, -1)  # (N, G, C/G * pixels)
    mean = xg.mean(axis=-1)  # (N, G)
    rstd = 1 / xp.sqrt(((xg - mean[:, :, None]) ** 2).mean(axis=-1) + eps)  # (N, G)
    _, z, s = _parts(xp, x, weight, bias, mean, rstd)
    return z * s, mean, rstd


def backward(xp: Any, dy: Any, x: Any, weight: Any, bias: Any, mean: Any, rstd: Any) -> tuple:
    """(dx, dweight, dbias) from dy and the forward's mean and rstd."""
    G = mean.shape[1] if mean.ndim == 2 else 0
    ck.check_group_norm("group_norm_silu_backward", x, weight, G, mean=mean, rstd=rstd)
    ck.check_same_shape("group_norm_silu_backward", x=x, dy=dy)
    N, C = x.shape[:2]
    xhat, z, s = _parts(xp, x, weight, bias, mean, rstd)
    dz = dy * s * (1 + z * (1 - s))  # (N, C, ...)
    g = (dz * weight.reshape((1, C) + (1,) * (x.ndim - 2))).reshape(N, G, -1)
    xg = xhat.reshape(N, G, -1)  # (N, G, C/G * pixels)
    dx = g - g.mean(axis=-1, keepdims=True) - xg * (g * xg).mean(axis=-1, keepdims=True)
    dx = (dx * rstd[:, :, None]).reshape(x.shape)
    axes = (0, *range(2, x.ndim))
    return dx, (dz * xhat).sum(axis=axes), dz.sum(axis=axes)
