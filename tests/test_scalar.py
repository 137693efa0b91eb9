"""The scalar engine of lesson 00 agrees with the tensor engine."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from minigen import Tensor, default_dtype
from minigen.scalar import Value
from tests import strategies as S


@given(S.floats(-2, 2), S.floats(-2, 2))
def test_scalar_and_tensor_engines_give_the_same_gradients(a, b):
    va, vb = Value(a), Value(b)
    out = ((va * vb + va**2).tanh() - vb.exp() / 3.0) * 2.0
    out.backward()
    with default_dtype(np.float64):
        ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
        tout = ((ta * tb + ta**2).tanh() - tb.exp() / 3.0) * 2.0
        tout.backward()
    assert np.isclose(out.data, tout.item(), atol=1e-12)
    assert np.isclose(va.grad, ta.grad, atol=1e-10) and np.isclose(vb.grad, tb.grad, atol=1e-10)
