"""Samplers that invert the diffusion process: DDPM (Eq. 7.1) and DDIM.

Sampling starts from white noise x_T ~ N(0, I) and denoises it step by step. The
book's Eq. 7.1 (Ho et al., 2020) is the ancestral step

    x_{t-1} | x_t ~ N(x_t + f(x_t, t; w), sigma_t),

where the denoiser predicts the noise eps in x_t and f is the increment it implies:
the mean of the step is (Ho et al., Eq. 11)

    x_t + f(x_t, t; w) = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t),

and sigma_t is fixed analytically (the book's sigma_t is a standard deviation):
sigma_t^2 = beta_t ("fixed_large") or the posterior variance betatilde_t
("fixed_small"); both are exact for some data (Ho et al., §3.2). `ddpm_noise_step`
is that step alone, the reference the Numba and CuPy kernels mirror: `step` calls it
through `minigen.dispatch.pick`, so `minigen.backend.use("numba")` runs it fused. It
lives in `noise_step.py`, with its kernel-backed version and its row of the table.

DDIM (Song et al., 2020, Eq. 12) reuses the same denoiser on a subsequence of
timesteps, with a noise level eta (0: deterministic, 1: the DDPM posterior noise):

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt(betatilde(t, prev)).

The classes follow diffusers' names (`set_timesteps`, `timesteps`, `step`,
`add_noise`, `prev_sample`, `pred_original_sample`) and its timestep conventions (see
`schedule.py`), on NumPy arrays, with a NumPy Generator for the noise. Two choices
differ from diffusers: `clip_sample` defaults to False (diffusers: True), because
§7.2 normalises data to variance 1, not to [-1, 1]; and DDIM steps to the next entry
of `timesteps` for every spacing (diffusers' DDIMScheduler subtracts T // n, which
disagrees with its own "linspace" timesteps: huggingface/diffusers#12633). The three
spacings of `set_timesteps` are `make_timesteps`, in `timesteps.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from minigen import backend, dispatch
from minigen import rng as _rng
from minigen.diffusion.noise_step import ddpm_noise_step, register_kernels
from minigen.diffusion.schedule import NoiseSchedule, linear_betas, posterior_variance
from minigen.diffusion.timesteps import SPACINGS, make_timesteps

__all__ = [
    "SchedulerOutput",
    "DDPMScheduler",
    "DDIMScheduler",
    "ddpm_noise_step",
    "predict_x0",
    "predict_eps",
    "make_timesteps",
    "sample_loop",
]

PREDICTION_TYPES = ("epsilon", "sample")
VARIANCE_TYPES = ("fixed_small", "fixed_large")


@dataclass
class SchedulerOutput:
    """What `step` returns: x_{t-1}, and the denoiser's current guess of x_0."""

    prev_sample: Any
    pred_original_sample: Any


def predict_x0(x_t: Any, eps: Any, abar_t: Any) -> Any:
    """The x_0 that `add_noise` would have turned into x_t with noise eps."""
    # x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    return (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t**0.5


def predict_eps(x_t: Any, x0: Any, abar_t: Any) -> Any:
    """The noise that `add_noise` would have needed to turn x0 into x_t."""
    # eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
    return (x_t - abar_t**0.5 * x0) / (1 - abar_t) ** 0.5


