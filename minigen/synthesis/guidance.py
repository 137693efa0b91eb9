"""Guided sampling (§7.2): CLIP guidance (Nichol et al. 2021) and classifier-free guidance.

"Nichol et al. [2021] add to the mean of the denoising distribution of Equation 7.1 a bias that
goes in the direction of increasing the CLIP matching score between the produced image and the
conditioning text description": with a noise-aware CLIP (`clip.py`), that direction is

    g = grad_{x_t} (z_img(x_t, t) . z_txt(c)),

and the guided ancestral step of Eq. 7.1, for a guidance scale s, is

    x_{t-1} ~ N(x_t + f(x_t, t; w) + s Sigma_t g, Sigma_t),       Sigma_t = sigma_t^2 I.

DDIM has no Sigma_t; there the same guidance shifts the predicted noise (Dhariwal & Nichol
2021, Algorithm 2: adding s g to the score grad log p(x_t) = -eps / sqrt(1 - abar_t)),

    eps_hat = eps_theta(x_t, t) - s sqrt(1 - abar_t) g,

which, for one DDPM step, moves the mean by s beta_t g / sqrt(alpha_t) ~ s Sigma_t g: the same s.

Classifier-free guidance (Ho & Salimans 2022) needs no classifier: one denoiser trained with
and without the caption (`text2im.py`) is evaluated both ways and extrapolated,

    eps_hat = eps_theta(x_t, t, null) + w (eps_theta(x_t, t, c) - eps_theta(x_t, t, null)),

w = 0 the unconditional model, w = 1 the conditional one, w > 1 beyond it.

Both plug into the one sampling loop, `minigen.diffusion.sample_loop`: classifier-free guidance
as the prediction its denoiser returns, CLIP guidance as its step (`guided_step`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from minigen import nn
from minigen.diffusion import DDIMScheduler, DDPMScheduler
from minigen.synthesis.clip import CLIP
from minigen.tensor import Tensor, no_grad

__all__ = [
    "clip_grad",
    "frozen",
    "clip_guided_mean",
    "clip_guided_eps",
    "cfg_eps",
    "guided_step",
]


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


def clip_guided_mean(mean: Any, sigma_t: float, grad: Any, scale: float) -> Any:
    """The mean of Eq. 7.1 moved along the CLIP gradient (mean: x_t + f(x_t, t; w))."""
    # guided mean of Eq. 7.1: x_t + f(x_t, t; w) + s Sigma_t grad_{x_t}(z_img . z_txt), Sigma_t = sigma_t^2
    return mean + scale * sigma_t**2 * grad


def clip_guided_eps(eps: Any, abar_t: float, grad: Any, scale: float) -> Any:
    """The predicted noise moved along the CLIP gradient (the DDIM form of the guidance)."""
    # eps_hat = eps_theta(x_t, t) - s sqrt(1 - abar_t) grad_{x_t}(z_img . z_txt)
    return eps - scale * (1.0 - abar_t) ** 0.5 * grad


def cfg_eps(eps_uncond: Any, eps_cond: Any, w: float) -> Any:
    """Classifier-free guidance: the two noise predictions combined with weight w."""
    # eps_hat = eps_theta(x_t, t, null) + w (eps_theta(x_t, t, c) - eps_theta(x_t, t, null))
    return eps_uncond + w * (eps_cond - eps_uncond)


def guided_step(
    scheduler: DDPMScheduler | DDIMScheduler,
    eps: np.ndarray,
    t: int,
    x_t: np.ndarray,
    grad: np.ndarray,
    scale: float,
    generator: np.random.Generator,
    eta: float = 0.0,
) -> np.ndarray:
    """One CLIP-guided step from x_t: DDPM moves the mean of Eq. 7.1, DDIM the noise.

    `sample_loop`'s `step` hook, with `grad` = clip_grad(x_t, t) (see `sampling.Text2Im`).
    The noise z is drawn from `generator` exactly as the unguided step draws it, so with
    s = 0 the two samplers give the same samples for the same seed.
    """
    if isinstance(scheduler, DDIMScheduler):
        abar_t = float(scheduler.alphas_cumprod[t])
        eps = clip_guided_eps(eps, abar_t, grad, scale)
        return scheduler.step(eps, t, x_t, eta=eta, generator=generator).prev_sample
    # x_t + f(x_t, t; w): the step with z = 0
    mean = scheduler.step(eps, t, x_t, variance_noise=np.zeros_like(x_t)).prev_sample
    sigma_t = scheduler.sigma(t)
    mean = clip_guided_mean(mean, sigma_t, grad, scale)
    if scheduler.previous_timestep(t) < 0:  # the last step returns the mean
        return mean
    z = generator.standard_normal(x_t.shape, dtype=x_t.dtype)  # as DDPMScheduler.step draws it
    # x_{t-1} = guided mean + sigma_t z
    return mean + sigma_t * z
