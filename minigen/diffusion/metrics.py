"""Measuring samples against data: MMD, sliced Wasserstein, Fréchet distance, a digit classifier.

Maximum mean discrepancy (Gretton et al., 2012) with a kernel k: the distance
between the mean embeddings of two samples X (n) and Y (m),

    MMD^2(X, Y) = mean_{i,i'} k(x_i, x_i') + mean_{j,j'} k(y_j, y_j') - 2 mean_{i,j} k(x_i, y_j),

here the biased ("V") estimate, >= 0, with a sum of RBF kernels
k(x, y) = sum_s exp(-||x - y||^2 / (2 s^2)) over several bandwidths s. Two
samples of the *same* density still give MMD > 0, of order 1/sqrt(n): that is
the floor a model's samples are compared with.

Sliced Wasserstein-1: the mean over random unit directions u of the 1-D
Wasserstein distance between the projections <x, u> and <y, u> (sorted, matched).

Fréchet distance between Gaussians fitted to two feature sets (as FID,
Heusel et al. 2017):

    FD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).

For the digits, features come from a small classifier trained on real digits with
minigen (`train_digit_classifier`), its last hidden layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minigen import functional as F
from minigen import nn, optim
from minigen import rng as _rng
from minigen.tensor import Tensor, no_grad

__all__ = [
    "mmd", "sliced_wasserstein", "frechet_distance", "DigitClassifier",
    "train_digit_classifier",
]  # fmt: skip

BANDWIDTHS = (0.05, 0.1, 0.2, 0.5, 1.0)


def _check_pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)  # (n, d), (m, d)
    if x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(
            f"need two samples of >= 2 points of the same dimension, got {x.shape} and {y.shape}"
        )
    return x, y


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # ||a - b||^2 = ||a||^2 + ||b||^2 - 2 <a, b>
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T  # (n, m)
    return np.maximum(d, 0.0)


def mmd(x: Any, y: Any, bandwidths: Sequence[float] = BANDWIDTHS) -> float:
    """The (biased) maximum mean discrepancy between samples x (n, d) and y (m, d)."""
    x, y = _check_pair(x, y)

    def kmean(a: np.ndarray, b: np.ndarray) -> float:
        d2 = _sq_dists(a, b)  # (n, m)
        # k(a, b) = sum_s exp(-||a - b||^2 / (2 s^2))
        return float(sum(np.exp(-d2 / (2 * s * s)).mean() for s in bandwidths))

    # MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y)
    m2 = kmean(x, x) + kmean(y, y) - 2 * kmean(x, y)
    return float(np.sqrt(max(m2, 0.0)))


def sliced_wasserstein(x: Any, y: Any, n_projections: int = 256, seed: int = 0) -> float:
    """Mean over random directions of the 1-D Wasserstein-1 distance of the projections."""
    x, y = _check_pair(x, y)
    u = np.random.default_rng(seed).standard_normal((x.shape[1], n_projections))
    u /= np.linalg.norm(u, axis=0, keepdims=True)  # (d, P) unit directions
    px, py = np.sort(x @ u, axis=0), np.sort(y @ u, axis=0)  # (n, P), (m, P)
    q = (np.arange(256) + 0.5) / 256  # the 1-D W1 as a mean over quantiles
    return float(np.abs(np.quantile(px, q, axis=0) - np.quantile(py, q, axis=0)).mean())


def frechet_distance(f1: Any, f2: Any) -> float:
    """The Fréchet distance between Gaussians fitted to features f1 (n, d) and f2 (m, d)."""
    f1, f2 = _check_pair(f1, f2)
    mu1, mu2 = f1.mean(0), f2.mean(0)  # (d,)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)  # (d, d)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.maximum(w, 0))) @ v.T  # S_1^{1/2}
    # tr (S_1^{1/2} S_2 S_1^{1/2})^{1/2} = sum of the square roots of its eigenvalues
    tr_sqrt = np.sqrt(np.maximum(np.linalg.eigvalsh(r1 @ s2 @ r1), 0)).sum()
    # FD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2) - 2 tr (S_1^{1/2} S_2 S_1^{1/2})^{1/2}
    fd = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    return float(max(fd, 0.0))


class DigitClassifier(nn.Module):
    """An MLP on the 64 pixels of a standardised digit: 64 -> 128 -> 64 (features) -> 10."""

    def __init__(self, hidden: int = 128, features: int = 64) -> None:
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, features)
        self.head = nn.Linear(features, 10)

    def features(self, x: Any) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(np.asarray(x, np.float32))
        h = x.reshape(x.shape[0], 64)  # (B, 64)
        return F.relu(self.fc2(F.relu(self.fc1(h))))  # (B, features)

    def forward(self, x: Any) -> Tensor:
        return self.head(self.features(x))  # (B, 10) logits

    def embed(self, x: Any) -> np.ndarray:
        """Features of a batch of standardised digits, as an array (no graph)."""
        with no_grad():
            return self.features(x).data

    def predict(self, x: Any) -> np.ndarray:
        with no_grad():
            return self(x).data.argmax(-1)


def train_digit_classifier(
    x: np.ndarray, y: np.ndarray, steps: int = 1500, seed: int = 0, held_out: float = 0.2
) -> tuple[DigitClassifier, float]:
    """Train a DigitClassifier on standardised digits x (N, 1, 8, 8); returns (model, accuracy
    on the `held_out` fraction it did not see)."""
    _rng.manual_seed(seed)
    gen = np.random.default_rng(seed)
    perm = gen.permutation(len(x))
    n_test = int(round(held_out * len(x)))
    test, tr = perm[:n_test], perm[n_test:]
    model = DigitClassifier()
    opt = optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    for step in range(steps):
        idx = tr[gen.integers(0, len(tr), 128)]
        opt.set_lr(optim.warmup_cosine(step, 2e-3, 50, steps, 1e-4))
        # a little Gaussian noise on the pixels: features that do not hinge on exact values
        xb = x[idx] + 0.1 * gen.standard_normal(x[idx].shape).astype(np.float32)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = float((model.predict(x[test]) == y[test]).mean()) if n_test else float("nan")
    return model, acc
