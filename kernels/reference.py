r"""NumPy references for the hot loops: the readable math, one array-wide pass per line.

Every kernel in `numba_cpu.py`, `numba_cuda.py` and `cupy_kernels.py` computes exactly
what a function here computes, and `tests/test_kernels_parity.py` holds them to it.
Read this file first: each line below is one *pass* over memory (NumPy reads its
inputs and writes a fresh temporary), which is what the kernels fuse away.

    matmul             C_ij = \sum_k A_ik B_kj
    softmax            y_i = exp(x_i - m) / \sum_j exp(x_j - m),     m = max_j x_j
    softmax backward   dx = y * (dy - \sum_j dy_j y_j)
    log-softmax        y_i = x_i - m - log \sum_j exp(x_j - m)
    its backward       dx = dy - exp(y) * \sum_j dy_j
    causal attention   y = softmax(scale * s + mask),  mask_ij = 0 if j <= i + (S - T) else -inf
    DDPM step          x_{t-1} = (x_t - \beta_t / sqrt(1 - \bar\alpha_t) eps) / sqrt(\alpha_t)
                                 + \sigma_t z
    layer norm         y = (x - \mu) / sqrt(\sigma^2 + \epsilon) * w + b
    GELU               gelu(x) = x \Phi(x)  (exact, erf)  or its tanh approximation

Subtracting the row maximum m before exp changes nothing mathematically
(softmax(x) = softmax(x - c) for any c) but keeps exp from overflowing: every
exponent is <= 0, so every exp is in (0, 1] and the largest is exactly 1.

All functions take float32 or float64 arrays and return arrays of the same dtype;
reductions run over the last axis, every leading axis is a batch axis.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from . import _checks as ck

__all__ = [
    "matmul_naive",
    "matmul_tiled",
    "matmul_backward",
    "softmax_forward",
    "softmax_backward",
    "log_softmax_forward",
    "log_softmax_backward",
    "causal_softmax_forward",
    "causal_softmax_backward",
    "ddpm_step",
    "layer_norm_forward",
    "layer_norm_backward",
    "gelu_forward",
    "gelu_backward",
]

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715  # the tanh approximation's cubic coefficient


# ----------------------------------------------------------------------------- matmul


def matmul_naive(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C = A B by its definition, every product a_ik b_kj at once.

    Builds the whole (n, k, m) cube of products, then sums it over k: memory grows
    as n*k*m, which is what a naive kernel avoids by summing as it goes.
    Models use BLAS (`a @ b`) instead; this is the definition the kernels follow.
    """
    ck.check_matmul("matmul_naive", a, b)
    ck.check_float("matmul_naive", a=a, b=b)
    # C_ij = \sum_k A_ik B_kj
    return (a[:, :, None] * b[None, :, :]).sum(axis=1)  # (n, k, 1) * (1, k, m) -> (n, m)


TILE = 32  # the block size of `matmul_tiled`


