"""The DDPM noise step (the book's Eq. 7.1) as a fused op: diffusion's row of the dispatch table.

`ddpm_noise_step` is the NumPy reference, the step `DDPMScheduler.step` takes (the sampler
around it is in `schedulers.py`); on the "numba" and "cupy" backends it runs
`ddpm_noise_step_kernel` instead, which calls the kernel `ddpm_step` of minigen_kernels (one read of each input, one write:
NumPy's version makes five passes with four temporaries). `register_kernels()` adds the
row to `minigen.dispatch`; `DDPMScheduler.__init__` calls it, so the table holds the step
from the moment a DDPM sampler exists, and never because a module was imported.
"""

from __future__ import annotations

from typing import Any

from minigen import dispatch
from minigen.kernel_ops import same_float_dtype

__all__ = ["NOISE_STEP", "ddpm_noise_step", "ddpm_noise_step_kernel", "register_kernels"]


def ddpm_noise_step(
    x_t: Any, eps: Any, z: Any, beta_t: Any, alpha_t: Any, abar_t: Any, sigma_t: Any
) -> Any:
    """One ancestral step of Eq. 7.1: x_{t-1} = x_t + f(x_t, t; w) + sigma_t z.

    `eps` is the predicted noise, `z` fresh N(0, I) noise (0 at the last step); the
    coefficients are scalars or arrays that broadcast against x_t.
    """
    # f(x_t, t; w) = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) - x_t
    f = (x_t - beta_t / (1 - abar_t) ** 0.5 * eps) / alpha_t**0.5 - x_t  # like x_t
    # Eq. 7.1: x_{t-1} ~ N(x_t + f(x_t, t; w), sigma_t), sampled as x_t + f + sigma_t z
    return x_t + f + sigma_t * z  # like x_t


def ddpm_noise_step_kernel(
    numpy: Any, k: Any, x_t: Any, eps: Any, z: Any, beta_t: Any, alpha_t: Any, abar_t: Any,
    sigma_t: Any,
) -> Any:  # fmt: skip
    """`numpy(x_t, eps, z, ...)` (the reference) computed by the kernel module `k`, or by
    `numpy` itself where the kernel does not cover the case: coefficients that are arrays
    (one timestep per example), a z that is a nonzero number, other dtypes or shapes."""
    coefficients = (beta_t, alpha_t, abar_t, sigma_t)
    no_noise = isinstance(z, int | float) and z == 0  # the last step: z = 0
    arrays = (x_t, eps) if no_noise else (x_t, eps, z)
    if (
        not all(isinstance(c, int | float) for c in coefficients)  # np.float64 is a float
        or not all(hasattr(a, "dtype") and a.shape == x_t.shape for a in arrays)
        or not same_float_dtype(*arrays)
    ):
        return numpy(x_t, eps, z, beta_t, alpha_t, abar_t, sigma_t)
    # x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, one pass
    c = tuple(float(v) for v in coefficients)
    return k.ddpm_step(x_t, eps, None if no_noise else z, *c)


NOISE_STEP = dispatch.FusedOp(
    "ddpm_noise_step",
    "minigen.diffusion.noise_step.ddpm_noise_step",
    ddpm_noise_step_kernel,
    ("ddpm_step",),
)


def register_kernels() -> None:
    """Add diffusion's fused ops (the noise step) to the dispatch table; again: no change."""
    dispatch.register(NOISE_STEP)
