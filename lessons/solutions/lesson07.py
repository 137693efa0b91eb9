"""Solutions to lesson 07's exercises (kernels)."""

import math

import numpy as np


def my_softmax_rows(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        m = -math.inf
        for j in range(x.shape[1]):  # sweep 1: the row maximum
            m = max(m, x[i, j])
        s = 0.0
        for j in range(x.shape[1]):  # sweep 2: exponentials, kept, and their sum
            out[i, j] = math.exp(x[i, j] - m)
            s += out[i, j]
        for j in range(x.shape[1]):  # sweep 3: normalise
            out[i, j] /= s
    return out


def my_tiled_matmul(a: np.ndarray, b: np.ndarray, tile: int) -> np.ndarray:
    n, k = a.shape
    c = np.zeros((n, b.shape[1]), dtype=np.result_type(a, b))
    for i in range(0, n, tile):  # a band of rows of C
        for p in range(0, k, tile):  # a block of rows of B, reused by the whole band
            c[i : i + tile] += a[i : i + tile, p : p + tile] @ b[p : p + tile]
    return c


def my_ddpm_step(x_t, eps, z, beta_t, alpha_t, abar_t, sigma_t):
    a, c = 1.0 / math.sqrt(alpha_t), beta_t / math.sqrt(1.0 - abar_t)  # once, outside the loop
    out = np.empty_like(x_t)
    xs, es, os_ = x_t.reshape(-1), eps.reshape(-1), out.reshape(-1)  # views: no copy
    zs = None if z is None else z.reshape(-1)
    for i in range(xs.size):  # one pass: read x_t, eps (and z) once, write x_{t-1} once
        v = a * (xs[i] - c * es[i])
        os_[i] = v if zs is None else v + sigma_t * zs[i]
    return out
