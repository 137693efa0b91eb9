"""Solutions to lesson 06's exercises (guidance)."""

import numpy as np


def my_cfg_eps(eps_u: np.ndarray, eps_c: np.ndarray, w: float) -> np.ndarray:
    return eps_u + w * (eps_c - eps_u)


def my_clip_guided_mean(mean: np.ndarray, sigma_t: float, grad: np.ndarray, s: float) -> np.ndarray:
    return mean + s * sigma_t**2 * grad  # Sigma_t = sigma_t^2


def my_clip_guided_eps(eps: np.ndarray, abar_t: float, grad: np.ndarray, s: float) -> np.ndarray:
    return eps - s * np.sqrt(1 - abar_t) * grad


def my_clip_loss(z_img: np.ndarray, z_txt: np.ndarray, scale: float) -> float:
    logits = scale * z_img @ z_txt.T  # (B, B)

    def ce_diagonal(m: np.ndarray) -> float:  # mean of -log softmax(row i)_i
        m = m - m.max(axis=1, keepdims=True)
        return float(-np.mean(np.diag(m) - np.log(np.exp(m).sum(axis=1))))

    return 0.5 * (ce_diagonal(logits) + ce_diagonal(logits.T))