class _Scheduler:
    """What DDPM and DDIM share: the schedule, the timesteps, the checks and predictions.

    Arguments (diffusers' names and defaults, except `clip_sample`):
        num_train_timesteps: T, the length of the diffusion chain (1000).
        beta_start, beta_end: the range of the "linear" schedule (1e-4, 0.02).
        beta_schedule: "linear" or "cosine" (alias "squaredcos_cap_v2").
        trained_betas: explicit betas, overriding the three above.
        prediction_type: what the denoiser predicts, "epsilon" (the noise) or "sample" (x_0).
        clip_sample, clip_sample_range: clip the predicted x_0 to [-range, range] (off).
        timestep_spacing, steps_offset: how `set_timesteps` picks its timesteps.
    """

    order = 1
    init_noise_sigma = 1.0  # x_T ~ N(0, I)

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ) -> None:
        if trained_betas is not None:
            self.schedule = NoiseSchedule(trained_betas)
        elif beta_schedule == "linear":
            betas = linear_betas(num_train_timesteps, beta_start, beta_end)
            self.schedule = NoiseSchedule(betas)
        else:
            self.schedule = NoiseSchedule.make(beta_schedule, num_train_timesteps)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; one of {PREDICTION_TYPES}"
            )
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; one of {SPACINGS}")
        self.num_train_timesteps = len(self.schedule)
        self.prediction_type = prediction_type
        self.clip_sample, self.clip_sample_range = clip_sample, clip_sample_range
        self.timestep_spacing, self.steps_offset = timestep_spacing, steps_offset
        self.num_inference_steps: int | None = None
        self._set(np.arange(self.num_train_timesteps, dtype=np.int64)[::-1].copy())

    # the schedule's arrays, under diffusers' names
    betas = property(lambda self: self.schedule.betas)
    alphas = property(lambda self: self.schedule.alphas)
    alphas_cumprod = property(lambda self: self.schedule.alphas_cumprod)

    def __len__(self) -> int:
        return self.num_train_timesteps

    def add_noise(self, original_samples: Any, noise: Any, timesteps: Any) -> Any:
        """The forward process in closed form (see `NoiseSchedule.add_noise`)."""
        return self.schedule.add_noise(original_samples, noise, timesteps)

    def scale_model_input(self, sample: Any, timestep: Any = None) -> Any:
        """The identity (diffusers' pipelines call it; DDPM and DDIM need no scaling)."""
        return sample

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose `num_inference_steps` timesteps to sample with (spacing as configured)."""
        ts = make_timesteps(
            self.num_train_timesteps, num_inference_steps, self.timestep_spacing, self.steps_offset
        )
        self.num_inference_steps = int(num_inference_steps)
        self._set(ts)

    def _set(self, ts: np.ndarray) -> None:
        self.timesteps = ts
        self._prev = {int(a): int(b) for a, b in zip(ts, [*ts[1:], -1], strict=True)}

    def previous_timestep(self, timestep: int) -> int:
        """The timestep after `timestep` in `timesteps` (-1 after the last: x_0)."""
        try:
            return self._prev[int(timestep)]
        except KeyError:
            raise ValueError(
                f"timestep {timestep} is not one of the scheduler's {len(self.timesteps)} timesteps"
                f" ({self.timesteps[0]} .. {self.timesteps[-1]}); step with the values of"
                " `timesteps` after `set_timesteps`"
            ) from None

    def _final_alpha_cumprod(self) -> float:
        return 1.0

    def _abar(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self._final_alpha_cumprod()

    def _check(self, model_output: Any, timestep: Any, sample: Any) -> int:
        if np.shape(model_output) != np.shape(sample):
            raise ValueError(
                f"{type(self).__name__}.step: model_output has shape {np.shape(model_output)}"
                f" but the sample x_t has shape {np.shape(sample)}; they must match"
            )
        t = self.schedule.check_timestep(_as_int(timestep))
        for name, arr in (("model_output", model_output), ("sample x_t", sample)):
            xp = backend.array_module(arr)
            finite = xp.isfinite(arr)
            if not bool(finite.all()):
                bad = int(finite.size - int(finite.sum()))
                raise FloatingPointError(
                    f"{type(self).__name__}.step at timestep {t}: {name} has {bad} non-finite"
                    f" value(s) (NaN or inf) out of {finite.size}; stopping instead of sampling"
                    " garbage"
                )
        return t

    def _predict(self, model_output: Any, sample: Any, abar_t: float) -> tuple[Any, Any]:
        """(x0_hat, eps_hat) from the denoiser's output, x0_hat clipped if configured."""
        if self.prediction_type == "epsilon":
            eps, x0 = model_output, predict_x0(sample, model_output, abar_t)
        else:  # "sample": the denoiser predicts x_0 itself
            x0, eps = model_output, predict_eps(sample, model_output, abar_t)
        if self.clip_sample:
            x0 = backend.array_module(x0).clip(x0, -self.clip_sample_range, self.clip_sample_range)
        return x0, eps

    @staticmethod
    def _noise(sample: Any, generator: np.random.Generator | None, variance_noise: Any) -> Any:
        """z ~ N(0, I) shaped like the sample: given, or drawn from `generator`."""
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("pass either generator or variance_noise to step, not both")
            if np.shape(variance_noise) != np.shape(sample):
                raise ValueError(
                    f"variance_noise has shape {np.shape(variance_noise)} but the sample has"
                    f" shape {np.shape(sample)}"
                )
            return variance_noise
        gen = generator if generator is not None else _rng.generator()
        dt = sample.dtype if sample.dtype in (np.float32, np.float64) else np.float64
        return backend.array_module(sample).asarray(gen.standard_normal(sample.shape, dtype=dt))


