"""Solutions to lesson 08's exercises (training at scale)."""

import numpy as np


def shard_weighted_sum(grads: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    total = sum(sizes)  # B
    out = np.zeros_like(grads[0])
    for g, b in zip(grads, sizes, strict=True):  # in shard order, as minigen adds them
        # grad L = sum_k (B_k / B) grad L_k
        out += (b / total) * g
    return out


def ring_allreduce_time(n: int, nbytes: float, latency: float, bandwidth: float) -> float:
    if n == 1:
        return 0.0  # one rank holds the sum already
    # t = 2 (N - 1) alpha + 2 (N - 1) / N * bytes / beta
    return 2 * (n - 1) * latency + 2 * (n - 1) / n * nbytes / bandwidth


def gpu_days(n_params: int, tokens: float, peak_flops: float, mfu: float) -> float:
    flops = 6 * n_params * tokens  # C = 6 N D: 2 FLOPs per weight forward, 4 backward
    return flops / (peak_flops * mfu) / 86_400  # seconds at the sustained speed, in days
