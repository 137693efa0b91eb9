"""The timesteps a sampler visits: diffusers' three spacings ("leading", "trailing",
"linspace") of `num_inference_steps` among the T of the training chain, decreasing."""

from __future__ import annotations

import numpy as np

__all__ = ["SPACINGS", "make_timesteps"]

SPACINGS = ("leading", "trailing", "linspace")


def make_timesteps(
    num_train_timesteps: int,
    num_inference_steps: int,
    spacing: str = "leading",
    steps_offset: int = 0,
) -> np.ndarray:
    """The decreasing timesteps a sampler visits (diffusers' three spacings), int64."""
    T, n = num_train_timesteps, num_inference_steps
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be an integer in 1 .. T={T}, got {n!r}")
    if spacing == "leading":  # 0, k, 2k, ... with k = T // n, plus an offset
        ts = np.arange(n, dtype=np.int64)[::-1] * (T // n) + steps_offset
    elif spacing == "trailing":  # T-1, T-1-k, ... with k = T / n, so the first step is at T-1
        # the values of diffusers' np.arange(T, 0, -T / n) (steps of (T - T / n) - T, as NumPy
        # does), but always n of them: float rounding can stretch that arange to n + 1
        ts = np.round(T + np.arange(n) * ((T - T / n) - T)).astype(np.int64) - 1
    elif spacing == "linspace":  # n points evenly spread over 0 .. T-1, both ends included
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; choose one of {SPACINGS}")
    if ts.max() >= T or ts.min() < 0:
        raise ValueError(
            f"timesteps {ts.min()} .. {ts.max()} fall outside 0 .. {T - 1}"
            f" (spacing {spacing!r}, steps_offset={steps_offset}, {n} steps)"
        )
    return ts.copy()
