"""Solutions to lesson 02's exercises (sampling)."""

import numpy as np


def my_temperature(logits: np.ndarray, tau: float) -> np.ndarray:
    z = logits / tau
    e = np.exp(z - z.max())
    return e / e.sum()


def my_top_k(p: np.ndarray, k: int) -> np.ndarray:
    keep = np.zeros(len(p), dtype=bool)
    keep[np.argsort(-p)[:k]] = True
    q = np.where(keep, p, 0.0)
    return q / q.sum()


def my_top_p(p: np.ndarray, top_p: float) -> np.ndarray:
    order = np.argsort(-p)  # most likely first
    before = np.cumsum(p[order]) - p[order]  # the mass of the tokens ahead of each
    keep = np.zeros(len(p), dtype=bool)
    keep[order[before < top_p]] = True  # kept until the mass reaches top_p
    q = np.where(keep, p, 0.0)
    return q / q.sum()
