"""minigen's schedules and samplers against diffusers' DDPMScheduler and DDIMScheduler.

diffusers keeps its schedule in float32; we keep float64. The schedules are compared at
float32 precision; for `step` and `add_noise` the diffusers scheduler gets our float64
arrays, so those comparisons test the formulas at float64 precision. The noise of a
DDPM step comes from a torch generator inside diffusers: we replace diffusers'
`randn_tensor` with one returning the noise we also hand to our `step`.

Two documented differences are stepped around: diffusers' DDPM adds noise at its last
step whenever that timestep is > 0 (trailing spacing, steps_offset), we never do (Ho
et al.'s Algorithm 2: z = 0 at the last step); diffusers' DDIM steps from t to
t - T // n, which only matches its own timesteps for "leading", and "trailing" when n
divides T (huggingface/diffusers#12633), we step to the next timestep.
"""

import numpy as np
import pytest

from minigen.diffusion import DDIMScheduler, DDPMScheduler, NoiseSchedule, sample_loop
from minigen.diffusion.schedulers import make_timesteps

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

pytestmark = pytest.mark.oracle

DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def _t(a):
    return torch.from_numpy(np.array(a, dtype=np.float64))


def pair(cls_name, name="linear", T=1000, **kw):
    """(ours, theirs): one scheduler in minigen and in diffusers, theirs with our float64 arrays."""
    ours = {"DDPM": DDPMScheduler, "DDIM": DDIMScheduler}[cls_name](
        num_train_timesteps=T, beta_schedule=name, **kw
    )
    theirs = getattr(diffusers, f"{cls_name}Scheduler")(
        num_train_timesteps=T, beta_schedule=DIFFUSERS_SCHEDULE[name], clip_sample=False, **kw
    )
    s = ours.schedule
    theirs.betas, theirs.alphas = _t(s.betas), _t(s.alphas)
    theirs.alphas_cumprod = _t(s.alphas_cumprod)
    theirs.one = _t(1.0)
    if cls_name == "DDIM":
        theirs.final_alpha_cumprod = _t(ours._final_alpha_cumprod())
    return ours, theirs


def their_step(theirs, eps, t, x, z, **kw):
    """diffusers' step in float64 with the variance noise `z` (None: no noise needed)."""
    if isinstance(theirs, diffusers.DDIMScheduler):
        noise = None if z is None else _t(z)
        out = theirs.step(_t(eps), t, _t(x), variance_noise=noise, **kw)
    else:
        orig = scheduling_ddpm.randn_tensor
        scheduling_ddpm.randn_tensor = lambda shape, **_: _t(z)
        try:
            out = theirs.step(_t(eps), t, _t(x), **kw)
        finally:
            scheduling_ddpm.randn_tensor = orig
    return out.prev_sample.numpy(), out.pred_original_sample.numpy()


def assert_steps_match(ours, theirs, timesteps, rng, shape=(3, 1, 4, 4), **kw):
    ts = [int(t) for t in ours.timesteps]
    for t in timesteps:
        x, eps, z = (rng.standard_normal(shape) for _ in range(3))
        if t == ts[-1]:
            z = np.zeros(shape)  # the last step: we add no noise (see the module docstring)
        a = ours.step(eps, t, x, variance_noise=z, **kw)
        b_prev, b_x0 = their_step(theirs, eps, t, x, z, **kw)
        # float64 rounding of different but equal formulas (largest seen: 3.6e-12)
        np.testing.assert_allclose(a.pred_original_sample, b_x0, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(a.prev_sample, b_prev, rtol=1e-10, atol=1e-10)


def some(timesteps):
    """The first two, one in the middle and the last two timesteps."""
    ts = [int(t) for t in timesteps]
    return sorted({*ts[:2], ts[len(ts) // 2], *ts[-2:]}, reverse=True)


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1000, 50, 1])
def test_schedules_match_at_float32_precision(name, T):
    """Largest differences seen: betas 1.1e-7 relative, alphas_cumprod 3.3e-7 absolute."""
    ours = NoiseSchedule.make(name, T)
    for cls in (diffusers.DDPMScheduler, diffusers.DDIMScheduler):
        theirs = cls(num_train_timesteps=T, beta_schedule=DIFFUSERS_SCHEDULE[name])
        np.testing.assert_allclose(ours.betas, theirs.betas.double().numpy(), rtol=2.5e-7)
        for attr in ("alphas", "alphas_cumprod"):
            b = getattr(theirs, attr).double().numpy()
            np.testing.assert_allclose(getattr(ours, attr), b, atol=1e-6)


@pytest.mark.parametrize("cls_name", ["DDPM", "DDIM"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 13, 50, 999, 1000])
def test_timesteps_match(cls_name, spacing, n):
    ours, theirs = pair(cls_name, timestep_spacing=spacing)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())


def test_trailing_timesteps_match_for_every_step_count():
    """T = 1000 with n = 1 .. 1000, and T = 999 with n = 1 .. 100. For some n (e.g. 13 when
    T = 999) diffusers' float arange yields n + 1 timesteps, the last -1; there we keep its
    first n."""
    for T, ns in ((1000, range(1, 1001)), (999, range(1, 101))):
        ours, theirs = pair("DDPM", T=T, timestep_spacing="trailing")
        for n in ns:
            ours.set_timesteps(n)
            theirs.set_timesteps(n)
            np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy()[:n])


