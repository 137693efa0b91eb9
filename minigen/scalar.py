"""Autograd on single numbers: the whole idea of `tensor.py` in a page.

In the spirit of micrograd (Karpathy): every `Value` remembers the values it was
computed from and how to push a gradient back to them. Lesson 00 starts here and
grows it into `Tensor`, where each number becomes an array and each local
derivative an array expression (with broadcasting undone by `unbroadcast`).

A `Value` mixes with plain numbers on either side, as a learner writes them first:
`1 - v`, `2 / v`, `2 ** v`, `v ** 0.5`, `-v`, `v.relu()`, `v.tanh()`, `v.exp()`, `v.log()`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable


class Value:
    """A number that records the graph of operations that produced it."""

    def __init__(self, data: float, parents: tuple[Value, ...] = (), op: str = "") -> None:
        if isinstance(data, Value):
            raise TypeError("Value(Value(...)): pass the number, or use the Value itself")
        self.data = float(data)
        self.grad = 0.0  # dL/d(self), filled by backward()
        self.parents = parents
        self.op = op
        self._backward: Callable[[], None] = lambda: None

    def __add__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward() -> None:  # d(a+b)/da = d(a+b)/db = 1
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward() -> None:  # d(ab)/da = b, d(ab)/db = a
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, k: Value | float) -> Value:
        """a ** k for a constant k, or for a Value k (whose gradient needs a > 0: it uses log a)."""
        if isinstance(k, Value):
            return self._pow_value(k)
        if not isinstance(k, numbers.Real):
            return NotImplemented
        k = float(k)
        y = self.data**k
        if isinstance(y, complex):
            raise ValueError(f"({self.data:g}) ** {k:g} is not a real number")
        out = Value(y, (self,), f"**{k:g}")

        def _backward() -> None:  # d(a^k)/da = k a^(k-1)  (0 for k = 0, even at a = 0)
            if k != 0:
                self.grad += k * self.data ** (k - 1) * out.grad

        out._backward = _backward
        return out

    def _pow_value(self, k: Value) -> Value:
        if self.data <= 0:
            raise ValueError(
                f"({self.data:g}) ** Value: a Value exponent needs a base > 0 (the gradient "
                "with respect to the exponent is a^k log a)"
            )
        out = Value(self.data**k.data, (self, k), "**")

        def _backward() -> None:  # d(a^k)/da = k a^(k-1), d(a^k)/dk = a^k log a
            self.grad += k.data * self.data ** (k.data - 1) * out.grad
            k.grad += out.data * math.log(self.data) * out.grad

        out._backward = _backward
        return out

    def relu(self) -> Value:
        out = Value(max(self.data, 0.0), (self,), "relu")

        def _backward() -> None:  # d relu(a)/da = 1 where a > 0, else 0 (as ops.relu)
            self.grad += (self.data > 0) * out.grad

        out._backward = _backward
        return out

    def tanh(self) -> Value:
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward() -> None:  # d tanh(a)/da = 1 - tanh(a)^2
            self.grad += (1 - t * t) * out.grad

        out._backward = _backward
        return out

    def exp(self) -> Value:
        out = Value(math.exp(self.data), (self,), "exp")

        def _backward() -> None:
            self.grad += out.data * out.grad

        out._backward = _backward
        return out

    def log(self) -> Value:
        if self.data <= 0:
            raise ValueError(f"log({self.data:g}): the logarithm needs a number > 0")
        out = Value(math.log(self.data), (self,), "log")

        def _backward() -> None:  # d log(a)/da = 1/a
            self.grad += out.grad / self.data

        out._backward = _backward
        return out

    def backward(self) -> None:
        """Topologically sort the graph, then apply the chain rule from the output back."""
        order: list[Value] = []
        seen: set[int] = set()

        def visit(v: Value) -> None:
            if id(v) not in seen:
                seen.add(id(v))
                for p in v.parents:
                    visit(p)
                order.append(v)

        visit(self)
        self.grad = 1.0  # dL/dL
        for v in reversed(order):
            v._backward()

    # the remaining operators are built from the ones above; the reflected ones (`2 - v`
    # calls v.__rsub__(2)) put the plain number first
    def __neg__(self) -> Value:
        return self * -1

    def __sub__(self, other: Value | float) -> Value:
        return self + (-other)

    def __truediv__(self, other: Value | float) -> Value:
        return self * (other if isinstance(other, Value) else Value(other)) ** -1

    def __radd__(self, other: float) -> Value:
        return self + other

    def __rmul__(self, other: float) -> Value:
        return self * other

    def __rsub__(self, other: float) -> Value:
        return Value(other) - self

    def __rtruediv__(self, other: float) -> Value:
        return Value(other) / self

    def __rpow__(self, other: float) -> Value:
        return Value(other) ** self

    def __repr__(self) -> str:
        return f"Value(data={self.data:.4g}, grad={self.grad:.4g})"
