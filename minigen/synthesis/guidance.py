"""The CLIP guidance gradient of GLIDE (Nichol et al. 2021), §7.2's text-conditioned synthesis.

"Nichol et al. [2021] add to the mean of the denoising distribution of Equation 7.1 a bias that
goes in the direction of increasing the CLIP matching score between the produced image and the
conditioning text description": with a noise-aware CLIP (`clip.py`), that direction is

    grad_{x_t} (z_img(x_t, t) . z_txt(c)),

and the guided step draws x_{t-1} ~ N(mu(x_t) + s Sigma_t grad_{x_t} (z_img . z_txt), Sigma_t)
for a guidance scale s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from minigen import nn
from minigen.synthesis.clip import CLIP
from minigen.tensor import Tensor, no_grad

__all__ = ["clip_grad", "frozen"]


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad inside (backward then skips their gradients)."""
    params = module.parameters()
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad = False
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad = f


def clip_grad(clip: CLIP, x_t: Any, t: Any, text_tokens: Any) -> np.ndarray:
    """grad_{x_t} (z_img(x_t, t) . z_txt(c)) per sample: x_t (B, 3, H, W) -> (B, 3, H, W).

    text_tokens: (B, L) ids, (L,) or one caption / a list of B captions (broadcast when one).
    The samples are independent (no batch statistics), so the gradient of the sum of the B
    scores is each score's gradient; one backward computes them all.
    """
    x = np.asarray(x_t)
    dt = clip.image.fc1.weight.dtype
    with no_grad():
        z_txt = clip.encode_text(text_tokens)  # (B or 1, E)
    if z_txt.shape[0] not in (1, x.shape[0] if x.ndim == 4 else 1):
        raise ValueError(
            f"clip_grad: {z_txt.shape[0]} captions for images of shape {x.shape} (need 1 or B)"
        )
    xt = Tensor(x, dtype=dt, requires_grad=True)
    with frozen(clip):
        z_img = clip.encode_image(xt, t)  # (B, E)
        # the matching score z_img . z_txt of each sample, summed over the batch
        (z_img * z_txt.detach()).sum().backward()
    return xt.grad.astype(x.dtype if x.dtype.kind == "f" else dt, copy=False)