@pytest.mark.parametrize("n", [10, 50, 999])
def test_leading_timesteps_with_an_offset_match(n):
    ours, theirs = pair("DDIM", steps_offset=1)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())
    # where diffusers would hand out timestep T (out of range, diffusers#10003), we refuse
    with pytest.raises(ValueError, match="outside"):
        make_timesteps(1000, 1000, "leading", steps_offset=1)


# ----------------------------------------------------------------------------- forward process


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_add_noise_matches(name):
    ours, theirs = pair("DDPM", name)
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((6, 2, 3)), rng.standard_normal((6, 2, 3))
    t = np.array([0, 1, 10, 500, 998, 999])
    expected = theirs.add_noise(_t(x0), _t(eps), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(ours.add_noise(x0, eps, t), expected, rtol=1e-13, atol=1e-13)
    # float32 data against diffusers' own float32 schedule
    native = diffusers.DDPMScheduler(beta_schedule=DIFFUSERS_SCHEDULE[name])
    x32, e32 = x0.astype(np.float32), eps.astype(np.float32)
    got = ours.add_noise(x32, e32, t)
    want = native.add_noise(torch.from_numpy(x32), torch.from_numpy(e32), torch.from_numpy(t))
    assert got.dtype == np.float32
    # diffusers forms 1 - abar in float32: near t = 0 that loses ~3e-4 of sqrt(1 - abar)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- DDPM


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("spacing, n", [("leading", None), ("leading", 50), ("trailing", 13),
                                        ("linspace", 7), ("trailing", 1000)])  # fmt: skip
def test_ddpm_step_matches(name, variance_type, spacing, n):
    ours, theirs = pair("DDPM", name, variance_type=variance_type, timestep_spacing=spacing)
    if n is not None:
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
    assert_steps_match(ours, theirs, some(ours.timesteps), np.random.default_rng(1))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("clip_sample", [False, True])
def test_ddpm_prediction_types_and_clipping_match(prediction_type, clip_sample):
    ours, theirs = pair("DDPM", "cosine", prediction_type=prediction_type)
    ours.clip_sample = theirs.config.clip_sample = clip_sample  # diffusers' default is True
    assert_steps_match(ours, theirs, [999, 600, 50, 3, 0], np.random.default_rng(2))


# ----------------------------------------------------------------------------- DDIM


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing, n", [("leading", 50), ("leading", 7), ("trailing", 8),
                                        ("trailing", 1000)])  # fmt: skip
def test_ddim_step_matches(name, eta, spacing, n):
    ours, theirs = pair("DDIM", name, timestep_spacing=spacing)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert_steps_match(ours, theirs, some(ours.timesteps), np.random.default_rng(3), eta=eta)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("clip, use_clipped", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_options_match(prediction_type, clip, use_clipped, set_alpha_to_one):
    ours, theirs = pair("DDIM", prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one)
    ours.clip_sample = theirs.config.clip_sample = clip
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    kw = {"eta": 0.7, "use_clipped_model_output": use_clipped}
    assert_steps_match(ours, theirs, some(ours.timesteps), np.random.default_rng(4), **kw)


# ----------------------------------------------------------------------------- whole loops


def _linear_denoiser(scheduler):
    def eps(x, t):  # the exact denoiser of N(0.5, 0.25) data: errors would compound visibly
        a = scheduler.alphas_cumprod[t]
        return np.sqrt(1 - a) / (a * 0.25 + 1 - a) * (x - np.sqrt(a) * 0.5)

    return eps


@pytest.mark.parametrize("cls_name, n, kw", [("DDPM", None, {}), ("DDIM", 50, {"eta": 0.5})])
def test_whole_sampling_loops_match(cls_name, n, kw):
    """Every step with the same noise; largest final differences seen: 7e-13 (DDPM, 1000
    steps), 6e-16 (DDIM, 50 steps)."""
    ours, theirs = pair(cls_name, "linear")
    if n is not None:
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
    rng, den = np.random.default_rng(5), _linear_denoiser(ours)
    x_T = rng.standard_normal((64, 2))
    noises = {int(t): rng.standard_normal((64, 2)) for t in ours.timesteps}
    noises[int(ours.timesteps[-1])] = np.zeros((64, 2))
    x = x_T
    for t in ours.timesteps:
        x = ours.step(den(x, int(t)), int(t), x, variance_noise=noises[int(t)], **kw).prev_sample
    y = x_T
    for t in theirs.timesteps:
        y = their_step(theirs, den(y, int(t)), int(t), y, noises[int(t)], **kw)[0]
    np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-11)
    assert sample_loop(ours, den, x_T, generator=np.random.default_rng(0), **kw).shape == (64, 2)
