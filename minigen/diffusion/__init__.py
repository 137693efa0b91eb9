"""§7.2 of the book: image (and 2-D point) synthesis by inverting a diffusion process.

    from minigen.diffusion import NoiseSchedule, DDPMScheduler, DDIMScheduler
    from minigen.diffusion import TrainConfig, train, DiffusionModel, load_model

`schedule` holds the noise schedules and the forward process, `schedulers` the
samplers (Eq. 7.1 and DDIM), `data` the normalised data sets, `denoisers` and
`unet` the networks eps_theta(x_t, t), `training` the loss and the loop,
`pipeline` a trained model (save, load, sample), `plots` the figures (Figure 7.2),
`metrics` the sample-quality measures.
"""

from minigen.diffusion.data import DiffusionData, Normalizer, load_digits, load_toy2d
from minigen.diffusion.denoisers import MLPDenoiser, timestep_embedding
from minigen.diffusion.pipeline import (
    SAMPLERS,
    DiffusionModel,
    Samples,
    make_scheduler,
    resolve_checkpoint,
)
from minigen.diffusion.pipeline import load as load_model
from minigen.diffusion.plots import LOSS_LABEL, image_grid
from minigen.diffusion.schedule import NoiseSchedule, cosine_betas, linear_betas
from minigen.diffusion.schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    SchedulerOutput,
    ddpm_noise_step,
    sample_loop,
)
from minigen.diffusion.training import (
    EMA,
    PREDICTIONS,
    TrainConfig,
    TrainingDiverged,
    blas_threads,
    denoising_loss,
    diffusion_loss,
    draw_noise,
    train,
)
from minigen.diffusion.unet import UNet

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
    "timestep_embedding",
    "MLPDenoiser",
    "UNet",
    "TrainConfig",
    "EMA",
    "diffusion_loss",
    "draw_noise",
    "denoising_loss",
    "PREDICTIONS",
    "train",
    "TrainingDiverged",
    "DiffusionModel",
    "Samples",
    "load_model",
    # used by text-to-image synthesis (minigen.synthesis)
    "make_scheduler",
    "SAMPLERS",
    "resolve_checkpoint",
    "blas_threads",
    "LOSS_LABEL",
    "image_grid",
]
