"""The NumPy references (minigen_kernels/reference.py) are right: identities, central differences,
the DDPM posterior mean, and PyTorch float64 as an oracle when it is installed.

The parity suite holds every kernel to these references, so they are checked here
against the math itself, in float64.
"""

from __future__ import annotations

import math

import minigen_kernels as mk
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import strategies as S

ref = mk.get("numpy")
f64 = np.float64


def arrays(shape_strategy, n: int = 1, scales=(1.0,)):
    """n float64 arrays of one drawn shape."""
    return shape_strategy.flatmap(
        lambda s: st.tuples(*(S.kernel_arrays(s, f64, scales) for _ in range(n)))
    )


SMALL_ROWS = S.row_shapes(max_lead=2, max_side=3, max_cols=9)


def directional_derivative(f, inputs, directions, h=1e-6):
    """(f(x + h v) - f(x - h v)) / 2h for a scalar function f of several arrays."""
    plus = f(*(x + h * v for x, v in zip(inputs, directions, strict=True)))
    minus = f(*(x - h * v for x, v in zip(inputs, directions, strict=True)))
    return (plus - minus) / (2 * h)


def assert_gradients(f, inputs, grads, seed=0):
    """<grad, v> summed over the inputs equals the central difference of f along v."""
    rng = np.random.default_rng(seed)
    directions = [rng.standard_normal(x.shape) for x in inputs]
    numeric = directional_derivative(f, inputs, directions)
    analytic = sum(float(np.sum(g * v)) for g, v in zip(grads, directions, strict=True))
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-7)


# ----------------------------------------------------------------------------- identities


@given(xs=arrays(SMALL_ROWS, 2, scales=(1.0, 30.0)))
def test_softmax_is_a_distribution_and_shift_invariant(xs):
    x, shift = xs
    y = ref.softmax_forward(x)
    assert np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-12)
    # softmax(x + c) = softmax(x) for any c per row
    np.testing.assert_allclose(ref.softmax_forward(x + shift[..., :1]), y, atol=1e-12)
    # log-softmax = log(softmax), and its exps sum to 1 (log-sum-exp of it is 0)
    ly = ref.log_softmax_forward(x)
    np.testing.assert_allclose(np.exp(ly).sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(ly[y > 1e-300], np.log(y[y > 1e-300]), atol=1e-9)


def test_softmax_survives_huge_and_masked_inputs():
    x = np.array([[1e4, 1e4 - 1, -np.inf], [-1e4, -np.inf, -1e4]])
    y = ref.softmax_forward(x)
    np.testing.assert_allclose(y[0], [1 / (1 + math.exp(-1)), 1 / (1 + math.e), 0.0])
    np.testing.assert_allclose(y[1], [0.5, 0.0, 0.5])
    assert ref.log_softmax_forward(x)[0, 2] == -np.inf


@given(shape=S.causal_shapes(max_t=6), seed=st.integers(0, 2**32 - 1))
def test_causal_softmax_sees_exactly_the_keys_up_to_its_position(shape, seed):
    s = np.random.default_rng(seed).standard_normal(shape)
    t, n = shape[-2:]
    y = ref.causal_softmax_forward(s, 0.5)
    for i in range(t):
        seen = i + (n - t) + 1  # keys j <= i + (S - T)
        np.testing.assert_allclose(y[..., i, :seen], ref.softmax_forward(0.5 * s[..., i, :seen]))
        assert np.all(y[..., i, seen:] == 0)
    # the last query sees every key: a plain softmax
    np.testing.assert_allclose(y[..., -1, :], ref.softmax_forward(0.5 * s[..., -1, :]))


@given(xs=arrays(S.row_shapes(max_lead=2, max_side=3, max_cols=12), 3),
       alpha=st.floats(0.9, 0.9999), abar_prev=st.floats(0.01, 1.0))  # fmt: skip
def test_ddpm_step_mean_is_the_posterior_mean_of_x_prev(xs, alpha, abar_prev):
    """With x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, the step's mean is mu~(x_t, x0)."""
    x0, eps, z = xs
    beta, abar = 1.0 - alpha, abar_prev * alpha  # abar_t = abar_{t-1} alpha_t
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    mean = ref.ddpm_step(x_t, eps, None, beta, alpha, abar, 0.0)
    # mu~ = sqrt(abar_{t-1}) beta / (1 - abar) x0 + sqrt(alpha) (1 - abar_{t-1}) / (1 - abar) x_t
    mu = (math.sqrt(abar_prev) * beta * x0 + math.sqrt(alpha) * (1 - abar_prev) * x_t) / (1 - abar)
    np.testing.assert_allclose(mean, mu, rtol=1e-9, atol=1e-9)
    # the noise enters linearly: + sigma z
    step = ref.ddpm_step(x_t, eps, z, beta, alpha, abar, 0.3)
    np.testing.assert_allclose(step - mean, 0.3 * z, atol=1e-12)


@given(xs=arrays(S.row_shapes(max_lead=2, max_side=3, max_cols=40), 1, scales=(1.0, 1e3)))
def test_layer_norm_standardises_each_row(xs):
    (x,) = xs
    c = x.shape[-1]
    y, mean, rstd = ref.layer_norm_forward(x, np.ones(c), np.zeros(c), eps=0.0 if c > 1 else 1e-5)
    np.testing.assert_allclose(mean, x.mean(axis=-1), rtol=1e-12, atol=1e-9)
    if c > 1:  # eps = 0: each row of y has mean 0 and variance 1
        np.testing.assert_allclose(rstd, 1 / x.std(axis=-1), rtol=1e-9)
        np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-9)
        np.testing.assert_allclose((y * y).mean(axis=-1), 1.0, rtol=1e-9)