def matmul_tiled(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C = A B one (tile x tile) block at a time: C_IJ = sum_K A_IK B_KJ.

    The same sum as `matmul_naive`, grouped by blocks. A kernel that works block by
    block reuses each loaded block of A and B `tile` times from fast memory (cache
    or GPU shared memory) instead of reloading it from slow memory for every output.
    """
    tile = TILE
    ck.check_matmul("matmul_tiled", a, b)
    ck.check_float("matmul_tiled", a=a, b=b)
    (n, k), m = a.shape, b.shape[1]
    c = np.zeros((n, m), dtype=a.dtype)  # (n, m)
    for i in range(0, n, tile):
        for j in range(0, m, tile):
            for p in range(0, k, tile):
                # C_IJ += A_IP B_PJ  (the blocks at the edges may be smaller than tile)
                c[i : i + tile, j : j + tile] += (
                    a[i : i + tile, p : p + tile] @ b[p : p + tile, j : j + tile]
                )
    return c


def matmul_backward(a: np.ndarray, b: np.ndarray, dc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of C = A B: dA = dC B^T and dB = A^T dC."""
    ck.check_matmul("matmul_backward", a, b)
    ck.check_float("matmul_backward", a=a, b=b, dc=dc)
    if tuple(dc.shape) != (a.shape[0], b.shape[1]):
        raise ValueError(
            f"matmul_backward: dc has shape {tuple(dc.shape)} but a {tuple(a.shape)} @ "
            f"b {tuple(b.shape)} is {(a.shape[0], b.shape[1])}"
        )
    # dA = dC B^T ;  dB = A^T dC
    return dc @ b.T, a.T @ dc  # (n, k), (k, m)


# ----------------------------------------------------------------------------- softmax


def softmax_forward(x: np.ndarray) -> np.ndarray:
    """softmax over the last axis, stabilised by the row maximum (five passes)."""
    ck.check_last_axis("softmax_forward", x)
    ck.check_float("softmax_forward", x=x)
    # m = max_j x_j
    m = x.max(axis=-1, keepdims=True)  # (..., 1)
    # e_i = exp(x_i - m)
    e = np.exp(x - m)  # (..., N)
    # y_i = e_i / \sum_j e_j
    return e / e.sum(axis=-1, keepdims=True)  # (..., N)


def softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = J^T dy with J = diag(y) - y y^T, i.e. dx = y * (dy - <dy, y>)."""
    ck.check_same_shape("softmax_backward", y=y, dy=dy)
    ck.check_float("softmax_backward", y=y, dy=dy)
    # dx_i = y_i (dy_i - \sum_j dy_j y_j)
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))  # (..., N)


def log_softmax_forward(x: np.ndarray) -> np.ndarray:
    """log softmax(x) = x - m - log sum exp(x - m), without forming softmax(x)."""
    ck.check_last_axis("log_softmax_forward", x)
    ck.check_float("log_softmax_forward", x=x)
    # z = x - max_j x_j
    z = x - x.max(axis=-1, keepdims=True)  # (..., N)
    # y_i = z_i - log \sum_j exp(z_j)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # (..., N)


def log_softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = dy - softmax(x) * sum(dy), where softmax(x) = exp(y)."""
    ck.check_same_shape("log_softmax_backward", y=y, dy=dy)
    ck.check_float("log_softmax_backward", y=y, dy=dy)
    # dx_i = dy_i - exp(y_i) \sum_j dy_j
    return dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)  # (..., N)


def causal_mask(t: int, s: int) -> np.ndarray:
    """(T, S) booleans: query i sees key j when j <= i + (S - T).

    With S == T this is the lower triangle; with S > T keys (a cache of S - T
    earlier positions) the last query sees all S keys.
    """
    i = np.arange(t)[:, None]  # (T, 1)
    j = np.arange(s)[None, :]  # (1, S)
    return j <= i + (s - t)  # (T, S)


def causal_softmax_forward(scores: np.ndarray, scale: float) -> np.ndarray:
    """softmax over keys of scale * scores, keys after each query masked to -inf."""
    t, s = ck.check_scores("causal_softmax_forward", scores)
    ck.check_float("causal_softmax_forward", scores=scores)
    # a_ij = scale * s_ij if j <= i + (S - T) else -inf
    a = np.where(causal_mask(t, s), scores * scores.dtype.type(scale), -np.inf)  # (..., T, S)
    return softmax_forward(a.astype(scores.dtype, copy=False))  # (..., T, S)


def causal_softmax_backward(y: np.ndarray, dy: np.ndarray, scale: float) -> np.ndarray:
    """d scores = scale * softmax_backward(y, dy); masked entries have y = 0, so get 0."""
    ck.check_scores("causal_softmax_backward", y)
    # ds = scale * y * (dy - \sum_j dy_j y_j)
    return softmax_backward(y, dy) * y.dtype.type(scale)  # (..., T, S)


# ----------------------------------------------------------------------------- DDPM


def ddpm_step(
    x_t: np.ndarray,
    eps: np.ndarray,
    z: np.ndarray | None,
    beta_t: float,
    alpha_t: float,
    abar_t: float,
    sigma_t: float,
) -> np.ndarray:
    """One reverse step of DDPM sampling, given the network's noise estimate eps.

    z is fresh standard normal noise (None at the last step, where sigma_t = 0).
    """
    arrays = {"x_t": x_t, "eps": eps} | ({} if z is None else {"z": z})
    ck.check_same_shape("ddpm_step", **arrays)
    ck.check_float("ddpm_step", **arrays)
    dt = x_t.dtype.type
    # x_{t-1} = (x_t - \beta_t / sqrt(1 - \bar\alpha_t) eps) / sqrt(\alpha_t) + \sigma_t z
    mean = (x_t - dt(beta_t / math.sqrt(1.0 - abar_t)) * eps) / dt(math.sqrt(alpha_t))
    return mean if z is None else mean + dt(sigma_t) * z


# ----------------------------------------------------------------------------- layer norm


