"""Solutions to lesson 05's exercises (diffusion)."""

import numpy as np


def my_alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1 - betas)


def my_add_noise(x0: np.ndarray, eps: np.ndarray, abar_t: float) -> np.ndarray:
    return np.sqrt(abar_t) * x0 + np.sqrt(1 - abar_t) * eps


def my_ddpm_step(
    x_t: np.ndarray,
    eps_hat: np.ndarray,
    z: np.ndarray,
    beta_t: float,
    abar_t: float,
    sigma_t: float,
) -> np.ndarray:
    mean = (x_t - beta_t / np.sqrt(1 - abar_t) * eps_hat) / np.sqrt(1 - beta_t)
    return mean + sigma_t * z


def my_posterior(x0, x_t, beta_t: float, abar_t: float, abar_prev: float):
    c1 = np.sqrt(abar_prev) * beta_t / (1 - abar_t)
    c2 = np.sqrt(1 - beta_t) * (1 - abar_prev) / (1 - abar_t)
    return c1 * x0 + c2 * x_t, (1 - abar_prev) / (1 - abar_t) * beta_t