@given(xs=arrays(SMALL_ROWS, 1, scales=(1.0, 4.0)))
def test_gelu_identities(xs):
    (x,) = xs
    for approximate in ("tanh", "none"):
        # Phi(x) + Phi(-x) = 1 (and the tanh form is odd in u), so gelu(x) - gelu(-x) = x
        g = ref.gelu_forward(x, approximate)
        np.testing.assert_allclose(g - ref.gelu_forward(-x, approximate), x, atol=1e-12)
    # the tanh approximation stays within 1e-3 of the exact GELU
    assert np.all(np.abs(ref.gelu_forward(x, "tanh") - ref.gelu_forward(x, "none")) < 1e-3)


@given(shapes=S.matmul_2d_shapes(max_side=70), seed=st.integers(0, 2**32 - 1))
def test_matmul_references_are_the_product(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(s) for s in shapes)
    np.testing.assert_allclose(ref.matmul_naive(a, b), a @ b, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ref.matmul_tiled(a, b), a @ b, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- central differences


@given(xs=arrays(SMALL_ROWS, 2))
def test_softmax_backwards_match_central_differences(xs):
    x, dy = xs
    for name in ("softmax", "log_softmax"):
        forward, backward = getattr(ref, f"{name}_forward"), getattr(ref, f"{name}_backward")
        grad = backward(forward(x), dy)
        assert_gradients(lambda x, f=forward: np.sum(dy * f(x)), [x], [grad])


@given(xs=arrays(S.causal_shapes(max_t=5), 2), scale=st.sampled_from([1.0, 0.35]))
def test_causal_softmax_backward_matches_central_differences(xs, scale):
    s, dy = xs
    y = ref.causal_softmax_forward(s, scale)
    grad = ref.causal_softmax_backward(y, dy, scale)
    assert_gradients(lambda s: np.sum(dy * ref.causal_softmax_forward(s, scale)), [s], [grad])


@given(xs=arrays(SMALL_ROWS, 2), wb=st.integers(0, 2**32 - 1))
def test_layer_norm_backward_matches_central_differences(xs, wb):
    x, dy = xs
    w, b = np.random.default_rng(wb).standard_normal((2, x.shape[-1]))
    _, mean, rstd = ref.layer_norm_forward(x, w, b)
    grads = ref.layer_norm_backward(dy, x, w, mean, rstd)

    def loss(x, w, b):
        return np.sum(dy * ref.layer_norm_forward(x, w, b)[0])

    assert_gradients(loss, [x, w, b], grads)


@given(xs=arrays(SMALL_ROWS, 2, scales=(1.0, 3.0)), approximate=st.sampled_from(["tanh", "none"]))
def test_gelu_backward_matches_central_differences(xs, approximate):
    x, dy = xs
    grad = ref.gelu_backward(x, dy, approximate)
    assert_gradients(lambda x: np.sum(dy * ref.gelu_forward(x, approximate)), [x], [grad])


@given(shapes=S.matmul_2d_shapes(max_side=9), seed=st.integers(0, 2**32 - 1))
def test_matmul_backward_matches_central_differences(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(s) for s in shapes)
    dc = rng.standard_normal((a.shape[0], b.shape[1]))
    assert_gradients(lambda a, b: np.sum(dc * (a @ b)), [a, b], ref.matmul_backward(a, b, dc))


# ----------------------------------------------------------------------------- PyTorch oracle


@pytest.mark.oracle
@given(xs=arrays(SMALL_ROWS, 2, scales=(1.0, 3.0)), seed=st.integers(0, 2**32 - 1))
def test_references_match_pytorch_float64(xs, seed):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, dy = xs
    w, b = np.random.default_rng(seed).standard_normal((2, x.shape[-1]))
    cases = {
        "softmax": (lambda t: F.softmax(t, dim=-1), ref.softmax_forward, ref.softmax_backward),
        "log_softmax": (
            lambda t: F.log_softmax(t, dim=-1),
            ref.log_softmax_forward,
            ref.log_softmax_backward,
        ),
    }
    for torch_f, forward, backward in cases.values():
        t = torch.tensor(x, requires_grad=True)
        out = torch_f(t)
        out.backward(torch.tensor(dy))
        y = forward(x)
        np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(backward(y, dy), t.grad.numpy(), rtol=1e-10, atol=1e-12)
    for approximate in ("tanh", "none"):
        t = torch.tensor(x, requires_grad=True)
        out = F.gelu(t, approximate=approximate)
        out.backward(torch.tensor(dy))
        y, grad = ref.gelu_forward(x, approximate), ref.gelu_backward(x, dy, approximate)
        np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)
    t, tw, tb = (torch.tensor(v, requires_grad=True) for v in (x, w, b))
    out = F.layer_norm(t, (x.shape[-1],), tw, tb, eps=1e-5)
    out.backward(torch.tensor(dy))
    y, mean, rstd = ref.layer_norm_forward(x, w, b, eps=1e-5)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    grads = ref.layer_norm_backward(dy, x, w, mean, rstd)
    for g, tg in zip(grads, (t.grad, tw.grad, tb.grad), strict=True):
        np.testing.assert_allclose(g, tg.numpy(), rtol=1e-9, atol=1e-10)
