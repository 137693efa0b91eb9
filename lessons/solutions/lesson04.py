"""Solutions to lesson 04's exercises (RLHF losses)."""

import numpy as np


def my_bradley_terry(r_chosen: np.ndarray, r_rejected: np.ndarray) -> float:
    # -log sigmoid(m) = log(1 + e^{-m}), written without overflow
    return float(np.mean(np.logaddexp(0.0, -(r_chosen - r_rejected))))


def my_dpo_loss(
    logp_chosen: np.ndarray,
    logp_rejected: np.ndarray,
    ref_chosen: np.ndarray,
    ref_rejected: np.ndarray,
    beta: float,
) -> float:
    margin = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)
    return float(np.mean(np.logaddexp(0.0, -beta * margin)))


def my_gae(rewards: np.ndarray, values: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    adv, next_adv, next_value = np.zeros(len(rewards)), 0.0, 0.0  # V = 0 after the last token
    for t in range(len(rewards) - 1, -1, -1):
        delta = rewards[t] + gamma * next_value - values[t]
        adv[t] = next_adv = delta + gamma * lam * next_adv
        next_value = values[t]
    return adv


def my_ppo_clip_loss(logp, logp_old, advantages, mask, eps: float = 0.2) -> float:
    ratio = np.exp(logp - logp_old)  # rho_t
    surrogate = np.minimum(ratio * advantages, np.clip(ratio, 1 - eps, 1 + eps) * advantages)
    return float(-(surrogate * mask).sum() / mask.sum())
