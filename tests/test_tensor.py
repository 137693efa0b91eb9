"""The backward engine: accumulation, graph handling, dtypes, no_grad, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

import minigen
import minigen.functional as F
from minigen import Tensor, default_dtype, no_grad
from minigen.shape_ops import concatenate, split
from tests import strategies as S


def test_float32_by_default_float64_on_request():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.zeros(3)).dtype == np.float32  # float64 arrays come in as the default
    assert Tensor(np.zeros(3), dtype=np.float64).dtype == np.float64
    with default_dtype(np.float64):
        assert Tensor([1.0]).dtype == np.float64
    assert Tensor(np.arange(3)).dtype.kind == "i"  # indices keep their integer type
    x = Tensor([1.0, 2.0])
    assert (x * 2.0).dtype == np.float32  # Python numbers do not promote


def test_gradients_accumulate_across_backward_calls():
    x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 3.0)


def test_a_tensor_used_twice_gets_both_gradients():
    x = Tensor([2.0], requires_grad=True)
    y = x * x + x  # dy/dx = 2x + 1
    y.backward(np.ones(1))
    np.testing.assert_allclose(x.grad, [5.0])


def test_diamond_graph_and_deep_chain():
    x = Tensor(np.ones(3), requires_grad=True)
    a, b = x * 2.0, x * 3.0
    (a * b).sum().backward()  # d(6 x^2)/dx = 12 x
    np.testing.assert_allclose(x.grad, 12.0)
    y = Tensor([1.0], requires_grad=True)
    z = y
    for _ in range(5000):  # deeper than Python's recursion limit
        z = z + 1.0
    z.backward(np.ones(1))
    np.testing.assert_allclose(y.grad, [1.0])


def test_shared_gradient_arrays_are_not_aliased():
    a = Tensor([1.0, 2.0], requires_grad=True)
    b = Tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()  # add hands the same array to both parents
    a.grad *= 10
    np.testing.assert_allclose(b.grad, [1.0, 1.0])


@given(S.broadcastable_shapes(2))
def test_broadcast_operand_gradient_is_the_sum_over_broadcast_axes(shapes):
    sa, sb = shapes
    with default_dtype(np.float64):
        a = Tensor(np.ones(sa), requires_grad=True)
        b = Tensor(np.ones(sb), requires_grad=True)
        out = a * b
        g = np.random.default_rng(0).standard_normal(out.shape)
        out.backward(g)
    assert a.grad.shape == sa and b.grad.shape == sb
    # d(sum g a b)/db_j = sum of g over the output entries that b_j was broadcast to (a = 1)
    expected = np.zeros(sb)
    for idx in np.ndindex(*out.shape):
        tail = idx[len(idx) - len(sb) :]
        expected[tuple(0 if n == 1 else i for i, n in zip(tail, sb, strict=True))] += g[idx]
    np.testing.assert_allclose(b.grad, expected, atol=1e-12)


def test_no_grad_records_nothing_and_detach_cuts_the_graph():
    x = Tensor([1.0], requires_grad=True)
    with no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.is_leaf
    z = (x * 2.0).detach() * x
    z.backward(np.ones(1))
    np.testing.assert_allclose(x.grad, [2.0])  # only the non-detached factor contributes

    @no_grad()
    def f(t):
        return t * 3.0

    assert not f(x).requires_grad


def test_retain_grad_keeps_intermediate_gradient():
    x = Tensor([1.0, 2.0], requires_grad=True)
    h = (x * 3.0).retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad, 2 * h.data)
    np.testing.assert_allclose(x.grad, 6 * h.data)


def test_backward_on_non_scalar_without_grad_is_a_clear_error():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"scalar.*shape \(2, 3\)"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\).*\(2, 3\)"):
        (x * 2.0).backward(np.ones(3))


def test_backward_twice_through_a_freed_graph_is_a_clear_error():
    x = Tensor([1.0], requires_grad=True)
    y = (x * x).exp()
    y.backward()
    with pytest.raises(RuntimeError, match="already freed"):
        y.backward()
    z = (x * x).exp()
    z.backward(retain_graph=True)
    z.backward()  # allowed once the first kept the graph
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor([1.0]).backward()


def test_shape_mismatch_errors_name_the_op_and_both_shapes():
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\)"):
        a @ b
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4, 5\)"):
        a + b
    with pytest.raises(ValueError, match=r"mul: shapes"):
        a * b
    with pytest.raises(
        ValueError, match=r"cross_entropy: logits of shape \(2, 3\).*\(2,\).*\(3,\)"
    ):
        F.cross_entropy(a, np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"reshape: cannot reshape shape \(2, 3\) into \(4,\)"):
        a.reshape(4)
    with pytest.raises(ValueError, match="concatenate"):
        concatenate([a, b], axis=0)
    with pytest.raises(ValueError, match="split"):
        split(a, 2, axis=1)


def test_int_tensor_cannot_require_grad():
    with pytest.raises(ValueError, match="float"):
        Tensor(np.arange(3), requires_grad=True)


def test_graph_is_freed_after_backward():
    import gc
    import weakref

    x = Tensor(np.ones(1000), requires_grad=True)
    h = x * 2.0
    ref = weakref.ref(h)
    loss = (h * h).sum()
    del h
    loss.backward()
    gc.collect()
    assert ref() is None  # the intermediate node is no longer held by the graph


def test_methods_and_conversions():
    x = Tensor([[1.0, -2.0], [3.0, 4.0]])
    assert x.shape == (2, 2) and x.ndim == 2 and x.size == 4 and len(x) == 2
    assert isinstance(x.numpy(), np.ndarray) and x.tolist() == [[1.0, -2.0], [3.0, 4.0]]
    assert x.sum().item() == 6.0 and float(x.max()) == 4.0
    assert x.argmax(-1).tolist() == [0, 1]
    assert (x > 0).numpy().tolist() == [[True, False], [True, True]]
    assert "Tensor(" in repr(x)
    minigen.manual_seed(3)
    a = minigen.rng.randn(4)
    minigen.manual_seed(3)
    np.testing.assert_array_equal(a, minigen.rng.randn(4))


def test_a_tensor_has_its_operators_when_only_tensor_py_is_imported():
    # the operators are set on Tensor by ops.py, reductions.py and shape_ops.py (tensor.py does
    # not import them: no cycle); `import minigen.tensor` runs minigen/__init__ first, which
    # imports them, so a user who imports only the class still gets every method
    import subprocess
    import sys

    code = (
        "from minigen.tensor import Tensor\n"
        "t = Tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)\n"
        "y = (2 - t) * 3 / (1 + t) ** 2 @ t.T + (-t)[0].reshape(1, 2).exp().log()\n"
        "y.sum().backward()\n"
        "print(t.grad.shape, y.mean().item() < 0, t.transpose().squeeze().shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(2,", "2)", "True", "(2,", "2)"]


def test_reflected_operators_put_the_other_operand_first():
    t = Tensor([2.0, 4.0])
    assert np.allclose((1 - t).numpy(), [-1.0, -3.0])
    assert np.allclose((8 / t).numpy(), [4.0, 2.0])
    assert np.allclose((2**t).numpy(), [4.0, 16.0])
    assert np.allclose((np.ones(2) @ t).numpy(), 6.0)