class DDPMScheduler(_Scheduler):
    """Ancestral sampling by Eq. 7.1 (Ho et al., 2020).

    `variance_type`: "fixed_small" (sigma_t^2 = betatilde_t, diffusers' default) or
    "fixed_large" (sigma_t^2 = beta_t). Without `set_timesteps` the sampler visits all
    T timesteps; with fewer, each step's beta spans the stride: 1 - abar_t / abar_prev.
    """

    def __init__(self, *args: Any, variance_type: str = "fixed_small", **kw: Any) -> None:
        super().__init__(*args, **kw)
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance_type {variance_type!r}; one of {VARIANCE_TYPES}")
        self.variance_type = variance_type
        register_kernels()  # `step`'s fused noise step joins the dispatch table (noise_step.py)

    def sigma(self, timestep: int) -> float:
        """sigma_t, the standard deviation of the step from `timestep` (0 at the last step)."""
        t = self.schedule.check_timestep(_as_int(timestep))
        prev_t = self.previous_timestep(t)
        if prev_t < 0:
            return 0.0
        abar_t, abar_prev = self._abar(t), self._abar(prev_t)
        if self.variance_type == "fixed_large":  # sigma_t^2 = beta_t = 1 - abar_t / abar_prev
            return math.sqrt(1.0 - abar_t / abar_prev)
        # sigma_t^2 = betatilde_t
        return math.sqrt(posterior_variance(abar_t, abar_prev))

    def step(
        self,
        model_output: Any,
        timestep: int,
        sample: Any,
        generator: np.random.Generator | None = None,
        variance_noise: Any = None,
    ) -> SchedulerOutput:
        """x_{t-1} from x_t (`sample`) and the denoiser's output at timestep t."""
        t = self._check(model_output, timestep, sample)
        prev_t = self.previous_timestep(t)
        abar_t, abar_prev = self._abar(t), self._abar(prev_t)
        # the step's alpha and beta: alpha_t = abar_t / abar_{t-1}, beta_t = 1 - alpha_t
        alpha_t = abar_t / abar_prev
        beta_t = 1.0 - alpha_t
        x0_hat, eps_hat = self._predict(model_output, sample, abar_t)
        if self.clip_sample:  # the noise that the clipped x0_hat implies
            eps_hat = predict_eps(sample, x0_hat, abar_t)
        sigma_t = self.sigma(t)  # 0 at the last step
        # the last step returns the mean: no noise is added to x_0
        z = self._noise(sample, generator, variance_noise) if prev_t >= 0 else 0.0
        # Eq. 7.1's step: ddpm_noise_step, or the selected backend's fused kernel for it
        x_prev = dispatch.pick(ddpm_noise_step)(
            sample, eps_hat, z, beta_t, alpha_t, abar_t, sigma_t
        )
        return _output(x_prev, x0_hat, sample)


