"""Solutions to lesson 00's exercises (autograd)."""

import math

import numpy as np

from minigen import Tensor
from minigen.scalar import Value
from minigen.tensor import node


def value_sigmoid(a: Value) -> Value:
    s = 1 / (1 + math.exp(-a.data))
    out = Value(s, (a,), "sigmoid")

    def _backward() -> None:  # d sigma(a)/da = sigma(a) (1 - sigma(a))
        a.grad += s * (1 - s) * out.grad

    out._backward = _backward
    return out


def softplus(a: Tensor) -> Tensor:
    x = a.data
    # softplus(x) = max(x, 0) + log(1 + e^{-|x|}): no overflow for large |x|
    y = np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    # d softplus / dx = sigmoid(x) = 1 / (1 + e^{-x})
    return node(y, (a,), lambda g: (g / (1 + np.exp(-x)),))


def value_relu(a: Value) -> Value:
    out = Value(max(a.data, 0.0), (a,), "relu")

    def _backward() -> None:  # d relu(a)/da = 1 where a > 0, else 0
        a.grad += (a.data > 0) * out.grad

    out._backward = _backward
    return out
