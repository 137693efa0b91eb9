"""§7.2 of the book: image (and 2-D point) synthesis by inverting a diffusion process.

    from minigen.diffusion import NoiseSchedule, load_toy2d

`schedule` holds the noise schedules and the forward process, `data` the
normalised data sets.
"""

from minigen.diffusion.data import DiffusionData, Normalizer, load_digits, load_toy2d
from minigen.diffusion.schedule import NoiseSchedule, cosine_betas, linear_betas

__all__ = [
    "NoiseSchedule",
    "linear_betas",
    "cosine_betas",
    "Normalizer",
    "DiffusionData",
    "load_toy2d",
    "load_digits",
]
