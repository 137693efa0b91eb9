r"""Layer norm, GELU and the DDPM noise step as fused Numba CPU kernels.

The second half of the "numba-cpu" backend (`numba_cpu.py` re-exports these
functions); the compilation choices are explained there. Read beside `reference.py`.

- DDPM step: NumPy evaluates (x - c eps) / sqrt(alpha) + sigma z in five passes with
  four temporaries of the image's size; the kernel reads x, eps, z once and writes
  x_{t-1} once. The scalars c = beta / sqrt(1 - abar) and 1 / sqrt(alpha) are
  computed once, on the host.
- Layer norm: per row, one sweep for the mean, one for the variance (the two-pass
  formula: stable, unlike E[x^2] - E[x]^2), one to write y; the row stays in cache.
  The backward fuses dx with the column sums dweight and dbias: each thread owns a
  chunk of rows and its own partial sums, added up at the end (no races).
- GELU: the tanh form uses 0.5 (1 + tanh u) = sigmoid(2u) = 1 / (1 + exp(-2u)),
  computed from exp(-|2u|) <= 1 so it never overflows, and vectorised with
  `fast_exp`. The exact form calls `math.erf` per element (not vectorised).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import SECOND_HALF
from . import _checks as ck
from ._constants import GELU_CUBIC, INV_SQRT_2, INV_SQRT_2PI, SQRT_2_OVER_PI
from ._numba_cpu_common import fast_exp, use_threads

__all__ = list(SECOND_HALF)

_FAST = {"reassoc", "contract"}  # vectorised sums; no assumptions about inf or NaN
ROWS_PER_CHUNK = 64  # layer-norm backward: rows per partial sum of dweight, dbias


# ----------------------------------------------------------------------------- DDPM


@njit(parallel=True, cache=True, error_model="numpy")
def _ddpm_step(x, eps, z, c_eps, c_x, sigma, has_z, out, threads):
    # x_{t-1} = (x_t - c_eps eps) c_x + sigma z  (or without the noise at the last step);
    # the branch on has_z sits outside the loops, so each loop body is branch-free
    n = x.size
    if threads:  # flat arrays: each core takes a contiguous range
        if has_z:
            for i in prange(n):
                out[i] = (x[i] - c_eps * eps[i]) * c_x + sigma * z[i]
        else:
            for i in prange(n):
                out[i] = (x[i] - c_eps * eps[i]) * c_x
    elif has_z:
        for i in range(n):
            out[i] = (x[i] - c_eps * eps[i]) * c_x + sigma * z[i]
    else:
        for i in range(n):
            out[i] = (x[i] - c_eps * eps[i]) * c_x


# The signature of ddpm_step (and of every kernel) is written again in each backend on
# purpose: the contract of minigen_kernels.KERNELS, checked by tests/test_kernels_api.py.
def ddpm_step(
    x_t: np.ndarray,
    eps: np.ndarray,
    z: np.ndarray | None,
    beta_t: float,
    alpha_t: float,
    abar_t: float,
    sigma_t: float,
) -> np.ndarray:
    """x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, fused."""
    # c_eps = \beta_t / sqrt(1 - \bar\alpha_t),  c_x = 1 / sqrt(\alpha_t)   (host scalars)
    c_eps, c_x, sigma = ck.ddpm_scalars(x_t, eps, z, beta_t, alpha_t, abar_t, sigma_t)
    out = np.empty(x_t.size, dtype=x_t.dtype)  # (n,)
    flat_eps = eps.ravel()  # C-ordered 1-D: a view when already contiguous
    flat_z = flat_eps if z is None else z.ravel()  # not read without noise
    threads = use_threads(out.size)
    _ddpm_step(x_t.ravel(), flat_eps, flat_z, c_eps, c_x, sigma, z is not None, out, threads)
    return out.reshape(x_t.shape)


# ----------------------------------------------------------------------------- layer norm


@njit(inline="always", fastmath=_FAST, error_model="numpy")
def _layer_norm_row(x, w, b, eps, y, r, mean, rstd):  # row r of x, y: (C,)
    c = x.shape[0]
    one = x.dtype.type(1)  # typed constants: with a bare 1 or c, numba computes in float64
    inv_c = one / x.dtype.type(c)
    # \mu = (1/C) \sum_c x_c
    s = x.dtype.type(0)
    for j in range(c):
        s += x[j]
    mu = s * inv_c
    # \sigma^2 = (1/C) \sum_c (x_c - \mu)^2   (second sweep over the cached row)
    v = x.dtype.type(0)
    for j in range(c):
        d = x[j] - mu
        v += d * d
    # rstd = 1 / sqrt(\sigma^2 + \epsilon)
    rs = one / math.sqrt(v * inv_c + eps)
    # y = (x - \mu) rstd w + b
    for j in range(c):
        y[j] = (x[j] - mu) * rs * w[j] + b[j]
    mean[r] = mu
    rstd[r] = rs


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _layer_norm_rows(x, w, b, eps, y, mean, rstd, threads):
    if threads:
        for r in prange(x.shape[0]):
            _layer_norm_row(x[r], w, b, eps, y[r], r, mean, rstd)
    else:
        for r in range(x.shape[0]):
            _layer_norm_row(x[r], w, b, eps, y[r], r, mean, rstd)


@njit(inline="always", fastmath=_FAST, error_model="numpy")
def _layer_norm_backward_chunk(dy, x, w, mean, rstd, dx, dw_k, db_k, r0, r1):
    c = x.shape[1]
    inv_c = x.dtype.type(1) / x.dtype.type(c)
    for r in range(r0, r1):
        mu, rs = mean[r], rstd[r]
        xr, dyr, dxr = x[r], dy[r], dx[r]  # this row, (C,)
        # with g = dy w and \hat x = (x - \mu) rstd: the two row means
        sg = x.dtype.type(0)
        sgx = x.dtype.type(0)
        for j in range(c):
            g = dyr[j] * w[j]
            sg += g
            sgx += g * (xr[j] - mu) * rs
        sg *= inv_c
        sgx *= inv_c
        for j in range(c):
            xhat = (xr[j] - mu) * rs
            # dx = rstd (g - mean(g) - \hat x mean(g \hat x))
            dxr[j] = rs * (dyr[j] * w[j] - sg - xhat * sgx)
            # this chunk's share of dw = \sum_rows dy \hat x and db = \sum_rows dy
            dw_k[j] += dyr[j] * xhat
            db_k[j] += dyr[j]


@njit(parallel=True, fastmath=_FAST, cache=True, error_model="numpy")
def _layer_norm_backward_rows(dy, x, w, mean, rstd, dx, dw_part, db_part, threads):
    n_rows = x.shape[0]
    if threads:
        for k in prange(dw_part.shape[0]):  # chunks of rows, each with its own partial sums
            r0 = k * ROWS_PER_CHUNK
            r1 = min(n_rows, r0 + ROWS_PER_CHUNK)
            _layer_norm_backward_chunk(dy, x, w, mean, rstd, dx, dw_part[k], db_part[k], r0, r1)
    else:
        for k in range(dw_part.shape[0]):
            r0 = k * ROWS_PER_CHUNK
            r1 = min(n_rows, r0 + ROWS_PER_CHUNK)
            _layer_norm_backward_chunk(dy, x, w, mean, rstd, dx, dw_part[k], db_part[k], r0, r1)


def layer_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, mean, rstd) of layer norm over the last axis, one fused sweep per row."""
    ck.check_layer_norm("layer_norm_forward", x, weight)
    ck.check_same_shape("layer_norm_forward", weight=weight, bias=bias)
    ck.check_float("layer_norm_forward", x=x, weight=weight, bias=bias)
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])  # (R, C)
    y = np.empty_like(x2)  # (R, C)
    mean = np.empty(x2.shape[0], dtype=x.dtype)  # (R,)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)  # (R,)
    if x.size:
        w, b = np.ascontiguousarray(weight), np.ascontiguousarray(bias)
        _layer_norm_rows(x2, w, b, x.dtype.type(eps), y, mean, rstd, use_threads(x2.size))
    return y.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


