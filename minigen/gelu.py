"""GELU, the GPT's activation: GELU(x) = x Phi(x), Phi the standard normal CDF.

Exactly ("none"), with Phi(x) = (1 + erf(x / sqrt 2)) / 2, or with GPT-2's approximation
("tanh"): GELU(x) ~ x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). `gelu_forward` and
`gelu_backward` are the NumPy references of the fused op (minigen/dispatch.py); the Numba
and CUDA kernels in kernels/minigen_kernels/ write the same formulas with their own copy of
the constants (those kernels import nothing of minigen), held to these by the parity tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minigen import backend, dispatch
from minigen.tensor import Tensor, node

__all__ = ["gelu", "gelu_forward", "gelu_backward"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_CUBIC = 0.044715  # the tanh form's cubic coefficient (GPT-2's)


def gelu_forward(x: Any, approximate: str = "none") -> tuple[Any, Any]:
    """(GELU(x), saved): x Phi(x) exactly ("none") or with GPT-2's tanh approximation
    ("tanh"); `saved` = (x, Phi(x) or its approximation), what the backward reads."""
    xp = backend.array_module(x)
    if approximate == "none":
        cdf = 0.5 * (1 + backend.erf(x * (1 / math.sqrt(2.0))))  # Phi(x)
        return x * cdf, (x, cdf)
    if approximate == "tanh":
        # GELU(x) ~ x/2 (1 + tanh(z)), z = sqrt(2/pi) (x + 0.044715 x^3), written as
        # x sigmoid(2z) since (1 + tanh z)/2 = sigmoid(2z): in place, few passes over x
        s = xp.multiply(x, x, out=xp.empty_like(x))
        s *= -2 * _SQRT_2_OVER_PI * _CUBIC
        s -= 2 * _SQRT_2_OVER_PI
        s *= x  # -2z
        with np.errstate(over="ignore"):  # e^{-2z} = inf for very negative x: sigmoid = 0
            xp.exp(s, out=s)
        s += 1
        xp.reciprocal(s, out=s)  # s = sigmoid(2z)
        return x * s, (x, s)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_backward(saved: Any, dy: Any, approximate: str = "none") -> Any:
    """dL/dx = dL/dy GELU'(x), from the forward's `saved`."""
    x, c = saved
    xp = backend.array_module(x)
    if approximate == "none":  # d/dx x Phi(x) = Phi(x) + x phi(x)
        return dy * (c + x * _INV_SQRT_2PI * xp.exp(-0.5 * x * x))
    # d/dx x sigmoid(z') = s (1 + x (1 - s) dz'/dx),  z' = 2z, s = sigmoid(z'),
    # dz'/dx = 2 sqrt(2/pi) (1 + 3 0.044715 x^2)
    d = xp.multiply(x, x, out=xp.empty_like(x))
    d *= 6 * _SQRT_2_OVER_PI * _CUBIC
    d += 2 * _SQRT_2_OVER_PI
    d *= x
    d *= 1 - c
    d += 1
    d *= c
    d *= dy
    return d


def gelu(a: Tensor, approximate: str = "none") -> Tensor:
    """GELU(x) = x Phi(x), exactly ("none") or with GPT-2's tanh approximation ("tanh")."""
    # gelu_forward, or the selected backend's kernel for it (minigen/dispatch.py)
    y, saved = dispatch.pick(gelu_forward)(a.data, approximate)
    backward = dispatch.pick(gelu_backward)
    return node(y, (a,), lambda g: (backward(saved, g, approximate),))