def layer_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = (x - mean) * rstd * weight + bias over the last axis; returns (y, mean, rstd).

    mean and rstd = 1 / sqrt(var + eps) have shape x.shape[:-1]; the backward pass
    reuses them instead of recomputing them.
    """
    ck.check_layer_norm("layer_norm_forward", x, weight)
    ck.check_same_shape("layer_norm_forward", weight=weight, bias=bias)
    ck.check_float("layer_norm_forward", x=x, weight=weight, bias=bias)
    # \mu = mean_c x_c
    mean = np.asarray(x.mean(axis=-1))  # (...)   (an array even when x is 1-D)
    xc = x - mean[..., None]  # (..., C)
    # \sigma^2 = mean_c (x_c - \mu)^2   (the biased variance, as in the book and PyTorch)
    var = (xc * xc).mean(axis=-1)  # (...)
    # rstd = 1 / sqrt(\sigma^2 + \epsilon)
    rstd = np.asarray(1.0 / np.sqrt(var + x.dtype.type(eps)))  # (...)
    # y = \hat x w + b,  \hat x = (x - \mu) rstd
    y = xc * rstd[..., None] * weight + bias  # (..., C)
    return y, mean, rstd


def layer_norm_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, rstd: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (dx, dweight, dbias) of layer norm, given the forward's mean and rstd.

    With g = dy * w:  dx = rstd * (g - mean(g) - \\hat x * mean(g \\hat x)),
    dweight = sum over rows of dy \\hat x,  dbias = sum over rows of dy.
    """
    ck.check_layer_norm("layer_norm_backward", x, weight, mean=mean, rstd=rstd)
    ck.check_same_shape("layer_norm_backward", x=x, dy=dy)
    ck.check_float("layer_norm_backward", dy=dy, x=x, weight=weight, mean=mean, rstd=rstd)
    xhat = (x - mean[..., None]) * rstd[..., None]  # (..., C)
    g = dy * weight  # (..., C)
    # dx = rstd (g - mean_c g - \hat x mean_c(g \hat x))
    dx = rstd[..., None] * (
        g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)
    )  # (..., C)
    rows = tuple(range(x.ndim - 1))
    # dw = \sum_rows dy \hat x ;  db = \sum_rows dy
    return dx, (dy * xhat).sum(axis=rows), dy.sum(axis=rows)


# ----------------------------------------------------------------------------- GELU


def gelu_forward(x: np.ndarray, approximate: str = "tanh") -> np.ndarray:
    """gelu(x) = x Phi(x); "tanh": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    ck.check_approximate("gelu_forward", approximate)
    ck.check_float("gelu_forward", x=x)
    dt = x.dtype.type
    if approximate == "tanh":
        # u = sqrt(2/pi) (x + 0.044715 x^3)   (x * x * x: float32 x**3 calls powf, 100x slower)
        u = dt(SQRT_2_OVER_PI) * (x + dt(GELU_CUBIC) * x * x * x)
        # gelu(x) ~ 0.5 x (1 + tanh u)
        return dt(0.5) * x * (1 + np.tanh(u))
    # gelu(x) = x \Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
    return (dt(0.5) * x * (1 + erf(x * dt(1 / math.sqrt(2.0))))).astype(x.dtype, copy=False)


def gelu_backward(x: np.ndarray, dy: np.ndarray, approximate: str = "tanh") -> np.ndarray:
    """dx = dy * gelu'(x); the forward's input x is what the backward needs."""
    ck.check_approximate("gelu_backward", approximate)
    ck.check_same_shape("gelu_backward", x=x, dy=dy)
    ck.check_float("gelu_backward", x=x, dy=dy)
    dt = x.dtype.type
    if approximate == "tanh":
        th = np.tanh(dt(SQRT_2_OVER_PI) * (x + dt(GELU_CUBIC) * x * x * x))
        # d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        du = dt(SQRT_2_OVER_PI) * (1 + dt(3 * GELU_CUBIC) * x * x)
        return dy * (dt(0.5) * (1 + th) + dt(0.5) * x * (1 - th * th) * du)
    # d/dx x \Phi(x) = \Phi(x) + x \phi(x),  \phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    cdf = dt(0.5) * (1 + erf(x * dt(1 / math.sqrt(2.0))))
    pdf = np.exp(dt(-0.5) * x * x) * dt(1 / math.sqrt(2 * math.pi))
    return (dy * (cdf + x * pdf)).astype(x.dtype, copy=False)
