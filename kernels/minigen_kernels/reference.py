r"""NumPy references for the hot loops: the math the kernels must reproduce.

Every kernel in `numba_cpu.py`, `numba_cuda.py` and `cupy_kernels.py` computes exactly
what a function here computes, and `tests/test_kernels_parity.py` holds them to it.
Read this file first. Each computation exists once as NumPy: for the softmax family,
layer norm, GELU and the DDPM step, the functions below call minigen's own NumPy code
(`minigen.functional`, `minigen.ops`, `minigen.diffusion`: what `backend.use("numpy")`
runs) under the kernels' signatures; only the matmuls are written here, since minigen
itself calls BLAS (`a @ b`). In that NumPy code each line is one *pass* over memory
(NumPy reads its inputs and writes a fresh temporary), which is what the kernels fuse.

    matmul             C_ij = \sum_k A_ik B_kj
    softmax            y_i = exp(x_i - m) / \sum_j exp(x_j - m),     m = max_j x_j
    softmax backward   dx = y * (dy - \sum_j dy_j y_j)
    log-softmax        y_i = x_i - m - log \sum_j exp(x_j - m)
    its backward       dx = dy - exp(y) * \sum_j dy_j
    causal attention   y = softmax(scale * s + mask),  mask_ij = 0 if j <= i + (S - T) else -inf
    DDPM step          x_{t-1} = (x_t - \beta_t / sqrt(1 - \bar\alpha_t) eps) / sqrt(\alpha_t)
                                 + \sigma_t z
    layer norm         y = (x - \mu) / sqrt(\sigma^2 + \epsilon) * w + b
    group norm + SiLU  y = silu(z), z = (x - \mu_g) / sqrt(\sigma_g^2 + \epsilon) * w + b,
                       \mu_g, \sigma_g over each sample's group of channels and its pixels
    GELU               gelu(x) = x \Phi(x)  (exact, erf)  or its tanh approximation

Subtracting the row maximum m before exp changes nothing mathematically
(softmax(x) = softmax(x - c) for any c) but keeps exp from overflowing: every
exponent is <= 0, so every exp is in (0, 1] and the largest is exactly 1.

Deliberate differences between minigen's functions and the kernels' signatures,
bridged here (the math is the same; the memory traffic is not):
- minigen's softmaxes take an `axis`; the kernels reduce the last axis.
- Layer norm: minigen's forward keeps xhat = (x - mu) rstd for its backward (memory
  for one pass fewer); a kernel keeps the row means and rstd only and recomputes xhat
  in registers. `layer_norm_forward` adds the row means, `layer_norm_backward` rebuilds
  xhat from them.
- Group norm + SiLU: likewise, minigen keeps xhat, rstd, z and s(z); a kernel keeps
  each (sample, group)'s mean and rstd, (N, G), and recomputes the rest.
- GELU: minigen's backward reads the forward's Phi(x) (or sigmoid); a kernel
  recomputes it from x, so `gelu_backward` here reruns minigen's forward. minigen's
  default is the exact GELU ("none"), the kernels' the tanh form (GPT-2's).
- DDPM: minigen writes the book's Eq. 7.1, x_{t-1} = x_t + f(x_t, t) + sigma_t z; the
  kernels the simplified form above (the same value, up to rounding).

All functions take float32 or float64 arrays and return arrays of the same dtype;
reductions run over the last axis, every leading axis is a batch axis.
"""

from __future__ import annotations

import numpy as np

from minigen import functional as F
from minigen import ops
from minigen.diffusion import ddpm_noise_step
from minigen.functional import causal_mask
from minigen.normalize import group_norm_silu_backward as _gns_backward
from minigen.normalize import group_norm_silu_forward as _gns_forward
from minigen.optim import adamw_step as _adamw_step

from . import _checks as ck