class DDIMScheduler(_Scheduler):
    """DDIM sampling (Song et al., 2020) on the timesteps of `set_timesteps`.

    `set_alpha_to_one` (default True, as diffusers): after the last timestep the
    sampler targets abar = 1 (clean data); False uses alphas_cumprod[0].
    """

    def __init__(self, *args: Any, set_alpha_to_one: bool = True, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.set_alpha_to_one = set_alpha_to_one

    def _final_alpha_cumprod(self) -> float:
        return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])

    def step(
        self,
        model_output: Any,
        timestep: int,
        sample: Any,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: np.random.Generator | None = None,
        variance_noise: Any = None,
    ) -> SchedulerOutput:
        """x_prev from x_t (`sample`); eta = 0 is deterministic, eta = 1 is DDPM's noise."""
        if self.num_inference_steps is None:
            raise ValueError("DDIMScheduler.step: call set_timesteps(num_inference_steps) first")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        t = self._check(model_output, timestep, sample)
        prev_t = self.previous_timestep(t)
        abar_t, abar_prev = self._abar(t), self._abar(prev_t)
        x0_hat, eps_hat = self._predict(model_output, sample, abar_t)
        if use_clipped_model_output:
            eps_hat = predict_eps(sample, x0_hat, abar_t)
        # sigma = eta sqrt(betatilde(t, prev))    (Song et al., Eq. 16)
        sigma = eta * math.sqrt(posterior_variance(abar_t, abar_prev))
        direction = 1 - abar_prev - sigma**2  # the variance left for the predicted noise
        if direction < -1e-12:
            raise ValueError(
                f"eta={eta} is too large: sigma^2 exceeds 1 - abar_prev at timestep {t}"
            )
        # Song et al. Eq. 12:
        # x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z
        x_prev = abar_prev**0.5 * x0_hat + max(direction, 0.0) ** 0.5 * eps_hat  # like x_t
        if sigma > 0:
            x_prev = x_prev + sigma * self._noise(sample, generator, variance_noise)
        return _output(x_prev, x0_hat, sample)


def sample_loop(
    scheduler: DDPMScheduler | DDIMScheduler,
    denoiser: Callable[[Any, int], Any],
    x_T: Any,
    generator: np.random.Generator | None = None,
    progress: bool = False,
    dtype: Any = np.float64,
    callback: Callable[[int, int, Any], None] | None = None,
    step: Callable[..., Any] | None = None,
    **step_kwargs: Any,
) -> Any:
    """Denoise `x_T` over `scheduler.timesteps`; `denoiser(x_t, t)` returns its prediction.

    The one sampling loop of minigen: Eq. 7.1's chain from x_T down to x_0 (or DDIM's).
    `x_T` is the starting noise, or a shape to draw it from N(0, I) in `dtype` with
    `generator` (default: minigen.rng.generator(), which also draws every step's noise).
    `callback(i, t, x)` sees the sample after step i (at timestep t), e.g. to record
    a trajectory. Extra keywords go to the step (e.g. eta for DDIM). Guided sampling
    plugs in here: it changes the prediction inside `denoiser` (classifier-free guidance)
    or replaces the step, `step(model_output, t, x_t, generator, **step_kwargs) -> x_{t-1}`
    (CLIP guidance's `minigen.synthesis.guidance.guided_step`); the default is
    `scheduler.step(...).prev_sample`.
    """
    gen = generator if generator is not None else _rng.generator()
    if isinstance(x_T, tuple):
        x_T = backend.xp.asarray(gen.standard_normal(x_T, dtype=dtype))  # on the current backend
    x = x_T
    timesteps = scheduler.timesteps
    if progress:
        from tqdm.auto import tqdm

        timesteps = tqdm(timesteps, desc=type(scheduler).__name__, leave=False)
    if step is None:
        step = lambda out, t, x, g, **kw: scheduler.step(out, t, x, generator=g, **kw).prev_sample
    for i, t in enumerate(timesteps):
        x = step(denoiser(x, int(t)), int(t), x, gen, **step_kwargs)  # x_t -> x_{t-1}
        if callback is not None:
            callback(i, int(t), x)
    return x


def _output(x_prev: Any, x0_hat: Any, sample: Any) -> SchedulerOutput:
    """The step's result in the sample's floating dtype (a float64 denoiser output
    does not turn a float32 chain into float64)."""
    dt = getattr(sample, "dtype", None)
    if dt in (np.float32, np.float64):
        x_prev, x0_hat = x_prev.astype(dt, copy=False), x0_hat.astype(dt, copy=False)
    return SchedulerOutput(prev_sample=x_prev, pred_original_sample=x0_hat)


def _as_int(timestep: Any) -> Any:
    """A scalar timestep as a Python int (0-d arrays and NumPy integers included)."""
    arr = backend.to_numpy(timestep) if not isinstance(timestep, int) else None
    if arr is not None and arr.ndim == 0 and np.issubdtype(arr.dtype, np.integer):
        return int(arr)
    if arr is not None:
        raise TypeError(f"step takes one integer timestep, got {timestep!r}")
    return timestep
