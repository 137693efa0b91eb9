"""DDPM (Eq. 7.1) and DDIM samplers (minigen.diffusion.schedulers), without diffusers.

The distribution tests use the exact denoiser of Gaussian data: for x_0 ~ N(mu, s^2 I)
and x_t = sqrt(a) x_0 + sqrt(1 - a) eps (a = abar_t), (x_t, eps) are jointly Gaussian,
so the best prediction of the noise is linear in x_t:

    E[eps | x_t] = Cov(eps, x_t) / Var(x_t) (x_t - E x_t)
                 = sqrt(1 - a) / (a s^2 + 1 - a) (x_t - sqrt(a) mu).

Every step of a sampler is then affine in x_t plus Gaussian noise, so the law of its
output is exactly Gaussian and its two moments follow a short recursion (`exact_law`).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from scipy import stats

import minigen
from minigen.diffusion import DDIMScheduler, DDPMScheduler, NoiseSchedule, sample_loop
from minigen.diffusion.schedulers import ddpm_noise_step, make_timesteps, predict_eps, predict_x0
from tests import strategies as S

MU, STD = 0.5, 0.5  # the Gaussian data of the distribution tests


def gaussian_denoiser(scheduler, mu=MU, s=STD):
    """The exact epsilon-prediction for x_0 ~ N(mu, s^2 I)."""

    def eps(x_t, t):
        a = scheduler.alphas_cumprod[t]
        return math.sqrt(1 - a) / (a * s * s + 1 - a) * (x_t - math.sqrt(a) * mu)

    return eps


def exact_law(scheduler, mu=MU, s=STD, **step_kw):
    """Mean and variance of the sampler's output from x_T ~ N(0, 1), by propagating moments.

    Each step maps x to A x + B + sigma z; A, B and sigma are read off one call of the
    step on the three inputs (x, z) = (0, 0), (1, 0) and (0, 1) (it acts entry-wise).
    """
    denoise, m, v = gaussian_denoiser(scheduler, mu, s), 0.0, 1.0
    x, z = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    for t in scheduler.timesteps:
        t = int(t)
        out = scheduler.step(denoise(x, t), t, x, variance_noise=z, **step_kw).prev_sample
        B, A, sigma = out[0], out[1] - out[0], out[2] - out[0]
        m, v = A * m + B, A * A * v + sigma * sigma
    return m, v


# ----------------------------------------------------------------------------- Eq. 7.1


@given(name=S.schedule_names(), t=S.timesteps(), x=S.floats(), eps=S.floats(), z=S.floats())
def test_eq_7_1_mean_is_the_posterior_mean_at_the_predicted_x0(name, t, x, eps, z):
    """x_t + f(x_t, t; w) is q(x_{t-1} | x_t, x0_hat)'s mean, and sigma_t z is added to it."""
    s = NoiseSchedule.make(name)
    b, a, abar = s.betas[t], s.alphas[t], s.alphas_cumprod[t]
    x_t, e = np.array([x]), np.array([eps])
    mean, _ = s.q_posterior(predict_x0(x_t, e, abar), x_t, t)
    np.testing.assert_allclose(ddpm_noise_step(x_t, e, 0.0, b, a, abar, 0.0), mean, atol=1e-8)
    sigma = math.sqrt(s.posterior_variance[t])
    step = ddpm_noise_step(x_t, e, np.array([z]), b, a, abar, sigma)
    np.testing.assert_allclose(step - mean, sigma * z, atol=1e-8)


