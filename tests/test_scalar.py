"""The scalar engine of lesson 00 agrees with the tensor engine."""

from __future__ import annotations

import numpy as np
import pytest
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


# Each expression a learner writes first, on a Value and on a Tensor alike: a plain number on
# either side of every operator, relu, ** with a constant or a Value exponent, log.
EXPRESSIONS = {
    "1 - a": lambda a, b: 1 - a,
    "2 / a": lambda a, b: 2 / a,
    "2 ** a": lambda a, b: 2**a,
    "0.5 ** a": lambda a, b: 0.5**a,
    "-a": lambda a, b: -a,
    "3 + a": lambda a, b: 3 + a,
    "3 * a": lambda a, b: 3 * a,
    "a - 1": lambda a, b: a - 1,
    "a / 4": lambda a, b: a / 4,
    "a ** 2": lambda a, b: a**2,
    "a ** 3": lambda a, b: a**3,
    "a ** -1": lambda a, b: a**-1,
    "a ** 0": lambda a, b: a**0,
    "relu(a)": lambda a, b: a.relu(),
    "relu(a - b) * a": lambda a, b: (a - b).relu() * a,
    "1 - relu(a) / (1 + b ** 2)": lambda a, b: 1 - a.relu() / (1 + b**2),
    "(a * a) ** 0.5": lambda a, b: (a * a) ** 0.5,
    "log(1 + a * a)": lambda a, b: (1 + a * a).log(),
    "(1 + a * a) ** b": lambda a, b: (1 + a * a) ** b,
    "2 ** (a * b) - 1 / (2 + a.tanh())": lambda a, b: 2 ** (a * b) - 1 / (2 + a.tanh()),
}


def _both(expr, a: float, b: float):
    va, vb = Value(a), Value(b)
    out = expr(va, vb)
    out.backward()
    with default_dtype(np.float64):
        ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
        tout = expr(ta, tb) + 0 * (ta + tb)  # both leaves in the graph, as each Value is
        tout.backward()
    return (out.data, va.grad, vb.grad), (tout.item(), ta.grad.item(), tb.grad.item())


@pytest.mark.parametrize("name", list(EXPRESSIONS))
@given(a=S.floats(-2, 2).filter(lambda x: abs(x) > 1e-3), b=S.floats(-2, 2))
def test_every_operator_matches_the_tensor_engine(name, a, b):
    """Values and both gradients, against minigen.Tensor (float64), for each expression."""
    ours, tensor = _both(EXPRESSIONS[name], a, b)
    np.testing.assert_allclose(ours, tensor, rtol=1e-9, atol=1e-9, err_msg=name)


def test_relu_at_zero_and_below_passes_no_gradient():
    for x in (-1.5, 0.0):
        v = Value(x)
        out = v.relu() * 3
        out.backward()
        assert out.data == 0.0 and v.grad == 0.0
    v = Value(0.25)
    (v.relu() * 3).backward()
    assert v.grad == 3.0


def test_reflected_operators_keep_the_number_first():
    v = Value(4.0)
    assert (1 - v).data == -3.0 and (2 / v).data == 0.5 and (2**v).data == 16.0
    assert (10 + v).data == 14.0 and (10 * v).data == 40.0 and (-v).data == -4.0
    assert (np.float32(1.0) - v).data == -3.0  # NumPy's scalars too


def test_what_has_no_real_answer_is_refused_clearly():
    with pytest.raises(ValueError, match="not a real number"):
        Value(-2.0) ** 0.5
    with pytest.raises(ValueError, match="base > 0"):
        Value(-2.0) ** Value(2.0)
    with pytest.raises(ValueError, match="number > 0"):
        Value(0.0).log()
    with pytest.raises(TypeError):
        Value(2.0) ** "3"
    with pytest.raises(TypeError):
        Value(Value(1.0))
