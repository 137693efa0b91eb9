"""Gradient checking by central differences, in float64.

For a function f of arrays x_1..x_n returning a tensor y, contract y with a fixed
random weight u to get a scalar L = sum(u * f(x)), then compare backward()'s
dL/dx with the central difference

    dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

whose error is O(eps^2) (plus rounding of order 1e-16 / eps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from minigen.tensor import Tensor, default_dtype, no_grad

__all__ = ["numerical_grads", "analytic_grads", "gradcheck"]


def _weight(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def analytic_grads(
    f: Callable[..., Tensor], arrays: Sequence[np.ndarray], seed: int = 0
) -> list[np.ndarray]:
    """dL/dx_j by backward(), with L = sum(u * f(x)), inputs as float64 tensors."""
    with default_dtype(np.float64):
        xs = [Tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
        y = f(*xs)
        y.backward(_weight(y.shape, seed))
    return [x.grad if x.grad is not None else np.zeros(x.shape) for x in xs]


def numerical_grads(
    f: Callable[..., Tensor], arrays: Sequence[np.ndarray], eps: float = 1e-6, seed: int = 0
) -> list[np.ndarray]:
    """dL/dx_j by central differences (one pair of evaluations per entry)."""
    xs = [np.array(a, dtype=np.float64) for a in arrays]

    def loss() -> float:
        with no_grad(), default_dtype(np.float64):
            y = f(*(Tensor(x) for x in xs))
            return float((y.data * _weight(y.shape, seed)).sum())

    grads = []
    for x in xs:
        g = np.zeros_like(x)
        flat, gflat = x.reshape(-1), g.reshape(-1)  # views: perturb x in place
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = loss()
            flat[i] = old - eps
            down = loss()
            flat[i] = old
            gflat[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def gradcheck(
    f: Callable[..., Tensor],
    *arrays: Any,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    seed: int = 0,
) -> None:
    """Assert that backward() agrees with central differences for every input of `f`."""
    ana = analytic_grads(f, arrays, seed)
    num = numerical_grads(f, arrays, eps, seed)
    for j, (a, n) in enumerate(zip(ana, num, strict=True)):
        scale = max(1.0, float(np.abs(n).max(initial=0.0)))
        err = float(np.abs(a - n).max(initial=0.0))
        if err > atol * scale + rtol * float(np.abs(n).max(initial=0.0)):
            raise AssertionError(
                f"gradcheck: input {j} of shape {np.shape(arrays[j])}: max |analytic - numerical| "
                f"= {err:.3g}\nanalytic:\n{a}\nnumerical:\n{n}"
            )