@given(name=S.schedule_names(), t=S.timesteps(), x0=S.floats(), eps=S.floats())
def test_predict_x0_and_eps_invert_add_noise(name, t, x0, eps):
    s = NoiseSchedule.make(name)
    x_t = s.add_noise(np.array([x0]), np.array([eps]), t)
    abar = s.alphas_cumprod[t]
    np.testing.assert_allclose(predict_x0(x_t, np.array([eps]), abar), [x0], atol=1e-6)
    if abar < 1 - 1e-3:  # eps is recoverable where x_t holds enough noise
        np.testing.assert_allclose(predict_eps(x_t, np.array([x0]), abar), [eps], atol=1e-6)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_noise_has_the_chosen_variance(variance_type):
    sched, t = DDPMScheduler(variance_type=variance_type), 500
    x, eps, z = np.ones(3), np.full(3, 0.3), np.array([1.0, -2.0, 0.5])
    with_z = sched.step(eps, t, x, variance_noise=z).prev_sample
    mean = sched.step(eps, t, x, variance_noise=np.zeros(3)).prev_sample
    s = sched.schedule
    var = s.betas[t] if variance_type == "fixed_large" else s.posterior_variance[t]
    np.testing.assert_allclose(with_z - mean, math.sqrt(var) * z, rtol=1e-10)


def test_the_last_step_adds_no_noise():
    sched, x, eps = DDPMScheduler(variance_type="fixed_large"), np.ones(4), np.full(4, 0.1)
    a = sched.step(eps, 0, x, generator=np.random.default_rng(1)).prev_sample
    b = sched.step(eps, 0, x, generator=np.random.default_rng(2)).prev_sample
    np.testing.assert_array_equal(a, b)


def test_sample_prediction_matches_epsilon_prediction():
    g, t = np.random.default_rng(0), 321
    x, eps, z = g.standard_normal((3, 2)), g.standard_normal((3, 2)), g.standard_normal((3, 2))
    by_eps = DDPMScheduler().step(eps, t, x, variance_noise=z)
    x0 = by_eps.pred_original_sample
    by_x0 = DDPMScheduler(prediction_type="sample").step(x0, t, x, variance_noise=z)
    np.testing.assert_allclose(by_x0.prev_sample, by_eps.prev_sample, atol=1e-10)


def test_clip_sample_bounds_the_predicted_x0():
    x, eps = np.array([5.0, -5.0, 0.1]), np.zeros(3)
    out = DDPMScheduler(clip_sample=True).step(eps, 10, x, variance_noise=np.zeros(3))
    np.testing.assert_array_equal(
        out.pred_original_sample, [1.0, -1.0, out.pred_original_sample[2]]
    )
    assert np.abs(DDPMScheduler().step(eps, 10, x).pred_original_sample).max() > 4  # off by default


# ----------------------------------------------------------------------------- DDIM and timesteps


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("T, n", [(1000, 50), (1000, 7), (1000, 1000), (10, 3), (1, 1)])
def test_timesteps_decrease_within_range(spacing, T, n):
    ts = make_timesteps(T, n, spacing)
    assert ts.dtype == np.int64 and len(ts) == n
    assert np.all(np.diff(ts) < 0) and ts.min() >= 0 and ts.max() <= T - 1
    if spacing != "leading":
        assert ts[0] == T - 1  # trailing and linspace start from pure noise
    if spacing != "trailing":
        assert ts[-1] == 0


@given(req=S.timestep_requests())
def test_any_request_gives_n_distinct_decreasing_timesteps(req):
    T, n, spacing = req
    ts = make_timesteps(T, n, spacing)
    assert len(ts) == n and np.all(np.diff(ts) < 0) and ts[-1] >= 0 and ts[0] <= T - 1


BAD_REQUESTS = [(1000, 0), (1000, 1001), (10, 3, "uniform"), (10, 10, "leading", 1)]


@pytest.mark.parametrize("args", BAD_REQUESTS)
def test_bad_timestep_requests(args):
    with pytest.raises(ValueError):
        make_timesteps(*args)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_each_step_goes_to_the_next_timestep(spacing):
    sched = DDIMScheduler(timestep_spacing=spacing)
    sched.set_timesteps(13)
    ts = sched.timesteps
    assert [sched.previous_timestep(t) for t in ts] == [*ts[1:].tolist(), -1]


