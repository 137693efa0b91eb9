"""Noise schedules and the forward process of §7.2 (minigen.diffusion.schedule).

Statistical checks use a fixed seed and tolerances of 4-5 standard errors for the
sample size used (stated next to each), so they are deterministic and not fragile.
"""

import math
import re

import numpy as np
import pytest
from hypothesis import given
from scipy import stats

from minigen.diffusion import NoiseSchedule, cosine_betas, linear_betas
from minigen.diffusion.data import load_toy2d
from tests import strategies as S

SCHEDULES = {name: NoiseSchedule.make(name) for name in ("linear", "cosine")}


# ----------------------------------------------------------------------------- the schedules


def test_linear_betas_run_from_1e4_to_002_evenly():
    b = linear_betas(1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) / 999, rtol=1e-9)


@given(req=S.timestep_requests())
def test_cosine_abar_follows_the_squared_cosine_until_the_clip(req):
    T, t = req[0], req[1] - 1  # any T and any timestep 0 .. T-1
    abar = NoiseSchedule(cosine_betas(T)).alphas_cumprod[t]
    f = lambda u: math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = cosine_betas(T)
    if np.all(betas[: t + 1] < 0.999):  # unclipped: abar_t = f(t+1) / f(0)
        assert abar == pytest.approx(f(t + 1) / f(0), rel=1e-9, abs=1e-300)


def test_cosine_clips_the_last_betas_at_0999():
    b = cosine_betas(1000)
    assert b.max() == 0.999 and b[-1] == 0.999
    assert np.all(np.diff(b) >= 0)  # the noise grows along the chain


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_arrays_are_float64_readonly_and_derived_from_betas(name):
    s = SCHEDULES[name]
    for arr in (s.betas, s.alphas, s.alphas_cumprod, s.posterior_variance,
                s.posterior_mean_coef1, s.posterior_mean_coef2):  # fmt: skip
        assert arr.dtype == np.float64 and arr.shape == (1000,)
        with pytest.raises(ValueError):
            arr[0] = 0.5
    np.testing.assert_array_equal(s.alphas, 1 - s.betas)
    assert s.num_train_timesteps == len(s) == 1000


@given(name=S.schedule_names(), t=S.timesteps())
def test_abar_is_the_product_of_the_alphas(name, t):
    s = SCHEDULES[name]
    assert s.alphas_cumprod[t] == pytest.approx(math.prod(s.alphas[: t + 1]), rel=1e-12)
    prev = s.alphas_cumprod_prev[t]
    assert prev == (1.0 if t == 0 else s.alphas_cumprod[t - 1])


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_abar_decreases_from_near_one_to_near_zero(name):
    abar = SCHEDULES[name].alphas_cumprod
    assert np.all(np.diff(abar) < 0) and np.all((abar > 0) & (abar < 1))
    assert abar[0] > 0.999 and abar[-1] < 1e-4  # x_T is nearly pure noise


@given(name=S.schedule_names(), t=S.timesteps())
def test_posterior_identities(name, t):
    s = SCHEDULES[name]
    abar, prev = s.alphas_cumprod[t], s.alphas_cumprod_prev[t]
    c1, c2, var = s.posterior_mean_coef1[t], s.posterior_mean_coef2[t], s.posterior_variance[t]
    # a noiseless x_t = sqrt(abar_t) x_0 steps back to the noiseless sqrt(abar_{t-1}) x_0
    assert c1 + c2 * math.sqrt(abar) == pytest.approx(math.sqrt(prev), rel=1e-12)
    # total variance: Var(x_{t-1} | x_0) = Var(E[x_{t-1} | x_t, x_0]) + E[Var(x_{t-1} | x_t, x_0)]
    assert c2**2 * (1 - abar) + var == pytest.approx(1 - prev, rel=1e-9, abs=1e-15)
    assert 0 <= var <= s.betas[t]  # betatilde <= beta: Ho et al.'s two bounds on sigma^2