__all__ = [
    "matmul_naive",
    "matmul_tiled",
    "matmul_backward",
    "softmax_forward",
    "softmax_backward",
    "log_softmax_forward",
    "log_softmax_backward",
    "causal_mask",
    "causal_softmax_forward",
    "causal_softmax_backward",
    "ddpm_step",
    "layer_norm_forward",
    "layer_norm_backward",
    "group_norm_silu_forward",
    "group_norm_silu_backward",
    "gelu_forward",
    "gelu_backward",
    "adamw_step",
]

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
    ck.check_matmul_backward(a, b, dc)
    # dA = dC B^T ;  dB = A^T dC
    return dc @ b.T, a.T @ dc  # (n, k), (k, m)


# ----------------------------------------------------------------------------- softmax
# softmax and log-softmax: the same checks around two formulas, kept as two pairs of
# functions so that each reads as the math it names (as in every backend)


def softmax_forward(x: np.ndarray) -> np.ndarray:
    """softmax over the last axis, stabilised by the row maximum (minigen's F.softmax_forward)."""
    ck.check_last_axis("softmax_forward", x)
    ck.check_float("softmax_forward", x=x)
    return F.softmax_forward(x, axis=-1)  # (..., N)


def softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = J^T dy with J = diag(y) - y y^T, i.e. dx = y * (dy - <dy, y>)."""
    ck.check_same_shape("softmax_backward", y=y, dy=dy)
    ck.check_float("softmax_backward", y=y, dy=dy)
    return F.softmax_backward(y, dy, axis=-1)  # (..., N)


def log_softmax_forward(x: np.ndarray) -> np.ndarray:
    """log softmax(x) = x - m - log sum exp(x - m), without forming softmax(x)."""
    ck.check_last_axis("log_softmax_forward", x)
    ck.check_float("log_softmax_forward", x=x)
    return F.log_softmax_forward(x, axis=-1)  # (..., N)


def log_softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = dy - softmax(x) * sum(dy), where softmax(x) = exp(y)."""
    ck.check_same_shape("log_softmax_backward", y=y, dy=dy)
    ck.check_float("log_softmax_backward", y=y, dy=dy)
    return F.log_softmax_backward(y, dy, axis=-1)  # (..., N)


def causal_softmax_forward(scores: np.ndarray, scale: float) -> np.ndarray:
    """softmax over keys of scale * scores, keys after each query masked to -inf.

    (minigen's attention does the same on transposed scores, inside F.attention_forward.)
    """
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
    """One reverse step of DDPM sampling, given the network's noise estimate eps
    (minigen.diffusion.ddpm_noise_step, the book's Eq. 7.1).

    z is fresh standard normal noise (None at the last step, where sigma_t = 0).
    """
    ck.check_ddpm(x_t, eps, z)
    # x_{t-1} = x_t + f(x_t, t) + sigma_t z,  x_t + f = (x_t - beta_t / sqrt(1 - abar_t) eps)
    #                                                  / sqrt(alpha_t)
    noise = 0.0 if z is None else z
    return ddpm_noise_step(x_t, eps, noise, beta_t, alpha_t, abar_t, sigma_t)


# ----------------------------------------------------------------------------- layer norm