def test_ddim_eta_1_over_all_steps_is_ddpm_fixed_small():
    """Step by step, with the same noise z, the two samplers coincide (Song et al., §4.1)."""
    ddpm, ddim = DDPMScheduler(beta_schedule="cosine"), DDIMScheduler(beta_schedule="cosine")
    ddim.set_timesteps(1000)
    g = np.random.default_rng(4)
    for t in [999, 700, 10, 1]:
        x, eps, z = (g.standard_normal((2, 3)) for _ in range(3))
        a = ddpm.step(eps, t, x, variance_noise=z).prev_sample
        b = ddim.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_ddim_eta_0_is_deterministic():
    sched, x = DDIMScheduler(), np.ones(3)
    sched.set_timesteps(10)
    a = sched.step(x * 0.2, 900, x, generator=np.random.default_rng(1)).prev_sample
    b = sched.step(x * 0.2, 900, x, generator=np.random.default_rng(2)).prev_sample
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- distributions


@pytest.mark.parametrize(
    "name, variance_type", [("linear", "fixed_small"), ("cosine", "fixed_large")]
)
def test_ancestral_sampling_recovers_the_gaussian(name, variance_type):
    """Eq. 7.1 with the exact denoiser turns N(0, 1) into N(mu, s^2).

    Exactly (moment recursion): the mean within 1e-4 and the std within 1% (the two
    fixed variances bound the true one from below and above, Ho et al. §3.2).
    Sampled (N = 10000): mean within 4 SE = 4 s / sqrt(N), variance within 4 SE =
    4 v sqrt(2 / N) of the exact law.
    """
    sched = DDPMScheduler(beta_schedule=name, variance_type=variance_type)
    m, v = exact_law(sched)
    assert m == pytest.approx(MU, abs=1e-4) and math.sqrt(v) == pytest.approx(STD, rel=0.01)
    n = 10_000
    x = sample_loop(sched, gaussian_denoiser(sched), (n,), generator=np.random.default_rng(0))
    assert x.mean() == pytest.approx(m, abs=4 * math.sqrt(v / n))
    assert x.var() == pytest.approx(v, abs=4 * v * math.sqrt(2 / n))
    assert stats.kstest(x, "norm", args=(m, math.sqrt(v))).pvalue > 1e-3


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("mu, s", [(0.0, 1.0), (1.0, 0.2), (-1.0, 2.0)])
def test_the_exact_law_of_ancestral_sampling_is_the_data_law(name, mu, s):
    """Other Gaussians (moment recursion only): the mean within 1e-3 s, the std within 2.5%.

    sigma_t^2 = betatilde_t leaves out the uncertainty about x_0 and sigma_t^2 = beta_t
    overstates it (Ho et al., §3.2): the first std comes out lower than the second
    (by up to 2.3% for s = 0.2 with T = 1000).
    """
    stds = []
    for variance_type in ("fixed_small", "fixed_large"):
        m, v = exact_law(DDPMScheduler(beta_schedule=name, variance_type=variance_type), mu, s)
        assert m == pytest.approx(mu, abs=1e-3 * s) and math.sqrt(v) == pytest.approx(s, rel=0.025)
        stds.append(math.sqrt(v))
    assert stds[0] < stds[1]


def test_ddim_eta_1_samples_like_ancestral_sampling():
    """Two samples of 5000 (different seeds): same exact law, and a two-sample KS test."""
    ddpm, ddim = DDPMScheduler(), DDIMScheduler()
    ddim.set_timesteps(1000)
    m1, v1 = exact_law(ddpm)
    m2, v2 = exact_law(ddim, eta=1.0)
    assert m2 == pytest.approx(m1, rel=1e-9) and v2 == pytest.approx(v1, rel=1e-9)
    a = sample_loop(ddpm, gaussian_denoiser(ddpm), (5_000,), generator=np.random.default_rng(1))
    b = sample_loop(
        ddim, gaussian_denoiser(ddim), (5_000,), generator=np.random.default_rng(2), eta=1.0
    )
    assert stats.ks_2samp(a, b).pvalue > 1e-3


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_with_fewer_steps_approximates_the_gaussian(spacing):
    """DDIM, deterministic, 100 steps: the mean within 1% and the std within 5% (exact law)."""
    sched = DDIMScheduler(beta_schedule="cosine", timestep_spacing=spacing)
    sched.set_timesteps(100)
    m, v = exact_law(sched, eta=0.0)
    assert m == pytest.approx(MU, rel=0.01) and math.sqrt(v) == pytest.approx(STD, rel=0.05)


