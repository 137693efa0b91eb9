"""RLHF's objectives: Bradley-Terry, DPO, PPO's clipped surrogate, GAE and the KL estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen import Tensor, default_dtype
from minigen.gradcheck import gradcheck
from minigen.rlhf.losses import (
    bradley_terry_loss,
    dpo_loss,
    gae,
    kl_per_token,
    kl_rewards,
    ppo_clip_loss,
    sequence_kl,
    value_loss,
    whiten,
)
from tests.strategies import arrays, floats

# ----------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_hand_computed():
    # margins r+ - r- = 1 and -1: losses log(1 + e^-1) = 0.3132617, log(1 + e^1) = 1.3132617
    loss = bradley_terry_loss(Tensor([1.0, -0.5]), Tensor([0.0, 0.5]))
    assert loss.item() == pytest.approx((0.31326169 + 1.31326169) / 2, rel=1e-6)
    # equal rewards: P(y+ > y-) = 1/2, loss log 2
    assert bradley_terry_loss(Tensor([3.0]), Tensor([3.0])).item() == pytest.approx(math.log(2))


@given(arrays(st.integers(1, 6)), st.data())
def test_bradley_terry_gradcheck(r_chosen, data):
    r_rejected = data.draw(arrays(r_chosen.shape))
    gradcheck(bradley_terry_loss, r_chosen, r_rejected)


def test_bradley_terry_depends_on_the_margin_only_and_decreases_with_it():
    a = bradley_terry_loss(Tensor([2.0]), Tensor([1.0])).item()
    b = bradley_terry_loss(Tensor([12.0]), Tensor([11.0])).item()
    c = bradley_terry_loss(Tensor([3.0]), Tensor([1.0])).item()
    assert a == pytest.approx(b, rel=1e-6) and c < a


def test_bradley_terry_refuses_an_empty_batch_and_mismatched_shapes():
    with pytest.raises(ValueError, match="no preference pairs"):
        bradley_terry_loss(Tensor(np.zeros(0)), Tensor(np.zeros(0)))
    with pytest.raises(ValueError, match=r"\(2,\) and \(3,\)"):
        bradley_terry_loss(Tensor(np.zeros(2)), Tensor(np.zeros(3)))


# ----------------------------------------------------------------------------- DPO


def test_dpo_hand_computed():
    # margin = (-1 - -1.5) - (-2 - -1) = 1.5; beta margin = 0.75; loss = log(1 + e^-0.75)
    loss = dpo_loss(Tensor([-1.0]), Tensor([-2.0]), np.array([-1.5]), np.array([-1.0]), beta=0.5)
    assert loss.item() == pytest.approx(0.38687101, rel=1e-6)


def test_dpo_at_the_reference_is_log_2_and_its_gradient_is_beta_over_2():
    # pi = pi_ref: every margin is 0, loss log 2, d loss / d log pi(y+) = -beta sigmoid(0) / B
    with default_dtype(np.float64):
        lc, lr = Tensor([-3.0, -1.0], requires_grad=True), Tensor([-2.0, -4.0], requires_grad=True)
        loss = dpo_loss(lc, lr, lc.data.copy(), lr.data.copy(), beta=0.2)
        loss.backward()
    assert loss.item() == pytest.approx(math.log(2))
    np.testing.assert_allclose(lc.grad, [-0.05, -0.05])
    np.testing.assert_allclose(lr.grad, [0.05, 0.05])


@given(arrays(st.integers(1, 5), -5, 0), st.data(), floats(0.05, 2.0))
def test_dpo_gradcheck(logp_chosen, data, beta):
    logp_rejected = data.draw(arrays(logp_chosen.shape, -5, 0))
    ref_c, ref_r = (
        data.draw(arrays(logp_chosen.shape, -5, 0)),
        data.draw(arrays(logp_chosen.shape, -5, 0)),
    )
    gradcheck(lambda c, r: dpo_loss(c, r, ref_c, ref_r, beta), logp_chosen, logp_rejected)


def test_dpo_refuses_an_empty_batch_and_mismatched_shapes():
    z = np.zeros(0)
    with pytest.raises(ValueError, match="no preference pairs"):
        dpo_loss(Tensor(z), Tensor(z), z, z)
    with pytest.raises(ValueError, match="different shapes"):
        dpo_loss(Tensor(np.zeros(2)), Tensor(np.zeros(2)), np.zeros(3), np.zeros(2))


# ----------------------------------------------------------------------------- PPO


def _clip_grad(logp_new, logp_old, adv, mask, eps=0.2):
    with default_dtype(np.float64):
        lp = Tensor(logp_new, requires_grad=True)
        loss = ppo_clip_loss(lp, logp_old, adv, mask, eps)
        loss.backward()
    return loss.item(), lp.grad


@given(arrays((2, 3), -3, 3), arrays((2, 3), -4, 0))
def test_ppo_clip_equals_policy_gradient_at_ratio_one(adv, logp):
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=float)
    value, grad = _clip_grad(logp, logp.copy(), adv, mask)
    # at rho = 1 the surrogate is -mean(A rho) = -mean(A), and its gradient is that of the
    # plain policy-gradient objective -mean(A log pi): -A / n on every counted token
    n = mask.sum()
    assert value == pytest.approx(-(adv * mask).sum() / n, abs=1e-12)
    np.testing.assert_allclose(grad, -adv * mask / n, atol=1e-12)


@given(floats(0.3, 2.0), floats(0.1, 3.0))
def test_ppo_clip_has_no_gradient_outside_the_clip_range(log_excess, a):
    eps = 0.2
    old = np.zeros((1, 2))
    mask = np.ones((1, 2))
    up, down = math.log(1 + eps) + log_excess, math.log(1 - eps) - log_excess  # rho out of range
    # A > 0 and rho > 1 + eps, or A < 0 and rho < 1 - eps: the clipped term is the minimum
    _, g = _clip_grad(np.array([[up, down]]), old, np.array([[a, -a]]), mask, eps)
    np.testing.assert_array_equal(g, 0.0)
    # the other way round the unclipped term is the minimum: the gradient pulls back
    _, g = _clip_grad(np.array([[up, down]]), old, np.array([[-a, a]]), mask, eps)
    assert np.all(np.abs(g) > 0)


def test_ppo_clip_ignores_tokens_outside_the_mask():
    mask = np.array([[1.0, 0.0]])
    _, g = _clip_grad(np.array([[0.1, 0.1]]), np.zeros((1, 2)), np.ones((1, 2)), mask)
    assert g[0, 1] == 0 and g[0, 0] != 0


def test_value_loss_is_half_the_squared_error_near_the_old_values():
    with default_dtype(np.float64):
        v = Tensor([[0.1, 0.0]], requires_grad=True)
        loss = value_loss(v, np.zeros((1, 2)), np.array([[1.0, 2.0]]), np.ones((1, 2)))
    assert loss.item() == pytest.approx(0.5 * (0.9**2 + 2.0**2) / 2)


# ----------------------------------------------------------------------------- GAE and rewards


def test_gae_with_lambda_one_is_the_return_to_go_minus_the_value():
    rewards = np.array([[0.0, 1.0, 2.0, 0.0]])
    values = np.array([[0.5, 0.2, -0.1, 9.0]])  # the last position is past the response
    mask = np.array([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(ret[0, :3], [3.0, 3.0, 2.0])
    np.testing.assert_allclose(adv[0, :3], [2.5, 2.8, 2.1])
    assert adv[0, 3] == 0


def test_gae_with_lambda_zero_is_the_td_error():
    rewards, values = np.array([[1.0, 2.0]]), np.array([[0.5, 0.25]])
    adv, _ = gae(rewards, values, np.ones((1, 2)), gamma=0.9, lam=0.0)
    # delta_t = r_t + gamma V_{t+1} - V_t, with V = 0 past the end
    np.testing.assert_allclose(adv, [[1.0 + 0.9 * 0.25 - 0.5, 2.0 - 0.25]])


def test_kl_rewards_put_the_score_on_the_last_response_token():
    mask = np.array([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    logp_old, logp_ref = np.full((2, 4), -1.0), np.full((2, 4), -1.5)
    r = kl_rewards(np.array([2.0, -1.0]), logp_old, logp_ref, mask, beta=0.1)
    # -beta (log pi_old - log pi_ref) = -0.05 on every response token
    np.testing.assert_allclose(r, [[0.0, -0.05, 1.95, 0.0], [-0.05, -0.05, -0.05, -1.05]])


def test_whiten_gives_zero_mean_unit_variance_on_the_mask():
    x = np.array([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    w = whiten(x, mask)
    vals = w[mask > 0]
    assert vals.mean() == pytest.approx(0, abs=1e-9) and vals.std() == pytest.approx(1, rel=1e-6)
    assert w[0, 2] == 0


# ----------------------------------------------------------------------------- KL


@given(arrays((2, 3, 5), -4, 4), arrays((2, 3, 5), -4, 4))
def test_kl_is_non_negative(logits, ref):
    assert np.all(kl_per_token(logits, ref) >= 0)


@given(arrays((2, 3, 5), -4, 4), floats(-3, 3))
def test_kl_of_identical_policies_is_zero(logits, shift):
    # the same distribution, whatever constant is added to the logits
    np.testing.assert_allclose(kl_per_token(logits, logits + shift), 0.0, atol=1e-12)


def test_kl_hand_computed_and_summed_over_the_response():
    p = np.log(np.array([[[0.5, 0.5], [0.9, 0.1]]]))  # (1, 2, 2)
    q = np.log(np.array([[[0.9, 0.1], [0.9, 0.1]]]))
    kl = kl_per_token(p, q)
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    np.testing.assert_allclose(kl, [[want, 0.0]], atol=1e-12)
    np.testing.assert_allclose(sequence_kl(p, q, np.array([[1.0, 0.0]])), [want])


def test_per_token_log_ratio_averages_to_the_kl():
    # E_{v ~ pi}[log pi(v) - log pi_ref(v)] = KL(pi || pi_ref): the reward's penalty, in mean
    rng = np.random.default_rng(0)
    lp, lq = rng.normal(size=6), rng.normal(size=6)
    p = np.exp(lp - np.log(np.exp(lp).sum()))
    draws = rng.choice(6, 200_000, p=p)
    logratio = (lp - np.log(np.exp(lp).sum())) - (lq - np.log(np.exp(lq).sum()))
    assert logratio[draws].mean() == pytest.approx(
        kl_per_token(lp[None, None], lq[None, None])[0, 0], abs=0.01
    )
