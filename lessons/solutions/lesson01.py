"""Solutions to lesson 01's exercises (MLPs and attention)."""

import numpy as np


def my_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # the max subtracted: every exponent <= 0
    return e / e.sum(axis=-1, keepdims=True)


def my_layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased: divided by C
    return (x - mean) / np.sqrt(var + eps) * w + b


def my_causal_mask(T: int, S: int) -> np.ndarray:
    i = np.arange(T)[:, None] + (S - T)  # the queries are the last T of S positions
    return np.arange(S)[None, :] <= i


def my_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])  # scores (B, H, T, S)
    s = np.where(mask, s, -np.inf)  # + M
    p = np.exp(s - s.max(-1, keepdims=True))  # softmax over the keys, stably
    p /= p.sum(-1, keepdims=True)  # (B, H, T, S), each row sums to 1
    return p @ v  # (B, H, T, d)