def test_the_first_step_back_has_no_posterior_variance():
    for s in SCHEDULES.values():
        assert s.posterior_variance[0] == 0.0  # x_0 is known once x_0 is given


@given(name=S.schedule_names(), t=S.timesteps(), x0=S.floats(), xt=S.floats())
def test_q_posterior_is_gaussian_conditioning_of_the_joint(name, t, x0, xt):
    """q(x_{t-1} | x_t, x_0) against conditioning the joint Gaussian of (x_{t-1}, x_t) | x_0."""
    s = SCHEDULES[name]
    abar, prev, alpha = s.alphas_cumprod[t], s.alphas_cumprod_prev[t], s.alphas[t]
    # x_{t-1} = sqrt(prev) x0 + sqrt(1 - prev) e1;  x_t = sqrt(alpha) x_{t-1} + sqrt(1 - alpha) e2
    m1, m2 = math.sqrt(prev) * x0, math.sqrt(abar) * x0
    s11, s12, s22 = 1 - prev, math.sqrt(alpha) * (1 - prev), 1 - abar
    mean, var = s.q_posterior(np.array([x0]), np.array([xt]), t)
    assert mean[0] == pytest.approx(m1 + s12 / s22 * (xt - m2), rel=1e-9, abs=1e-12)
    assert var == pytest.approx(s11 - s12**2 / s22, rel=1e-9, abs=1e-15)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad, k", [([0.1, 0.2, 0.0], 2), ([1.0], 0), ([0.1, -0.1], 1),
                                    ([0.1, float("nan")], 1), ([0.5, 1.5, 2.0], 1)])  # fmt: skip
def test_betas_outside_0_1_are_named(bad, k):
    with pytest.raises(ValueError, match=rf"betas\[{k}\]"):
        NoiseSchedule(bad)


@pytest.mark.parametrize("make", [lambda: NoiseSchedule([]), lambda: linear_betas(0),
                                  lambda: cosine_betas(-3), lambda: NoiseSchedule([[0.1]]),
                                  lambda: NoiseSchedule.make("quadratic")])  # fmt: skip
def test_bad_schedules_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_t_equal_one_is_a_valid_schedule():
    s = NoiseSchedule.make("linear", 1)
    assert s.betas.tolist() == [1e-4] and s.alphas_cumprod[0] == 1 - 1e-4


@pytest.mark.parametrize("t", [1000, -1, np.array([0, 1000])])
def test_timesteps_out_of_range(t):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="out of range"):
        SCHEDULES["linear"].add_noise(x, x, t)


@pytest.mark.parametrize("t", [1.0, np.array([0.5, 1.0]), True])
def test_timesteps_must_be_integers(t):
    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match="integers"):
        SCHEDULES["linear"].add_noise(x, x, t)


@pytest.mark.parametrize("t", [np.array([1, 2, 3]), np.array([[1, 2]])])
def test_one_timestep_per_sample(t):
    x = np.zeros((2, 3))
    with pytest.raises(
        ValueError, match=rf"timesteps {re.escape(str(t.shape))} for samples \(2, 3\)"
    ):
        SCHEDULES["linear"].add_noise(x, x, t)


def test_noise_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 2\)"):
        SCHEDULES["linear"].add_noise(np.zeros((2, 3)), np.zeros((3, 2)), 5)


# ----------------------------------------------------------------------------- the forward process


@given(name=S.schedule_names(), t=S.timestep_batches())
def test_add_noise_broadcasts_one_timestep_per_sample(name, t):
    s, g = SCHEDULES[name], np.random.default_rng(0)
    x0, eps = g.standard_normal((len(t), 3, 2)), g.standard_normal((len(t), 3, 2))  # (B, 3, 2)
    out = s.add_noise(x0, eps, np.array(t))
    for b, tb in enumerate(t):
        a = s.alphas_cumprod[tb]
        np.testing.assert_allclose(out[b], math.sqrt(a) * x0[b] + math.sqrt(1 - a) * eps[b])


