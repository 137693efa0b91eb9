"""Arithmetic, elementwise ops and matmul, each with its hand-written backward.

Every op follows the same pattern (micrograd's, on arrays):

    def op(a):
        y = <forward on a.data>                 # the value
        def backward(g):                        # g = dL/dy, same shape as y
            return (<dL/da = g * dy/da>,)       # one gradient per parent
        return node(y, (a,), backward)

GELU (with its fused forward and backward) is in `gelu.py`, the reductions (sum, mean,
var, max, min, logsumexp) in `reductions.py`; both are re-exported here.
Binary ops broadcast like NumPy; a gradient that flowed through a broadcast is
summed back to its operand's shape by `unbroadcast`. Python numbers are kept as
they are, so `x * 2.0` stays float32 (NumPy's weak scalars).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from minigen import backend
from minigen.gelu import gelu, gelu_backward, gelu_forward
from minigen.reductions import _axes, logsumexp, max, mean, min, sum, var  # noqa: F401 (_axes: tests)
from minigen.tensor import Tensor, _wrap, node

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "tanh", "sigmoid",
    "relu", "silu", "gelu", "abs", "maximum", "minimum", "where", "clip",
    "sum", "mean", "var", "max", "min", "logsumexp", "matmul", "astype", "unbroadcast",
    "gelu_forward", "gelu_backward",
]  # fmt: skip

# ----------------------------------------------------------------------------- helpers


def unbroadcast(g: Any, shape: tuple[int, ...]) -> Any:
    """Sum `g` over the axes along which an operand of `shape` was broadcast."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def _constant(x: Any) -> Any:
    """A NumPy constant on the current backend: copied to the GPU with "cupy", as Tensor(x)."""
    if backend.xp is not np and isinstance(x, np.ndarray):
        return backend.xp.asarray(x)
    return x


