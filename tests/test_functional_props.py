"""Algebraic properties of the nn ops (independent of any reference implementation)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigen.functional as F
from minigen import Tensor, default_dtype
from tests import strategies as S


def t64(a: np.ndarray, grad: bool = False) -> Tensor:
    return Tensor(a, dtype=np.float64, requires_grad=grad)


@given(S.arrays(S.shapes(min_dims=1), -20, 20), S.floats(-50, 50))
def test_softmax_rows_sum_to_one_and_are_shift_invariant(x, c):
    y = F.softmax(t64(x)).data
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-12)
    assert (y >= 0).all()
    np.testing.assert_allclose(F.softmax(t64(x + c)).data, y, atol=1e-12)


@given(S.arrays(S.shapes(min_dims=1), -20, 20))
def test_log_softmax_is_log_of_softmax(x):
    np.testing.assert_allclose(
        F.log_softmax(t64(x)).data, np.log(F.softmax(t64(x)).data), atol=1e-10
    )


def test_softmax_of_huge_scores_does_not_overflow():
    y = F.softmax(Tensor([[1000.0, 0.0, -1000.0]])).data
    assert np.isfinite(y).all() and y[0, 0] == pytest.approx(1.0)
    assert np.isfinite(F.log_softmax(Tensor([[1e4, -1e4]])).data).all()


@given(S.arrays(st.tuples(st.integers(1, 4), st.integers(2, 8)), -10, 10))
def test_layer_norm_output_has_zero_mean_unit_variance(x):
    x = x + np.linspace(0, 1, x.shape[-1])  # avoid constant rows (no variance to normalise)
    y = F.layer_norm(t64(x), eps=0.0).data
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-9)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-6)


@given(S.arrays(st.tuples(st.integers(1, 5), st.integers(2, 6)), -5, 5), st.data())
def test_cross_entropy_is_minus_log_softmax_at_the_target(x, data):
    targets = np.array(
        data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=len(x), max_size=len(x)))
    )
    loss = F.cross_entropy(t64(x), targets, reduction="none").data
    logp = F.log_softmax(t64(x)).data
    np.testing.assert_allclose(loss, -logp[np.arange(len(x)), targets], atol=1e-12)
    mean = F.cross_entropy(t64(x), targets).item()
    assert mean == pytest.approx(loss.mean(), abs=1e-12)


def test_cross_entropy_ignore_index_leaves_those_positions_out():
    x = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([0, -100, 2, -100])
    xt = t64(x, grad=True)
    loss = F.cross_entropy(xt, t)
    assert loss.item() == pytest.approx(F.cross_entropy(t64(x[[0, 2]]), t[[0, 2]]).item())
    loss.backward()
    assert (xt.grad[[1, 3]] == 0).all() and (xt.grad[[0, 2]] != 0).all()
    with pytest.raises(ValueError, match="outside"):
        F.cross_entropy(t64(x), np.array([0, 3, 1, 1]))
    with pytest.raises(ValueError, match="integer"):
        F.cross_entropy(t64(x), np.zeros(4))


def test_causal_attention_does_not_look_ahead():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 5, 4)) for _ in range(3))
    y = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), is_causal=True).data
    k2, v2 = k.copy(), v.copy()
    k2[..., 3:, :] += 10.0  # change the future of positions 0..2
    v2[..., 3:, :] -= 7.0
    y2 = F.scaled_dot_product_attention(t64(q), t64(k2), t64(v2), is_causal=True).data
    np.testing.assert_allclose(y[..., :3, :], y2[..., :3, :], atol=1e-12)
    assert not np.allclose(y[..., 3:, :], y2[..., 3:, :])


def test_attention_with_cached_keys_equals_the_last_rows_of_full_attention():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 6, 3)) for _ in range(3))
    full = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), is_causal=True).data
    last = F.scaled_dot_product_attention(t64(q[:, 4:]), t64(k), t64(v), is_causal=True).data
    np.testing.assert_allclose(last, full[:, 4:], atol=1e-12)


def test_attention_boolean_mask_equals_additive_mask():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((3, 4, 2)) for _ in range(3))
    mask = rng.random((4, 4)) > 0.3
    mask[:, 0] = True
    y1 = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), attn_mask=mask).data
    y2 = F.scaled_dot_product_attention(
        t64(q), t64(k), t64(v), attn_mask=np.where(mask, 0, -np.inf)
    ).data
    np.testing.assert_allclose(y1, y2, atol=1e-12)


def test_dropout_scales_kept_entries_and_is_identity_in_eval():
    x = Tensor(np.ones((200, 50)))
    y = F.dropout(x, 0.25, gen=np.random.default_rng(0)).data
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    assert abs(kept.mean() - 0.75) < 0.02
    assert F.dropout(x, 0.25, training=False) is x
    with pytest.raises(ValueError, match="dropout"):
        F.dropout(x, 1.5)


@given(S.arrays(S.shapes(), -30, 30))
def test_logsigmoid_is_log_of_sigmoid(x):
    np.testing.assert_allclose(
        F.logsigmoid(t64(x)).data, np.log(F.sigmoid(t64(x)).data), rtol=1e-10, atol=1e-12
    )


def test_gelu_tanh_approximation_is_close_to_exact():
    x = t64(np.linspace(-5, 5, 101))
    assert np.abs(F.gelu(x).data - F.gelu(x, "tanh").data).max() < 1e-3
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, "fast")


def test_conv2d_with_a_one_by_one_kernel_is_a_channel_mix():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((6, 3, 1, 1))
    y = F.conv2d(t64(x), t64(w)).data
    np.testing.assert_allclose(y, np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0]), atol=1e-12)
    with pytest.raises(ValueError, match=r"conv2d: input of shape \(2, 3, 4, 5\)"):
        F.conv2d(t64(x), t64(rng.standard_normal((6, 2, 1, 1))))


def test_upsample_then_pool_is_identity():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    with default_dtype(np.float64):
        np.testing.assert_allclose(F.avg_pool2d(F.upsample_nearest2d(Tensor(x))).data, x)