def layer_norm_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, rstd: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dweight, dbias) of layer norm; dx and the column sums in one sweep."""
    ck.check_layer_norm("layer_norm_backward", x, weight, mean=mean, rstd=rstd)
    ck.check_same_shape("layer_norm_backward", x=x, dy=dy)
    ck.check_float("layer_norm_backward", dy=dy, x=x, weight=weight, mean=mean, rstd=rstd)
    c = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, c)  # (R, C)
    chunks = (x2.shape[0] + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    dx = np.empty_like(x2)  # (R, C)
    dw_part = np.zeros((chunks, c), dtype=x.dtype)  # (chunks, C)
    db_part = np.zeros((chunks, c), dtype=x.dtype)  # (chunks, C)
    if x.size:
        _layer_norm_backward_rows(
            np.ascontiguousarray(dy).reshape(-1, c),
            x2,
            np.ascontiguousarray(weight),
            np.ascontiguousarray(mean).reshape(-1),
            np.ascontiguousarray(rstd).reshape(-1),
            dx,
            dw_part,
            db_part,
            use_threads(x2.size),
        )
    return dx.reshape(x.shape), dw_part.sum(axis=0), db_part.sum(axis=0)


# ----------------------------------------------------------------------------- GELU


@njit(inline="always", error_model="numpy")
def _gelu_tanh_one(v, g, backward):  # one element x = v (and the gradient g of gelu(x))
    dt = type(v)
    # P = 0.5 (1 + tanh u) = sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)
    two_u = dt(2 * SQRT_2_OVER_PI) * (v + dt(GELU_CUBIC) * v * v * v)
    e = fast_exp(-abs(two_u))  # exp(-|2u|) in (0, 1]
    big, small = dt(1) / (dt(1) + e), e / (dt(1) + e)  # they add up to 1
    p = big if two_u >= 0 else small
    if backward:
        q = small if two_u >= 0 else big  # q = 1 - P, without the cancellation
        # gelu' = P + x dP/du du/dx = P + x 2 P (1 - P) sqrt(2/pi) (1 + 3 0.044715 x^2)
        du = dt(SQRT_2_OVER_PI) * (dt(1) + dt(3 * GELU_CUBIC) * v * v)
        return g * (p + v * dt(2) * p * q * du)
    # gelu(x) ~ x P
    return v * p


@njit(inline="always", error_model="numpy")
def _gelu_erf_one(v, g, backward):
    dt = type(v)
    # \Phi(x) = 0.5 (1 + erf(x / sqrt 2))   (math.erf: a C library call per element)
    cdf = dt(0.5) * (dt(1) + math.erf(v * dt(INV_SQRT_2)))
    if backward:
        # gelu' = \Phi(x) + x \phi(x),  \phi(x) = exp(-x^2/2) / sqrt(2 pi)
        return g * (cdf + v * fast_exp(dt(-0.5) * v * v) * dt(INV_SQRT_2PI))
    # gelu(x) = x \Phi(x)
    return v * cdf


# One driver per form: a loop whose body could call erf (a C function) is not
# vectorised, even on iterations that take the tanh branch.
@njit(parallel=True, cache=True, error_model="numpy")
def _gelu_tanh(x, dy, out, backward, threads):
    if threads:
        for i in prange(x.size):
            out[i] = _gelu_tanh_one(x[i], dy[i], backward)
    else:
        for i in range(x.size):
            out[i] = _gelu_tanh_one(x[i], dy[i], backward)


@njit(parallel=True, cache=True, error_model="numpy")
def _gelu_erf(x, dy, out, backward, threads):
    if threads:
        for i in prange(x.size):
            out[i] = _gelu_erf_one(x[i], dy[i], backward)
    else:
        for i in range(x.size):
            out[i] = _gelu_erf_one(x[i], dy[i], backward)


def gelu_forward(x: np.ndarray, approximate: str = "tanh") -> np.ndarray:
    """gelu(x), "tanh" approximation or exact ("none", erf), one pass."""
    ck.check_approximate("gelu_forward", approximate)
    ck.check_float("gelu_forward", x=x)
    flat = x.ravel()  # C-ordered 1-D: a view when already contiguous
    out = np.empty_like(flat)
    kernel = _gelu_tanh if approximate == "tanh" else _gelu_erf
    kernel(flat, flat, out, False, use_threads(out.size))
    return out.reshape(x.shape)


def gelu_backward(x: np.ndarray, dy: np.ndarray, approximate: str = "tanh") -> np.ndarray:
    """dx = dy * gelu'(x), one pass."""
    ck.check_approximate("gelu_backward", approximate)
    ck.check_same_shape("gelu_backward", x=x, dy=dy)
    ck.check_float("gelu_backward", x=x, dy=dy)
    flat = x.ravel()  # C-ordered 1-D: a view when already contiguous
    out = np.empty_like(flat)
    flat_dy = dy.ravel()
    kernel = _gelu_tanh if approximate == "tanh" else _gelu_erf
    kernel(flat, flat_dy, out, True, use_threads(out.size))
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------- AdamW