def _lift(x: Any) -> Tensor:
    """A constant operand as a tensor; Python numbers stay Python numbers (weak dtype)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, int | float | bool) or hasattr(x, "dtype"):
        return _wrap(_constant(x))  # a constant: no gradient flows to it
    return Tensor(x)


def _binary(op: str, a: Any, b: Any, f: Any) -> tuple[Tensor, Tensor, Any, Any, Any]:
    """Lift both operands and compute y = f(a, b); a shape error names the op and both shapes."""
    a, b = _lift(a), _lift(b)
    ad, bd = a.data, b.data
    try:
        y = f(ad, bd)
    except ValueError:
        sa, sb = np.shape(ad), np.shape(bd)
        raise ValueError(f"{op}: shapes {sa} and {sb} cannot be broadcast together") from None
    except TypeError:
        backend.array_module(ad, bd, op=op)  # arrays of two backends (NumPy and CuPy): say so
        raise
    return a, b, ad, bd, y


# ----------------------------------------------------------------------------- arithmetic


def add(a: Any, b: Any) -> Tensor:
    a, b, ad, bd, y = _binary("add", a, b, operator.add)

    def backward(g):  # d(a+b)/da = d(a+b)/db = 1
        return (
            unbroadcast(g, ad.shape) if a.requires_grad else None,
            unbroadcast(g, bd.shape) if b.requires_grad else None,
        )

    return node(y, (a, b), backward)


def sub(a: Any, b: Any) -> Tensor:
    a, b, ad, bd, y = _binary("sub", a, b, operator.sub)

    def backward(g):
        return (
            unbroadcast(g, ad.shape) if a.requires_grad else None,
            unbroadcast(-g, bd.shape) if b.requires_grad else None,
        )

    return node(y, (a, b), backward)


def mul(a: Any, b: Any) -> Tensor:
    a, b, ad, bd, y = _binary("mul", a, b, operator.mul)

    def backward(g):  # d(ab)/da = b, d(ab)/db = a
        return (
            unbroadcast(g * bd, ad.shape) if a.requires_grad else None,
            unbroadcast(g * ad, bd.shape) if b.requires_grad else None,
        )

    return node(y, (a, b), backward)


def div(a: Any, b: Any) -> Tensor:
    a, b, ad, bd, y = _binary("div", a, b, operator.truediv)

    def backward(g):  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        return (
            unbroadcast(g / bd, ad.shape) if a.requires_grad else None,
            unbroadcast(-g * ad / (bd * bd), bd.shape) if b.requires_grad else None,
        )

    return node(y, (a, b), backward)


def neg(a: Tensor) -> Tensor:
    return node(-a.data, (a,), lambda g: (-g,))


def pow(a: Any, b: Any) -> Tensor:
    """a ** b; the gradient w.r.t. a tensor exponent needs a > 0 (it uses log a)."""
    a, b, ad, bd, y = _binary("pow", a, b, operator.pow)

    def backward(g):  # d(a^b)/da = b a^(b-1), d(a^b)/db = a^b log a
        xp = backend.array_module(g)
        return (
            unbroadcast(g * bd * ad ** (bd - 1), ad.shape) if a.requires_grad else None,
            unbroadcast(g * y * xp.log(ad), bd.shape) if b.requires_grad else None,
        )

    return node(y, (a, b), backward)


# ----------------------------------------------------------------------------- elementwise


def exp(a: Tensor) -> Tensor:
    y = backend.array_module(a.data).exp(a.data)
    return node(y, (a,), lambda g: (g * y,))  # d e^a / da = e^a


def log(a: Tensor) -> Tensor:
    ad = a.data
    return node(backend.array_module(ad).log(ad), (a,), lambda g: (g / ad,))


def sqrt(a: Tensor) -> Tensor:
    y = backend.array_module(a.data).sqrt(a.data)
    return node(y, (a,), lambda g: (g * 0.5 / y,))  # d sqrt(a) / da = 1 / (2 sqrt(a))


def tanh(a: Tensor) -> Tensor:
    y = backend.array_module(a.data).tanh(a.data)
    return node(y, (a,), lambda g: (g * (1 - y * y),))  # d tanh / da = 1 - tanh^2


def _sigmoid(x: Any) -> Any:
    """1 / (1 + e^-x), computed without overflow for either sign of x."""
    xp = backend.array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid(a: Tensor) -> Tensor:
    y = _sigmoid(a.data)
    return node(y, (a,), lambda g: (g * y * (1 - y),))  # s' = s (1 - s)


def relu(a: Tensor) -> Tensor:
    ad = a.data
    return node(ad * (ad > 0), (a,), lambda g: (g * (ad > 0),))


def silu(a: Tensor) -> Tensor:
    ad = a.data
    xp = backend.array_module(ad)
    # s(x) = (1 + tanh(x / 2)) / 2: one transcendental pass, in place, no overflow (for
    # x << 0 it rounds s to 0 sooner than _sigmoid does, which x s(x) cannot tell apart)
    s = xp.array(ad, copy=True)  # an array even for a 0-d input
    s *= 0.5
    xp.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    # silu(x) = x s(x);  silu'(x) = s(x) (1 + x (1 - s(x)))
    return node(ad * s, (a,), lambda g: (g * s * (1 + ad * (1 - s)),))


def abs(a: Tensor) -> Tensor:
    xp, ad = backend.array_module(a.data), a.data
    return node(xp.abs(ad), (a,), lambda g: (g * xp.sign(ad),))


def _select(op: str, a: Any, b: Any, pick_a: Any) -> Tensor:
    """maximum / minimum: the gradient goes to the chosen operand, split evenly on ties."""
    a, b, ad, bd, y = _binary(op, a, b, pick_a)

    def backward(g):
        wa = (y == ad).astype(g.dtype) - (ad == bd).astype(g.dtype) * 0.5  # 1, 0, 1/2 on a tie
        return (
            unbroadcast(g * wa, np.shape(ad)) if a.requires_grad else None,
            unbroadcast(g * (1 - wa), np.shape(bd)) if b.requires_grad else None,
        )

    return node(y, (a, b), backward)


def maximum(a: Any, b: Any) -> Tensor:
    return _select("maximum", a, b, lambda x, y: backend.array_module(x, y).maximum(x, y))


def minimum(a: Any, b: Any) -> Tensor:
    return _select("minimum", a, b, lambda x, y: backend.array_module(x, y).minimum(x, y))


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """Elementwise `a if cond else b`; the gradient flows to the chosen side."""
    c = cond.data if isinstance(cond, Tensor) else _constant(cond)
    xp = backend.array_module(c, _lift(a).data, _lift(b).data, op="where")
    a, b, ad, bd, y = _binary("where", a, b, lambda x, z: xp.where(c, x, z))

    def backward(g):
        return (
            unbroadcast(xp.where(c, g, 0), np.shape(ad)) if a.requires_grad else None,
            unbroadcast(xp.where(c, 0, g), np.shape(bd)) if b.requires_grad else None,
        )

    return node(y, (a, b), backward)


def clip(a: Tensor, lo: float | None = None, hi: float | None = None) -> Tensor:
    """Clamp to [lo, hi]; the gradient passes where lo <= a <= hi (PyTorch's clamp)."""
    xp, ad = backend.array_module(a.data), a.data
    y = xp.clip(ad, lo, hi)
    inside = xp.ones(ad.shape, dtype=bool)
    if lo is not None:
        inside &= ad >= lo
    if hi is not None:
        inside &= ad <= hi
    return node(y, (a,), lambda g: (g * inside,))


def astype(a: Tensor, dtype: Any) -> Tensor:
    src = a.data.dtype
    return node(a.data.astype(dtype), (a,), lambda g: (g.astype(src),))


# ----------------------------------------------------------------------------- matmul


def _check_matmul(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    if len(sa) == 0 or len(sb) == 0:
        raise ValueError(f"matmul: operands must have at least one axis, got shapes {sa} and {sb}")
    ka, kb = sa[-1], sb[-2] if len(sb) >= 2 else sb[0]
    if ka != kb:
        raise ValueError(
            f"matmul: shapes {sa} and {sb} are not aligned: {ka} (last axis of the first) "
            f"!= {kb} ({'second-to-last' if len(sb) >= 2 else 'only'} axis of the second)"
        )
    try:
        np.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch axes of shapes {sa} and {sb} do not broadcast") from None


def matmul(a: Any, b: Any) -> Tensor:
    """(..., n, k) @ (..., k, m) -> (..., n, m), batch axes broadcast as in NumPy."""
    a, b = _lift(a), _lift(b)
    ad, bd = a.data, b.data
    _check_matmul(ad.shape, bd.shape)
    backend.array_module(ad, bd, op="matmul")  # one backend for both operands
    if ad.ndim > 2 and bd.ndim == 2:  # (..., k) @ (k, m): one large GEMM instead of a batch
        y = (ad.reshape(-1, ad.shape[-1]) @ bd).reshape(*ad.shape[:-1], bd.shape[-1])
    else:
        y = ad @ bd

    def backward(g):
        A = ad[None, :] if ad.ndim == 1 else ad  # 1-D operands act as (1, k) and (k, 1)
        B = bd[:, None] if bd.ndim == 1 else bd
        G = g[..., None] if bd.ndim == 1 else g  # the axes numpy dropped for 1-D operands
        if ad.ndim == 1:
            G = G[..., None, :]
        ga = gb = None
        if B.ndim == 2 and A.ndim > 2:  # the Linear case: fold the batch into the rows
            G2 = G.reshape(-1, G.shape[-1])  # (N, m)
            if a.requires_grad:
                ga = (G2 @ B.T).reshape(A.shape)  # dL/dA = G B^T
            if b.requires_grad:
                gb = A.reshape(-1, A.shape[-1]).T @ G2  # dL/dB = A^T G, summed over the batch
        else:
            if a.requires_grad:
                ga = unbroadcast(G @ B.swapaxes(-1, -2), A.shape)
            if b.requires_grad:
                gb = unbroadcast(A.swapaxes(-1, -2) @ G, B.shape)
        return (
            None if ga is None else ga.reshape(ad.shape),
            None if gb is None else gb.reshape(bd.shape),
        )

    return node(y, (a, b), backward)


# ----------------------------------------------------------------------------- Tensor's methods
# `a + b` is `add(a, b)`: Python looks an operator up on the class, so each op above is also a
# method of Tensor, set here beside its definition (tensor.py does not import this module: the
# ops build Tensors, and importing them back would make an import cycle).


def _reflected(op: Any) -> Any:
    """The method for `other <op> tensor`: Python calls `tensor.__rsub__(other)` for `2 - t`."""

    def method(self: Tensor, other: Any) -> Tensor:
        return op(other, self)

    method.__name__ = method.__qualname__ = f"reflected_{op.__name__}"
    return method


Tensor.__add__, Tensor.__radd__ = add, _reflected(add)
Tensor.__sub__, Tensor.__rsub__ = sub, _reflected(sub)
Tensor.__mul__, Tensor.__rmul__ = mul, _reflected(mul)
Tensor.__truediv__, Tensor.__rtruediv__ = div, _reflected(div)
Tensor.__pow__, Tensor.__rpow__ = pow, _reflected(pow)
Tensor.__matmul__, Tensor.__rmatmul__ = matmul, _reflected(matmul)
Tensor.__neg__ = neg
Tensor.exp, Tensor.log, Tensor.sqrt, Tensor.tanh = exp, log, sqrt, tanh
Tensor.sigmoid, Tensor.relu, Tensor.abs, Tensor.clip = sigmoid, relu, abs, clip
Tensor.astype = astype
