"""Text to image on the scenes: sample for a caption, unguided, CLIP-guided or classifier-free.

    from minigen.synthesis import Text2Im
    t2i = Text2Im()                                          # the shipped checkpoints
    x = t2i.sample("a red circle above a blue square", 8, method="cfg", scale=3.0)
    # x: (8, 3, 16, 16) in [-1, 1]; score_batch(x, [caption] * 8, value_range=(-1, 1))

Three methods, one sampling loop (`minigen.diffusion.sample_loop`), DDPM (Eq. 7.1) or DDIM:

- "none": the unconditional scene model, the caption ignored (the baseline);
- "clip": the unconditional model, its steps moved along the noise-aware CLIP's gradient of
  z_img(x_t, t) . z_txt(c), scale s (the loop's step is `guidance.guided_step`);
- "cfg": the conditional model, eps_uncond + w (eps_cond - eps_uncond), scale w (the loop's
  denoiser returns `guidance.cfg_eps`).

x_T and every step's noise come from `seed`: the same seed gives the same images, and CLIP
guidance with s = 0 gives exactly the unguided images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from minigen.diffusion import SAMPLERS, DiffusionModel, blas_threads, make_scheduler, sample_loop
from minigen.synthesis.captions import encode, parse_caption
from minigen.synthesis.clip import CLIP
from minigen.synthesis.clip_train import load_clip
from minigen.synthesis.guidance import ClipGuidance, cfg_eps, clip_guided_sampler_step
from minigen.synthesis.scenes import plot_grid, to_unit
from minigen.synthesis.text2im_config import SCENE_RANGE, SCENE_SHAPE
from minigen.synthesis.text2im_io import CondModel, load_cond, load_scenes, resolve
from minigen.synthesis.xunet import Caption
from minigen.tensor import Tensor, no_grad

__all__ = ["METHODS", "DEFAULT_SCALE", "DEFAULT_STEPS", "Text2Im", "plot_samples", "plot_side_by_side",
           "upscale"]  # fmt: skip

METHODS = ("clip", "cfg", "none")
DEFAULT_SCALE = {"clip": 100.0, "cfg": 3.0, "none": 0.0}
# DDPM over 100 of the T = 1000 timesteps (strided) by default: with the shipped denoisers,
# 50 deterministic DDIM steps leave speckles of colour the checker reads as objects
DEFAULT_STEPS = {"ddpm": 100, "ddim": 50}
DEFAULT_GUIDANCE = ClipGuidance()  # how --method clip reads the sample


class Text2Im:
    """The three models of text-to-image synthesis, each loaded when first needed.

    Each argument is a model, a checkpoint path or a shipped name ("clip", "scenes", "cond").
    """

    def __init__(
        self,
        clip: CLIP | str | os.PathLike = "clip",
        scenes: DiffusionModel | str | os.PathLike = "scenes",
        cond: CondModel | str | os.PathLike = "cond",
    ) -> None:
        self._models: dict[str, Any] = {"clip": clip, "scenes": scenes, "cond": cond}

    def _get(self, name: str) -> Any:
        m = self._models[name]
        if isinstance(m, str | os.PathLike):
            load = {"clip": lambda p: load_clip(resolve(p)), "scenes": load_scenes,
                    "cond": load_cond}[name]  # fmt: skip
            m = self._models[name] = load(m)
        return m

    clip = property(lambda self: self._get("clip"))
    scenes = property(lambda self: self._get("scenes"))
    cond = property(lambda self: self._get("cond"))

    def sample(
        self,
        caption: str | Sequence[str],
        n: int = 8,
        method: str = "clip",
        scale: float | None = None,
        sampler: str = "ddpm",
        steps: int | None = None,
        seed: int | np.random.Generator | None = 0,
        eta: float = 0.0,
        clip_sample: bool = True,
        image_size: int | None = None,
        progress: bool = False,
        threads: int | None = 1,
        guidance: ClipGuidance | None = None,
    ) -> np.ndarray:
        """n scenes (n, 3, 16, 16) in [-1, 1] for `caption` (see the module docstring), or
        one scene per caption for a list of n captions.

        `scale` defaults to DEFAULT_SCALE[method]; `steps` to DEFAULT_STEPS[sampler] (DDPM: 100
        strided steps, pass 1000 for every step of Eq. 7.1; DDIM: 50);
        `clip_sample` clips each predicted x_0 to [-1, 1]; BLAS runs on `threads` threads.
        `guidance`: how CLIP guidance reads the sample (default: DEFAULT_GUIDANCE).
        """
        tokens = check_request(caption, n, method, sampler, image_size)
        s = DEFAULT_SCALE[method] if scale is None else float(scale)
        model = self.cond if method == "cfg" else self.scenes
        schedule = model.schedule
        steps = DEFAULT_STEPS[sampler] if steps is None else steps
        sched = make_scheduler(schedule, sampler, steps, clip_sample=clip_sample)
        gen = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        # x_T ~ N(0, I), drawn as DiffusionModel.sample draws it
        x_T = gen.standard_normal((n, *SCENE_SHAPE), dtype=np.float32)  # (n, 3, 16, 16)
        eps_fn = _cfg_eps_fn(model, tokens, n, s, gen) if method == "cfg" else model.eps
        step = None  # the scheduler's own step
        if method == "clip":
            clip = self.clip
            _check_same_schedule(clip, schedule)
            g = DEFAULT_GUIDANCE if guidance is None else guidance
            step = clip_guided_sampler_step(sched, clip, tokens, s, g, model.eps)
        kw = {"eta": eta} if sampler == "ddim" else {}
        with blas_threads(threads), np.errstate(over="ignore", invalid="ignore"):
            return sample_loop(sched, eps_fn, x_T, gen, progress=progress, step=step, **kw)


def check_request(
    caption: str | Sequence[str], n: int, method: str, sampler: str, image_size: int | None
) -> np.ndarray:
    """The caption's token ids (1, L) (or (n, L) for n captions) after checking everything a
    request can get wrong."""
    if method not in METHODS:
        raise ValueError(f"unknown guidance method {method!r}; choose one of {list(METHODS)}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"the number of images must be an integer >= 1, got {n!r}")
    S = SCENE_SHAPE[-1]
    if image_size is not None and image_size != S:
        raise ValueError(
            f"the text-to-image models were trained on {S}x{S} scenes; "
            f"they cannot generate {image_size}x{image_size} images"
        )
    captions = [caption] if isinstance(caption, str) else list(caption)
    if len(captions) not in (1, n):
        raise ValueError(f"{len(captions)} captions for {n} images: give one, or one per image")
    for c in captions:
        parse_caption(c)  # unknown words, empty captions, broken grammar: a clear error
    return np.stack([encode(c) for c in captions])  # (1 or n, L)


def _check_same_schedule(clip: CLIP, schedule: dict[str, Any]) -> None:
    """CLIP's t must mean the same x_t as the denoiser's: one noise schedule for both."""
    mine = (clip.config.schedule, clip.config.num_train_timesteps)
    theirs = (schedule["name"], int(schedule["num_train_timesteps"]))
    if mine != theirs:
        raise ValueError(
            f"CLIP was trained on noise schedule {mine}, the denoiser on {theirs}: "
            "guidance needs one schedule for both"
        )


def _cfg_eps_fn(
    model: CondModel, tokens: np.ndarray, n: int, w: float, gen: np.random.Generator
) -> Any:
    """eps(x_t, t) by classifier-free guidance: both predictions from one batch of 2n (a model
    with a cell map first draws where each image's objects go)."""
    denoiser = model.denoiser
    tokens = np.repeat(tokens, n // len(tokens), axis=0)  # (n, L)
    cells = denoiser.place(tokens, gen) if denoiser.cell_where is not None else None  # (n, L)
    with no_grad():
        e = denoiser.embed(tokens, None, cells)  # the captions
        null = denoiser.embed(tokens, np.ones(n, dtype=bool), cells)  # n null captions
        both = Caption.concat([null, e])  # 2n rows: null first

    def eps_fn(x: np.ndarray, t: int) -> np.ndarray:
        with no_grad():
            out = model.denoiser(Tensor(np.concatenate([x, x])), t, both).data  # (2n, 3, H, W)
        return cfg_eps(out[:n], out[n:], w)  # (n, 3, H, W)

    return eps_fn


def plot_samples(
    images: np.ndarray,
    caption: str,
    title: str = "",
    scores: Sequence[float] | None = None,
    ncols: int = 8,
) -> Any:
    """A grid of samples for one caption, each labelled with its checker score if given."""
    labels = None if scores is None else [f"score {s:.2f}" for s in scores]
    fig = plot_grid(images, labels, ncols=ncols, value_range=SCENE_RANGE)
    fig.suptitle(f'"{caption}"' + (f"\n{title}" if title else ""), fontsize=9)
    fig.tight_layout()
    return fig


def upscale(images: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of images (..., H, W) by an integer factor: each pixel
    becomes a factor x factor block, (..., factor H, factor W)."""
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"upscale: the factor must be an integer >= 1, got {factor!r}")
    return np.repeat(np.repeat(np.asarray(images), factor, axis=-2), factor, axis=-1)


def plot_side_by_side(
    rows: Sequence[tuple[str, np.ndarray, Sequence[float]]], caption: str, factor: int = 8
) -> Any:
    """One caption's samples by several methods, a row each: (label, images (n, 3, H, W),
    their checker scores) per row, every image upscaled by `factor` (nearest) and titled with
    its score, each row labelled with its method and mean score."""
    import matplotlib.pyplot as plt

    n = max(len(x) for _, x, _ in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.5 * n + 0.6, 1.75 * len(rows) + 0.5),
                             squeeze=False)  # fmt: skip
    for r, (label, images, scores) in enumerate(rows):
        if len(scores) != len(images):
            raise ValueError(f"plot_side_by_side: {len(images)} images, {len(scores)} scores")
        big = upscale(to_unit(np.asarray(images), SCENE_RANGE), factor)  # (n, 3, fH, fW)
        for i, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(images):
                ax.set_axis_off()
                continue
            ax.imshow(big[i].transpose(1, 2, 0), interpolation="nearest")
            ax.set_title(f"score {scores[i]:.2f}", fontsize=10)
        mean = float(np.mean(scores))
        axes[r, 0].set_ylabel(f"{label}\nmean {mean:.2f}", fontsize=10)
    fig.suptitle(f'"{caption}"', fontsize=12)
    fig.tight_layout()
    return fig
