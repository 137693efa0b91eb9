"""Solutions to lesson 06's exercises (guidance)."""

import numpy as np


def my_cfg_eps(eps_u: np.ndarray, eps_c: np.ndarray, w: float) -> np.ndarray:
    return eps_u + w * (eps_c - eps_u)


def my_clip_guided_mean(mean: np.ndarray, sigma_t: float, grad: np.ndarray, s: float) -> np.ndarray:
    return mean + s * sigma_t**2 * grad  # Sigma_t = sigma_t^2


def my_clip_guided_eps(eps: np.ndarray, abar_t: float, grad: np.ndarray, s: float) -> np.ndarray:
    return eps - s * np.sqrt(1 - abar_t) * grad
