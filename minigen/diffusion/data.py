"""Data for the diffusion of §7.2, normalised as the chapter describes.

"Ho et al. [2020] normalize the data to have a mean of 0 and a variance of 1": the
diffusion process then keeps the variance at 1 at every step, and x_T is close to
N(0, I). `Normalizer` does that and keeps the statistics, so generated samples can
be mapped back to the data's units:

    z = (x - mean) / std,        x = z * std + mean.

Data sets: the 2-D toys of `minigen.toy2d` (per-coordinate statistics), and
scikit-learn's bundled 8x8 handwritten digits (offline; 1797 images, pixel values
0..16) as (N, 1, 8, 8) float32, either standardised (one mean and one std for all
pixels) or scaled to [-1, 1] (mean 8, std 8: the usual image convention).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from minigen import toy2d

__all__ = ["Normalizer", "DiffusionData", "load_toy2d", "load_digits", "DIGITS_SCALINGS"]

DIGITS_SCALINGS = ("standard", "range")


@dataclass(frozen=True)
class Normalizer:
    """An affine map to mean 0 / variance 1 and back; `mean` and `std` broadcast over x."""

    mean: np.ndarray  # float64: () for one statistic, (d,) per coordinate
    std: np.ndarray

    @classmethod
    def fit(cls, x: Any, per_coordinate: bool = True) -> Normalizer:
        """Statistics of `x` (N, ...): per coordinate (over axis 0) or one pair for all values."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"cannot fit a Normalizer on an empty array of shape {x.shape}")
        axis = 0 if per_coordinate else None
        mean, std = x.mean(axis=axis), x.std(axis=axis)  # (d,) or ()
        bad = np.flatnonzero(np.atleast_1d(~(std > 0)))
        if bad.size:
            idx = tuple(int(i) for i in np.unravel_index(bad[0], np.shape(std)))
            where = f"coordinate {idx[0] if len(idx) == 1 else idx}" if idx else "x"
            raise ValueError(
                f"{where} has zero variance over {x.shape[0]} samples: cannot normalise"
            )
        return cls(np.asarray(mean), np.asarray(std))

    def transform(self, x: Any) -> np.ndarray:
        """z = (x - mean) / std, in x's floating dtype."""
        x = np.asarray(x)
        # z = (x - mean) / std
        return ((x - self.mean) / self.std).astype(_float(x), copy=False)

    def inverse(self, z: Any) -> np.ndarray:
        """x = z * std + mean: model samples back in the data's units."""
        z = np.asarray(z)
        # x = z * std + mean
        return (z * self.std + self.mean).astype(_float(z), copy=False)

    def to_json(self) -> str:
        """The statistics as JSON (for a checkpoint's metadata)."""
        return json.dumps({"mean": self.mean.tolist(), "std": self.std.tolist()})

    @classmethod
    def from_json(cls, text: str) -> Normalizer:
        d = json.loads(text)
        missing = {"mean", "std"} - set(d)
        if missing:
            raise ValueError(f"Normalizer JSON lacks the key(s) {sorted(missing)}")
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64))


class DiffusionData(NamedTuple):
    """Normalised samples `x`, their labels `y` (int64) and the `normalizer` to map back."""

    x: np.ndarray
    y: np.ndarray
    normalizer: Normalizer


def load_toy2d(name: str = "moons", n: int = 2000, seed: int = 0, **kw: Any) -> DiffusionData:
    """A 2-D toy of `minigen.toy2d` (moons, spirals, swissroll, gmm), x: (n, 2) float32."""
    if name not in toy2d.DATASETS:
        raise ValueError(f"unknown 2-D data set {name!r}; choose one of {sorted(toy2d.DATASETS)}")
    x, y = toy2d.DATASETS[name](n, seed=seed, **kw)  # (n, 2), (n,)
    norm = Normalizer.fit(x, per_coordinate=True)
    return DiffusionData(norm.transform(x), y, norm)


def load_digits(scaling: str = "standard") -> DiffusionData:
    """scikit-learn's 8x8 digits, x: (1797, 1, 8, 8) float32, y: the digit (int64).

    `scaling`: "standard" (mean 0, variance 1 over all pixels, as in §7.2) or
    "range" (pixels 0..16 mapped to [-1, 1]).
    """
    if scaling not in DIGITS_SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; choose one of {DIGITS_SCALINGS}")
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = bunch.images.astype(np.float64)[:, None]  # (N, 1, 8, 8) values 0..16
    if scaling == "standard":
        norm = Normalizer.fit(images, per_coordinate=False)
    else:  # [0, 16] -> [-1, 1]
        norm = Normalizer(np.asarray(8.0), np.asarray(8.0))
    x = norm.transform(images).astype(np.float32)  # (N, 1, 8, 8)
    return DiffusionData(x, bunch.target.astype(np.int64), norm)


def _float(x: np.ndarray) -> np.dtype:
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