@njit(parallel=True, fastmath={"contract"}, cache=True, error_model="numpy")
def _adamw(p, g, m, v, decay, one_minus_b1, b2, one_minus_b2, step_size, eps_hat, threads):
    # NumPy's AdamW reads and writes the buffers about ten times (one pass per line of
    # minigen.optim.adamw_step); here each element is read once and written once. The same
    # loop body stands in numba_cuda_norm.py and cuda_source.py: one per backend, the point
    # of kernels/ (and twice here: prange on the cores, range on the calling one)
    if threads:
        for i in prange(p.size):
            gi = g[i]
            mi = m[i] + one_minus_b1 * (gi - m[i])  # m <- b1 m + (1 - b1) g
            vi = b2 * v[i] + one_minus_b2 * (gi * gi)  # v <- b2 v + (1 - b2) g^2
            m[i] = mi
            v[i] = vi
            # p <- p (1 - lr wd) - lr sqrt(1 - b2^t)/(1 - b1^t) m / (sqrt(v) + eps sqrt(1 - b2^t))
            p[i] = p[i] * decay - step_size * (mi / (math.sqrt(vi) + eps_hat))
    else:
        for i in range(p.size):
            gi = g[i]
            mi = m[i] + one_minus_b1 * (gi - m[i])
            vi = b2 * v[i] + one_minus_b2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] = p[i] * decay - step_size * (mi / (math.sqrt(vi) + eps_hat))


def adamw_step(
    p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, step: int,
) -> None:  # fmt: skip
    """One AdamW update of p, m, v in place (C-contiguous buffers), one pass."""
    scalars = ck.adamw_scalars(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
    for name, a in (("p", p), ("m", m), ("v", v)):
        if not a.flags.c_contiguous:
            raise ValueError(f"adamw_step: {name} must be C-contiguous (it is updated in place)")
    flat = [a.reshape(-1) for a in (p, np.ascontiguousarray(g), m, v)]  # views: (n,)
    _adamw(*flat, *scalars, use_threads(p.size))
