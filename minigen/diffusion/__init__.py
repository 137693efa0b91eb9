"""§7.2 of the book: image (and 2-D point) synthesis by inverting a diffusion process.

`data` holds the normalised data sets.
"""

from minigen.diffusion.data import DiffusionData, Normalizer, load_digits, load_toy2d

__all__ = ["Normalizer", "DiffusionData", "load_toy2d", "load_digits"]
