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

How CLIP guidance reads the sample (`ClipGuidance`): `target` "x_t" takes g at the noisy x_t
(the noise-aware CLIP at t, as above); "x0" takes it through the denoiser's estimate of x_0,

    x0_hat(x_t) = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t),
    g = grad_{x_t} (z_img(x0_hat, 0) . z_txt(c)) ~ grad_{x0_hat} (...) / sqrt(abar_t),

eps_theta held fixed in the derivative (its Jacobian is not back-propagated). `schedule` makes
the scale depend on t, s_t = s w(t): "constant" w = 1, "noise" w = sqrt(1 - abar_t) (strongest
early), "signal" w = sqrt(abar_t) (strongest late). `repeats` k > 1 takes each guided step k
times, re-noising x_{t-1} back to t in between (the self-recurrence of Bansal et al. 2023):
k - 1 more denoiser evaluations per step. `score` "cosine" follows z_img . z_txt(c);
"contrast" follows log p(c | x_t), CLIP's softmax over the caption and its minimal edits (a
colour or shape changed, a relation reversed, two colours swapped; `clip_grad_contrast`), the
log p(caption | x_t) of the chapter's bias with the alternatives that matter spelled out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from minigen import functional as F
from minigen import nn
from minigen.diffusion import DDIMScheduler, DDPMScheduler
from minigen.synthesis.captions import decode
from minigen.synthesis.clip import CLIP
from minigen.synthesis.clip_hard import minimal_edits
from minigen.tensor import Tensor, no_grad