def test_add_noise_keeps_float32():
    x = np.ones((4, 2), dtype=np.float32)
    assert SCHEDULES["cosine"].add_noise(x, x, np.array([1, 2, 3, 4])).dtype == np.float32
    assert SCHEDULES["cosine"].forward_step(x, x, 7).dtype == np.float32


def test_one_forward_step_keeps_unit_variance():
    """x_{t+1} = sqrt(1 - beta) x_t + sqrt(beta) eps: the variance stays 1 (N = 200k, SE 0.3%)."""
    g = np.random.default_rng(1)
    x = g.standard_normal(200_000) * 1.0
    s = NoiseSchedule([0.3])  # a large beta, so a wrong weight would show
    y = s.forward_step(x, g.standard_normal(x.shape), 0)
    assert y.var() == pytest.approx(1.0, abs=5 * math.sqrt(2 / x.size))
    assert np.corrcoef(x, y)[0, 1] == pytest.approx(math.sqrt(0.7), abs=0.01)


def test_diffuse_returns_the_whole_chain_and_is_reproducible():
    s, x0 = SCHEDULES["linear"], np.zeros((5, 2))
    path = s.diffuse(x0, 10, generator=np.random.default_rng(3), return_all=True)
    assert len(path) == 11 and path[0] is x0
    np.testing.assert_array_equal(path[-1], s.diffuse(x0, 10, generator=np.random.default_rng(3)))
    with pytest.raises(ValueError, match="num_steps"):
        s.diffuse(x0, 1001)


@pytest.mark.parametrize("name, k", [("linear", 49), ("linear", 399), ("cosine", 199)])
def test_step_by_step_and_closed_form_agree_in_distribution(name, k):
    """k+1 small noising steps of two moons against one jump by add_noise(x0, eps, k).

    N = 4000 points (8000 coordinates): the mean's standard error is 1/sqrt(8000) = 0.011,
    the variance's sqrt(2/8000) = 0.016; bounds are 4-5 of those.
    """
    s, g = SCHEDULES[name], np.random.default_rng(10 + k)
    x0 = load_toy2d("moons", 4000, seed=k).x.astype(np.float64)  # (N, 2), mean 0, var 1
    seq = s.diffuse(x0, k + 1, generator=g)  # (N, 2)
    closed = s.add_noise(x0, g.standard_normal(x0.shape), k)  # (N, 2)
    a = s.alphas_cumprod[k]
    # the noise the chain accumulated, scaled to unit variance: N(0, 1) and independent of x0
    r = (seq - math.sqrt(a) * x0) / math.sqrt(1 - a)  # (N, 2)
    assert abs(r.mean()) < 4 / math.sqrt(r.size)
    assert r.var() == pytest.approx(1.0, abs=5 * math.sqrt(2 / r.size))
    assert abs(np.corrcoef(r.ravel(), x0.ravel())[0, 1]) < 4 / math.sqrt(r.size)
    assert stats.kstest(r.ravel(), "norm").pvalue > 1e-3
    for j in range(2):  # the two samples of x_k, coordinate by coordinate
        assert stats.ks_2samp(seq[:, j], closed[:, j]).pvalue > 1e-3
    np.testing.assert_allclose(np.cov(seq.T), np.cov(closed.T), atol=0.1)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_x_T_of_normalised_data_is_standard_normal(name):
    """After all T steps, normalised spirals look like N(0, I) (N = 4000, SE 0.016 for the mean)."""
    s = SCHEDULES[name]
    x0 = load_toy2d("spirals", 4000, seed=1).x.astype(np.float64)
    xT = s.diffuse(x0, generator=np.random.default_rng(5))  # (N, 2)
    np.testing.assert_allclose(xT.mean(0), 0, atol=4 / math.sqrt(len(xT)))
    np.testing.assert_allclose(np.cov(xT.T), np.eye(2), atol=5 * math.sqrt(2 / len(xT)))
    assert stats.kstest(xT[:, 0], "norm").pvalue > 1e-3