def test_sampling_with_a_seed_is_reproducible():
    sched = DDPMScheduler(beta_schedule="cosine")
    sched.set_timesteps(50)
    den = gaussian_denoiser(sched)
    a = sample_loop(sched, den, (8, 2), generator=np.random.default_rng(7))
    b = sample_loop(sched, den, (8, 2), generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    minigen.manual_seed(3)
    c = sample_loop(sched, den, (8, 2))  # the library's generator by default
    minigen.manual_seed(3)
    np.testing.assert_array_equal(c, sample_loop(sched, den, (8, 2)))
    assert not np.array_equal(a, c)
    assert sample_loop(sched, den, (4,), dtype=np.float32).dtype == np.float32


def test_float32_stays_float32():
    sched = DDIMScheduler()
    sched.set_timesteps(5)
    x = np.ones((2, 1, 3, 3), dtype=np.float32)
    out = sched.step(x * 0.1, int(sched.timesteps[0]), x, eta=0.5)
    assert out.prev_sample.dtype == np.float32 and out.pred_original_sample.dtype == np.float32
    assert DDPMScheduler().step(x, 500, x).prev_sample.dtype == np.float32
    eps64 = x.astype(np.float64)  # a float64 denoiser does not promote the chain
    assert DDPMScheduler().step(eps64, 500, x).prev_sample.dtype == np.float32


# ----------------------------------------------------------------------------- bad input


BAD_TIMESTEPS = [
    (1000, ValueError, "out of range"),
    (-1, ValueError, "out of range"),
    (3.0, TypeError, "integer"),
    (np.array([1, 2]), TypeError, "one integer"),
]


@pytest.mark.parametrize("t, err, match", BAD_TIMESTEPS)
def test_bad_timesteps(t, err, match):
    x = np.zeros(3)
    with pytest.raises(err, match=match):
        DDPMScheduler().step(x, t, x)


def test_a_timestep_not_in_the_schedule_is_refused():
    sched, x = DDPMScheduler(), np.zeros(3)
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="not one of the scheduler's 10 timesteps"):
        sched.step(x, 999, x)
    assert sched.step(x, np.int64(900), x).prev_sample.shape == (3,)  # NumPy ints are fine


def test_model_output_of_another_shape():
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
        DDPMScheduler().step(np.zeros((4, 2)), 10, np.zeros((4, 3)))


@pytest.mark.parametrize("where", ["model_output", "sample"])
def test_nan_stops_the_sampler(where):
    x, eps = np.zeros((2, 3)), np.zeros((2, 3))
    (eps if where == "model_output" else x)[1, 2] = np.nan
    with pytest.raises(FloatingPointError, match=f"{where}.*1 non-finite"):
        DDPMScheduler().step(eps, 10, x)


def test_a_diverging_denoiser_stops_the_loop():
    sched = DDPMScheduler()
    sched.set_timesteps(20)
    den = lambda x, t: np.full_like(x, np.inf if t < 500 else 0.0)
    with pytest.raises(FloatingPointError, match="timestep 450"):  # the first below 500
        sample_loop(sched, den, (3,), generator=np.random.default_rng(0))


def test_bad_configurations_and_calls():
    x = np.zeros(3)
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(x, 10, x)
    for kw in ({"prediction_type": "v"}, {"timestep_spacing": "log"}, {"beta_schedule": "sq"}):
        with pytest.raises(ValueError):
            DDPMScheduler(**kw)
    with pytest.raises(ValueError, match="variance_type"):
        DDPMScheduler(variance_type="learned")
    with pytest.raises(ValueError, match="not both"):
        DDPMScheduler().step(x, 10, x, generator=np.random.default_rng(), variance_noise=x)
    ddim = DDIMScheduler()
    ddim.set_timesteps(10)
    with pytest.raises(ValueError, match="eta"):
        ddim.step(x, 900, x, eta=3.0)
    with pytest.raises(ValueError, match="eta"):
        ddim.step(x, 900, x, eta=-1.0)