__all__ = [
    "ClipGuidance",
    "clip_grad",
    "clip_grad_x0",
    "clip_grad_contrast",
    "contrast_set",
    "clip_guided_sampler_step",
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


def clip_grad_x0(
    clip: CLIP,
    x_t: Any,
    eps: Any,
    abar_t: float,
    text_tokens: Any,
    grad_fn: Callable[..., np.ndarray] | None = None,
) -> np.ndarray:
    """The CLIP gradient through the denoiser's estimate of x_0 (eps held fixed), (B, 3, H, W):
    grad_{x0_hat} score(x0_hat, 0) / sqrt(abar_t), x0_hat clipped to [-1, 1] before CLIP reads
    it (the gradient passes the clip unchanged); score: `grad_fn(clip, x, t, text_tokens)`'s,
    by default `clip_grad`'s z_img . z_txt(c)."""
    x_t, eps = np.asarray(x_t), np.asarray(eps)
    # x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    x0 = np.clip((x_t - (1.0 - abar_t) ** 0.5 * eps) / abar_t**0.5, -1.0, 1.0)  # (B, 3, H, W)
    # dx0_hat / dx_t = 1 / sqrt(abar_t) with eps fixed
    return (grad_fn or clip_grad)(clip, x0.astype(x_t.dtype), 0, text_tokens) / abar_t**0.5


def contrast_set(clip: CLIP, tokens: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What each caption (token ids (B, L)) is told apart from: itself and its minimal edits
    (`clip_hard.minimal_edits`). Returns z_txt of every caption involved (M, E), which of them
    each row's set holds, (B, M) bool, and each row's own caption's column (B,)."""
    rows = [decode(r) for r in np.atleast_2d(np.asarray(tokens))]
    texts: dict[str, int] = {}
    sets = [[texts.setdefault(c, len(texts)) for c in [r, *minimal_edits(r)]] for r in rows]
    mask = np.zeros((len(rows), len(texts)), dtype=bool)  # (B, M)
    for i, cols in enumerate(sets):
        mask[i, cols] = True
    with no_grad():
        z = clip.encode_text(list(texts)).numpy()  # (M, E)
    return z, mask, np.array([cols[0] for cols in sets])


def clip_grad_contrast(
    clip: CLIP, x_t: Any, t: Any, contrast: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> np.ndarray:
    """grad_{x_t} log p(c | x_t) per sample, (B, 3, H, W), p CLIP's softmax over the caption
    and its minimal edits (`contrast_set`, one row or one per sample):

        log p(c | x_t) = log softmax_j (e^s z_img(x_t, t) . z_txt_j)[c],   j in {c} + edits(c).
    """
    z_txt, mask, own = contrast
    x = np.asarray(x_t)
    B = x.shape[0]
    if len(mask) == 1:
        mask, own = np.repeat(mask, B, axis=0), np.repeat(own, B)
    dt = clip.image.fc1.weight.dtype
    pick = np.zeros(mask.shape, dtype=dt)  # (B, M)
    pick[np.arange(B), own] = 1.0
    off = np.where(mask, 0.0, -1e9).astype(dt)  # captions outside a row's set: never chosen
    xt = Tensor(x, dtype=dt, requires_grad=True)
    with frozen(clip):
        z_img = clip.encode_image(xt, t)  # (B, E)
        logits = (z_img @ Tensor(z_txt.T.astype(dt))) * float(clip.scale().item()) + off  # (B, M)
        # log p(c | x_t), summed over the batch (the samples are independent)
        (F.log_softmax(logits, axis=1) * pick).sum().backward()
    return xt.grad.astype(x.dtype if x.dtype.kind == "f" else dt, copy=False)


TARGETS = ("x_t", "x0")
SCHEDULES = ("constant", "noise", "signal")
SCORES = ("cosine", "contrast")


@dataclass(frozen=True)
class ClipGuidance:
    """How CLIP guidance reads the sample (see the module docstring): the gradient at x_t or
    through x0_hat, the scale's schedule over t, guided steps per denoising step."""

    target: str = "x_t"
    schedule: str = "constant"
    repeats: int = 1
    score: str = "cosine"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"ClipGuidance: unknown target {self.target!r}; one of {TARGETS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"ClipGuidance: unknown schedule {self.schedule!r}; one of {SCHEDULES}"
            )
        if self.score not in SCORES:
            raise ValueError(f"ClipGuidance: unknown score {self.score!r}; one of {SCORES}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"ClipGuidance: repeats must be an integer >= 1, got {self.repeats!r}")

    def weight(self, abar_t: float) -> float:
        """w(t) of s_t = s w(t)."""
        return {"constant": 1.0, "noise": (1.0 - abar_t) ** 0.5,
                "signal": abar_t**0.5}[self.schedule]  # fmt: skip

    def grad(self, clip: CLIP, x_t: Any, t: int, eps: Any, abar_t: float, tokens: Any) -> Any:
        """g at x_t, by the target's reading and the score's (tokens: the caption's ids, or
        `contrast_set`'s triple for the score "contrast")."""
        fn = clip_grad if self.score == "cosine" else clip_grad_contrast
        if self.target == "x0":
            return clip_grad_x0(clip, x_t, eps, abar_t, tokens, fn)
        return fn(clip, x_t, t, tokens)


def clip_guided_sampler_step(
    scheduler: DDPMScheduler | DDIMScheduler,
    clip: CLIP,
    tokens: Any,
    scale: float,
    guidance: ClipGuidance,
    eps_fn: Callable[[Any, int], Any],
) -> Callable[..., Any]:
    """`sample_loop`'s step hook for CLIP guidance: `guided_step` with g and s_t as `guidance`
    says, repeated with re-noising when guidance.repeats > 1 (eps_fn: the denoiser, for the
    repeats)."""
    cache: list = []

    def step(eps: Any, t: int, x: Any, gen: np.random.Generator, **kw: Any) -> Any:
        abar_t = float(scheduler.alphas_cumprod[t])
        s_t = scale * guidance.weight(abar_t)
        if guidance.score == "contrast" and not cache:
            cache.append(contrast_set(clip, tokens))  # the text side, once per chain
        what = cache[0] if cache else tokens
        prev = scheduler.previous_timestep(t)
        for r in range(guidance.repeats):
            grad = guidance.grad(clip, x, t, eps, abar_t, what)
            x_prev = guided_step(scheduler, eps, t, x, grad, s_t, gen, **kw)
            if r == guidance.repeats - 1 or prev < 0:
                return x_prev
            # back to t: x_t = sqrt(abar_t / abar_prev) x_{t-1} + sqrt(1 - abar_t / abar_prev) z
            a = abar_t / float(scheduler.alphas_cumprod[prev])
            z = gen.standard_normal(x_prev.shape, dtype=x_prev.dtype)
            x = a**0.5 * x_prev + (1.0 - a) ** 0.5 * z
            eps = eps_fn(x, t)
        return x_prev  # pragma: no cover - the loop always returns

    return step


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