def layer_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = (x - mean) * rstd * weight + bias over the last axis; returns (y, mean, rstd).

    mean and rstd = 1 / sqrt(var + eps) have shape x.shape[:-1]: what the kernels keep
    for their backward (minigen's F.layer_norm_forward keeps xhat and rstd).
    """
    ck.check_layer_norm("layer_norm_forward", x, weight)
    ck.check_same_shape("layer_norm_forward", weight=weight, bias=bias)
    ck.check_float("layer_norm_forward", x=x, weight=weight, bias=bias)
    # \hat x = (x - \mu) / sqrt(\sigma^2 + \epsilon),  y = \hat x w + b
    y, (_, rstd) = F.layer_norm_forward(x, weight, bias, eps)  # (..., C), (..., 1)
    # \mu = mean_c x_c  (one more pass, for the kernels' contract)
    mean = np.asarray(x.mean(axis=-1))  # (...)   (an array even when x is 1-D)
    return y, mean, np.asarray(rstd[..., 0])


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
    r = rstd[..., None]  # (..., 1)
    xhat = (x - mean[..., None]) * r  # (..., C): rebuilt, where minigen's forward kept it
    return F.layer_norm_backward(dy, (xhat, r), weight)


# ----------------------------------------------------------------------------- group norm + SiLU


def group_norm_silu_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, num_groups: int, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = silu((x - mean) * rstd * weight + bias), mean and rstd per sample and group of
    channels (minigen.normalize.group_norm_silu_forward: conv.group_norm then ops.silu);
    returns (y, mean, rstd), mean and rstd (N, num_groups)."""
    ck.check_group_norm("group_norm_silu_forward", x, weight, num_groups)
    ck.check_same_shape("group_norm_silu_forward", weight=weight, bias=bias)
    ck.check_float("group_norm_silu_forward", x=x, weight=weight, bias=bias)
    y, (_, rstd, _, _) = _gns_forward(x, num_groups, weight, bias, eps)
    mean = x.reshape(x.shape[0], num_groups, -1).mean(axis=-1)  # (N, G)
    return y, mean, rstd[..., 0]


def group_norm_silu_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray,
    rstd: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(dx, dweight, dbias) of group norm + SiLU, given the forward's mean and rstd:
    xhat, z and s(z) are rebuilt as minigen's forward computes them, then its backward runs."""
    G = mean.shape[1] if mean.ndim == 2 else 0
    ck.check_group_norm("group_norm_silu_backward", x, weight, G, mean=mean, rstd=rstd)
    ck.check_same_shape("group_norm_silu_backward", x=x, dy=dy)
    ck.check_float("group_norm_silu_backward", dy=dy, x=x, weight=weight, mean=mean, rstd=rstd)
    N, C = x.shape[:2]
    chan = (1, C) + (1,) * (x.ndim - 2)
    r = rstd[..., None]  # (N, G, 1)
    xhat = ((x.reshape(N, G, -1) - mean[..., None]) * r).reshape(x.shape)  # rebuilt
    z = xhat * weight.reshape(chan) + bias.reshape(chan)
    s = (1 + np.tanh(z * 0.5)) * 0.5  # s(z) as ops.silu computes it
    return _gns_backward(dy, (xhat, r, z, s), weight)


# ----------------------------------------------------------------------------- GELU


def gelu_forward(x: np.ndarray, approximate: str = "tanh") -> np.ndarray:
    """gelu(x) = x Phi(x); "tanh": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    (minigen.ops.gelu_forward)."""
    ck.check_approximate("gelu_forward", approximate)
    ck.check_float("gelu_forward", x=x)
    return ops.gelu_forward(x, approximate)[0]


def gelu_backward(x: np.ndarray, dy: np.ndarray, approximate: str = "tanh") -> np.ndarray:
    """dx = dy * gelu'(x); the forward's input x is what the backward needs."""
    ck.check_approximate("gelu_backward", approximate)
    ck.check_same_shape("gelu_backward", x=x, dy=dy)
    ck.check_float("gelu_backward", x=x, dy=dy)
    _, saved = ops.gelu_forward(x, approximate)  # (x, Phi(x)): rerun, as the kernels do
    return ops.gelu_backward(saved, dy, approximate)


# ----------------------------------------------------------------------------- AdamW


def adamw_step(
    p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, step: int,
) -> None:  # fmt: skip
    """One AdamW update of p, m, v in place (minigen.optim.adamw_step: about ten passes)."""
    ck.check_same_shape("adamw_step", p=p, g=g, m=m, v=v)
    ck.check_float("adamw_step", p=p, g=g, m=m, v=v)
    _adamw_step(p, g, m, v, np.empty_like(p), lr, beta1, beta2, eps, weight_decay, step)
