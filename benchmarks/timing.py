"""Timing two implementations fairly on a small, noisy machine.

`alternate(a, b, rounds)` times blocks of calls of a and of b in turn (A, B, A, B...),
so that both see the same drift in machine load. Each block starts after a pause and one
untimed call: a library's worker threads keep spinning for a while after its last call
(OpenBLAS's for about 0.1 s) and would take the cores from the other library if it ran
at once (timing call by call made PyTorch look twice as slow at 2 threads).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def alternate(
    a: Callable[[], None], b: Callable[[], None], rounds: int, per_round: int = 5,
    pause: float = 0.3, warmup: int = 5,
) -> tuple[list[float], list[float]]:  # fmt: skip
    """Seconds per call of a and of b, `rounds` blocks of `per_round` timed calls each."""
    for f in (a, b):
        for _ in range(warmup):
            f()
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(rounds):
        for f, out in ((a, ta), (b, tb)):
            time.sleep(pause)
            f()
            for _ in range(per_round):
                t0 = time.perf_counter()
                f()
                out.append(time.perf_counter() - t0)
    return ta, tb


def median(xs: list[float]) -> float:
    return statistics.median(xs)
