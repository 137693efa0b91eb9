r"""Layer norm, GELU and the DDPM noise step as numba.cuda kernels.

The second half of the "numba-cuda" backend (`numba_cuda.py` re-exports these
functions and explains the launch patterns). Read beside `reference.py`.

- DDPM step and GELU: element-wise, one thread per element (grid-stride loop). Each
  element is read once and written once: the kernel runs at memory bandwidth, where
  NumPy's version makes four or five round trips through memory.
- Layer norm forward: one block per row; two block sums (mean, then the variance
  of x - mean: the stable two-pass formula), then y is written.
- Layer norm backward: one block per row for dx (two block sums); dweight and dbias
  are sums over rows, so a second kernel gives each *column* one thread that walks
  down the rows (neighbouring threads read neighbouring columns: coalesced).
"""

from __future__ import annotations

import math
from typing import Any

from numba import cuda

from . import SECOND_HALF
from . import _checks as ck
from ._constants import GELU_CUBIC, INV_SQRT_2, INV_SQRT_2PI, SQRT_2_OVER_PI
from ._numba_cuda_common import MAX_THREADS, block_sum, device, host_or_device, threads_for

__all__ = list(SECOND_HALF)


def _flat_launch(n: int) -> tuple[int, int]:
    """(blocks, threads) covering n elements, one thread each."""
    threads = threads_for(n, MAX_THREADS)
    return (n + threads - 1) // threads, threads


# ----------------------------------------------------------------------------- DDPM


