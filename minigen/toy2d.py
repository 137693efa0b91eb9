"""Two-dimensional toy data sets, generated offline and deterministic for a seed.

Each function returns `(X, y)`: points `X` of shape (n, 2), float32, and an int64
label per point (the class, the moon, the arm of the spiral or the mixture
component), so the same sets serve classification (the demo's MLP) and density
modelling (the 2-D diffusion of §7.2, which ignores the labels).
"""

from __future__ import annotations

import numpy as np

__all__ = ["two_moons", "spirals", "swiss_roll", "gaussian_mixture", "DATASETS"]


def _start(n: int, seed: int | np.random.Generator | None) -> np.random.Generator:
    """How every set starts: `n` checked, the generator of `seed` (or `seed` itself)."""
    if n < 1:
        raise ValueError(f"the number of points must be >= 1, got {n}")
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _points(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How every set ends: float32 points, int64 labels."""
    return X.astype(np.float32), y.astype(np.int64)


def two_moons(
    n: int, noise: float = 0.1, seed: int | np.random.Generator | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles (as scikit-learn's make_moons), label = which moon."""
    rng = _start(n, seed)
    y = rng.integers(0, 2, n)
    angle = rng.uniform(0, np.pi, n)
    x = np.where(y == 0, np.cos(angle), 1 - np.cos(angle))  # (n,)
    z = np.where(y == 0, np.sin(angle), 0.5 - np.sin(angle))  # (n,)
    X = np.stack([x, z], axis=1) + noise * rng.standard_normal((n, 2))  # (n, 2)
    return _points(X, y)


# each set names its own parameters and draws its own way; the signatures and first lines
# of spirals and gaussian_mixture are alike in shape only
def spirals(
    n: int, arms: int = 2, turns: float = 1.5, noise: float = 0.05,
    seed: int | np.random.Generator | None = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """`arms` interleaved spirals, label = which arm."""
    rng = _start(n, seed)
    y = rng.integers(0, arms, n)
    r = np.sqrt(rng.uniform(0.02, 1.0, n))  # denser towards the outside, as area grows
    theta = 2 * np.pi * (turns * r + y / arms)
    X = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)  # (n, 2)
    X += noise * rng.standard_normal((n, 2))
    return _points(X, y)


def swiss_roll(
    n: int, noise: float = 0.25, seed: int | np.random.Generator | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D swiss roll (x, y) = t (cos t, sin t), t in [1.5 pi, 4.5 pi]; label = half of t."""
    rng = _start(n, seed)
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(0, 1, n))
    X = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5  # (n, 2)
    X += (noise / 5) * rng.standard_normal((n, 2))
    return _points(X, t > 3 * np.pi)


def gaussian_mixture(
    n: int, k: int = 8, radius: float = 2.0, std: float = 0.1,
    seed: int | np.random.Generator | None = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """`k` isotropic Gaussians of standard deviation `std` on a circle; label = component."""
    rng = _start(n, seed)
    y = rng.integers(0, k, n)
    angle = 2 * np.pi * y / k
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (n, 2)
    X = centres + std * rng.standard_normal((n, 2))
    return _points(X, y)


DATASETS = {
    "moons": two_moons,
    "spirals": spirals,
    "swissroll": swiss_roll,
    "gmm": gaussian_mixture,
}
