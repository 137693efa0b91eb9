"""§7.2 of the book: image (and 2-D point) synthesis by inverting a diffusion process.

    from minigen.diffusion import NoiseSchedule, DDPMScheduler, DDIMScheduler

`schedule` holds the noise schedules and the forward process, `schedulers` the
samplers (Eq. 7.1 and DDIM), `data` the normalised data sets.
"""

from minigen.diffusion.data import DiffusionData, Normalizer, load_digits, load_toy2d
from minigen.diffusion.schedule import NoiseSchedule, cosine_betas, linear_betas
from minigen.diffusion.schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    SchedulerOutput,
    ddpm_noise_step,
    sample_loop,
)

__all__ = [
    "NoiseSchedule",
    "linear_betas",
    "cosine_betas",
    "DDPMScheduler",
    "DDIMScheduler",
    "SchedulerOutput",
    "ddpm_noise_step",
    "sample_loop",
    "Normalizer",
    "DiffusionData",
    "load_toy2d",
    "load_digits",
]