@cuda.jit
def _ddpm_step(x, eps, z, c_eps, c_x, sigma, has_z, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        # x_{t-1} = (x_t - c_eps eps) c_x + sigma z
        #   with c_eps = beta / sqrt(1 - abar), c_x = 1 / sqrt(alpha) (host scalars)
        v = (x[i] - c_eps * eps[i]) * c_x
        out[i] = v + sigma * z[i] if has_z else v


def ddpm_step(
    x_t: Any, eps: Any, z: Any, beta_t: float, alpha_t: float, abar_t: float, sigma_t: float
) -> Any:
    """x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, one pass."""
    # c_eps = beta_t / sqrt(1 - abar_t),  c_x = 1 / sqrt(alpha_t)   (host scalars)
    c_eps, c_x, sigma = ck.ddpm_scalars(x_t, eps, z, beta_t, alpha_t, abar_t, sigma_t)
    dx, host = device(x_t)
    d_eps, _ = device(eps)
    d_z = device(z)[0] if z is not None else d_eps  # not read when has_z is False
    out = cuda.device_array(x_t.size, dtype=x_t.dtype)  # (n,)
    if x_t.size:
        blocks, threads = _flat_launch(x_t.size)
        flat = (a.reshape(x_t.size) for a in (dx, d_eps, d_z))
        _ddpm_step[blocks, threads](*flat, c_eps, c_x, sigma, z is not None, out)
    return host_or_device(out.reshape(tuple(x_t.shape)), host)


# ----------------------------------------------------------------------------- layer norm


@cuda.jit
def _layer_norm_rows(x, w, b, eps, y, mean, rstd):
    buf = cuda.shared.array(MAX_THREADS, x.dtype)
    r, t, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    c = x.shape[1]
    one = x.dtype.type(1)  # typed constants: with a bare 1 or c, numba computes in float64
    inv_c = one / x.dtype.type(c)
    s = x.dtype.type(0)
    for j in range(t, c, nt):
        s += x[r, j]
    # \mu = (1/C) \sum_c x_c
    mu = block_sum(buf, s) * inv_c
    v = x.dtype.type(0)
    for j in range(t, c, nt):
        d = x[r, j] - mu
        v += d * d
    # rstd = 1 / sqrt((1/C) \sum_c (x_c - \mu)^2 + \epsilon)
    rs = one / math.sqrt(block_sum(buf, v) * inv_c + eps)
    for j in range(t, c, nt):
        # y = (x - \mu) rstd w + b
        y[r, j] = (x[r, j] - mu) * rs * w[j] + b[j]
    if t == 0:
        mean[r] = mu
        rstd[r] = rs


@cuda.jit
def _layer_norm_dx_rows(dy, x, w, mean, rstd, dx):
    buf = cuda.shared.array(MAX_THREADS, x.dtype)
    r, t, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    c = x.shape[1]
    inv_c = x.dtype.type(1) / x.dtype.type(c)
    mu, rs = mean[r], rstd[r]
    sg = x.dtype.type(0)
    sgx = x.dtype.type(0)
    for j in range(t, c, nt):
        g = dy[r, j] * w[j]  # g = dy w
        sg += g
        sgx += g * (x[r, j] - mu) * rs  # g \hat x
    sg = block_sum(buf, sg) * inv_c
    sgx = block_sum(buf, sgx) * inv_c
    for j in range(t, c, nt):
        # dx = rstd (g - mean(g) - \hat x mean(g \hat x))
        dx[r, j] = rs * (dy[r, j] * w[j] - sg - (x[r, j] - mu) * rs * sgx)


@cuda.jit
def _layer_norm_dw_columns(dy, x, mean, rstd, dw, db):
    j = cuda.grid(1)  # one thread per column
    if j < x.shape[1]:
        sw = x.dtype.type(0)
        sb = x.dtype.type(0)
        for r in range(x.shape[0]):
            # dw = \sum_rows dy \hat x ;  db = \sum_rows dy
            sw += dy[r, j] * (x[r, j] - mean[r]) * rstd[r]
            sb += dy[r, j]
        dw[j] = sw
        db[j] = sb


def layer_norm_forward(x: Any, weight: Any, bias: Any, eps: float = 1e-5) -> tuple[Any, Any, Any]:
    """(y, mean, rstd) of layer norm over the last axis, one block per row."""
    ck.check_layer_norm("layer_norm_forward", x, weight)
    ck.check_same_shape("layer_norm_forward", weight=weight, bias=bias)
    ck.check_float("layer_norm_forward", x=x, weight=weight, bias=bias)
    c = tuple(x.shape)[-1]  # a tuple: simulated device arrays reject negative indices
    rows = x.size // c if c else 0
    d_x, host = device(x)
    d_w, d_b = device(weight)[0], device(bias)[0]
    y = cuda.device_array((rows, c), dtype=x.dtype)  # (R, C)
    mean = cuda.device_array(rows, dtype=x.dtype)  # (R,)
    rstd = cuda.device_array(rows, dtype=x.dtype)  # (R,)
    if x.size:
        _layer_norm_rows[rows, threads_for(c)](
            d_x.reshape(rows, c), d_w, d_b, x.dtype.type(eps), y, mean, rstd
        )
    out = (
        y.reshape(tuple(x.shape)),
        mean.reshape(tuple(x.shape)[:-1]),
        rstd.reshape(tuple(x.shape)[:-1]),
    )
    return tuple(host_or_device(a, host) for a in out)


def layer_norm_backward(dy: Any, x: Any, weight: Any, mean: Any, rstd: Any) -> tuple[Any, Any, Any]:
    """(dx, dweight, dbias): a block per row for dx, then a thread per column for dw, db."""
    ck.check_layer_norm("layer_norm_backward", x, weight, mean=mean, rstd=rstd)
    ck.check_same_shape("layer_norm_backward", x=x, dy=dy)
    ck.check_float("layer_norm_backward", dy=dy, x=x, weight=weight, mean=mean, rstd=rstd)
    c = tuple(x.shape)[-1]  # a tuple: simulated device arrays reject negative indices
    rows = x.size // c if c else 0
    d_x, host = device(x)
    d_dy, d_w = device(dy)[0], device(weight)[0]
    d_mean, d_rstd = device(mean)[0], device(rstd)[0]
    dx = cuda.device_array((rows, c), dtype=x.dtype)  # (R, C)
    dw = cuda.device_array(c, dtype=x.dtype)  # (C,)
    db = cuda.device_array(c, dtype=x.dtype)  # (C,)
    if c:
        args = (d_dy.reshape(rows, c), d_x.reshape(rows, c))
        flat = (d_mean.reshape(rows), d_rstd.reshape(rows))
        if rows:
            _layer_norm_dx_rows[rows, threads_for(c)](*args, d_w, *flat, dx)
        blocks, threads = _flat_launch(c)
        _layer_norm_dw_columns[blocks, threads](*args, *flat, dw, db)
    return host_or_device(dx.reshape(tuple(x.shape)), host), *(
        host_or_device(a, host) for a in (dw, db)
    )


# ----------------------------------------------------------------------------- GELU


@cuda.jit
def _gelu(x, dy, out, use_tanh, backward):
    dt = x.dtype.type  # constants go through dt(): a bare 1 would make float32 code float64
    one = dt(1)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if use_tanh:
            # tanh u,  u = sqrt(2/pi) (x + 0.044715 x^3)
            th = math.tanh(dt(SQRT_2_OVER_PI) * (v + dt(GELU_CUBIC) * v * v * v))
            if backward:
                # gelu' = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 0.044715 x^2)
                du = dt(SQRT_2_OVER_PI) * (one + dt(3 * GELU_CUBIC) * v * v)
                out[i] = dy[i] * (dt(0.5) * (one + th) + dt(0.5) * v * (one - th * th) * du)
            else:
                # gelu(x) ~ 0.5 x (1 + tanh u)
                out[i] = dt(0.5) * v * (one + th)
        else:
            # \Phi(x) = 0.5 (1 + erf(x / sqrt 2))
            cdf = dt(0.5) * (one + math.erf(v * dt(INV_SQRT_2)))
            if backward:
                # gelu' = \Phi(x) + x \phi(x),  \phi(x) = exp(-x^2/2) / sqrt(2 pi)
                out[i] = dy[i] * (cdf + v * math.exp(dt(-0.5) * v * v) * dt(INV_SQRT_2PI))
            else:
                # gelu(x) = x \Phi(x)
                out[i] = v * cdf


def _gelu_launch(op: str, x: Any, dy: Any, approximate: str, backward: bool) -> Any:
    ck.check_approximate(op, approximate)
    ck.check_same_shape(op, x=x, dy=dy)
    ck.check_float(op, x=x, dy=dy)
    d_x, host = device(x)
    d_dy = device(dy)[0] if backward else d_x
    out = cuda.device_array(x.size, dtype=x.dtype)  # (n,)
    if x.size:
        blocks, threads = _flat_launch(x.size)
        flat_x, flat_dy = d_x.reshape(x.size), d_dy.reshape(x.size)
        _gelu[blocks, threads](flat_x, flat_dy, out, approximate == "tanh", backward)
    return host_or_device(out.reshape(tuple(x.shape)), host)


def gelu_forward(x: Any, approximate: str = "tanh") -> Any:
    """gelu(x), "tanh" approximation or exact ("none", erf); one thread per element."""
    return _gelu_launch("gelu_forward", x, x, approximate, backward=False)


def gelu_backward(x: Any, dy: Any, approximate: str = "tanh") -> Any:
    """dx = dy * gelu'(x); one thread per element."""
    return _gelu_launch("gelu_backward", x, dy, approximate, backward=True)


# ----------------------------------------------------------------------------- AdamW


@cuda.jit
def _adamw(p, g, m, v, decay, one_minus_b1, b2, one_minus_b2, step_size, eps_hat):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = g[i]
        mi = m[i] + one_minus_b1 * (gi - m[i])  # m <- b1 m + (1 - b1) g
        vi = b2 * v[i] + one_minus_b2 * (gi * gi)  # v <- b2 v + (1 - b2) g^2
        m[i] = mi
        v[i] = vi
        # p <- p (1 - lr wd) - lr sqrt(1 - b2^t)/(1 - b1^t) m / (sqrt(v) + eps sqrt(1 - b2^t))
        p[i] = p[i] * decay - step_size * (mi / (math.sqrt(vi) + eps_hat))


def adamw_step(
    p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float, beta2: float, eps: float,
    weight_decay: float, step: int,
) -> None:  # fmt: skip
    """One AdamW update of p, m, v in place, one thread per element. Host (NumPy) buffers
    are copied to the device and back: in a training loop they would live on the GPU."""
    scalars = ck.adamw_scalars(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
    on_device = [device(a) for a in (p, g, m, v)]  # [(device array, was it on the host)]
    if p.size:
        blocks, threads = _flat_launch(p.size)
        flat = (d.reshape(p.size) for d, _ in on_device)
        _adamw[blocks, threads](*flat, *scalars)
    for (d, host), a in zip(on_device, (p, g, m, v), strict=True):
        if host and a is not g:
            d.copy_to_host(a)  # the update lands in the caller's arrays
