"""The denoisers of text-to-image synthesis on the scenes (§7.2): unconditional and captioned.

Both are the U-Net of `minigen.diffusion` on scenes x_0 of shape (3, 16, 16) in [-1, 1] (the
range CLIP's noise-aware image encoder is trained on), with the same noise schedule as CLIP
(linear, T = 1000), so a timestep t means the same x_t to both, and trained by the simplified
loss of Ho et al. (2020) with an EMA of the weights:

- the **unconditional** model eps_theta(x_t, t) learns the density of the training scenes; CLIP
  guidance (`guidance.py`) steers its samples towards a caption;
- the **conditional** model eps_theta(x_t, t, c) of classifier-free guidance (Ho & Salimans
  2022) reads the caption c through a text encoder of CLIP's design (a small transformer,
  `clip.TextEncoder`, its own weights): its state at <eos> g(c) by FiLM, every token's state by
  cross-attention (`xunet.py`). 10% of the time the caption is dropped, replaced by a learned
  *null* caption (a null vector, a null token), so one network also learns
  eps_theta(x_t, t, null), the unconditional model:

      e(c) = null            with probability p_uncond (a Bernoulli draw per example),
             g(c)            otherwise,
      L = || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, e(c)) ||^2.

  (The shipped conditional model predicts v instead, trained by ||v - v_theta||^2 with
  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, and hands the samplers the eps it implies: see
  `caption_unet.CaptionUNet` and `minigen.diffusion.denoising_loss`.)

  With `cell_weight` > 0 (the shipped model) the caption encoder reads both ways and also says
  where each mentioned object is, a map of the grid the U-Net reads (`caption_unet.py`), taught
  by the scenes themselves (`cells.token_cells`: which cell holds the object each word names):

      L = L_simple + lambda * mean_j CE(P_j, cell of token j's object)

The training scenes are those of `make_split` (seed 0), the same as CLIP's: held-out
combinations never appear, so scores on held-out captions measure composition. The runs'
configs are in `text2im_config.py`, the mirror pairs in `mirrors.py`, the checkpoints and the
shipped models in `text2im_io.py`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from functools import partial
from typing import Any

import numpy as np

from minigen import nn, optim
from minigen import rng as _rng
from minigen.diffusion import NoiseSchedule, blas_threads, denoising_loss, draw_noise
from minigen.parallel import ShardedBackward
from minigen.run_state import RunState, save_run
from minigen.synthesis.caption_unet import CaptionUNet
from minigen.synthesis.captions import CaptionedScenes, make_split
from minigen.synthesis.cells import token_cells
from minigen.synthesis.clip_train import load_clip
from minigen.synthesis.mirrors import mirror_pairs, mirror_safe
from minigen.synthesis.text2im_config import SCENE_RANGE, SCENE_SHAPE, Text2ImConfig, Text2ImResult
from minigen.synthesis.text2im_io import load_cond, resolve
from minigen.tensor import Tensor
from minigen.training import Every, Loop, Schedule

__all__ = ["caption_dropout", "scene_data", "draw_batch", "train_text2im"]


def caption_dropout(batch: int, p: float, generator: np.random.Generator) -> np.ndarray:
    """(B,) bool: which captions become the null caption, each with probability p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"the caption-dropout probability must lie in [0, 1], got {p}")
    return generator.random(batch) < p


def scene_data(n: int = 20000, seed: int = 0) -> CaptionedScenes:
    """The training scenes of `make_split(n, 0, seed)` in [-1, 1] (CLIP's, for seed 0)."""
    return make_split(n, 0, seed, value_range=SCENE_RANGE).train


def _init_weights(model: CaptionUNet, cfg: Text2ImConfig) -> None:
    """Start the caption encoder from a trained CLIP's text tower (`text_init`), then every weight
    from a trained conditional denoiser (`init`: its EMA weights); same sizes required."""
    if cfg.text_init:
        clip = load_clip(resolve(cfg.text_init))
        try:
            model.text.load_state_dict(clip.text.state_dict())
        except ValueError as e:
            raise ValueError(f"text_init: the caption encoder does not fit the text tower of "
                             f"{cfg.text_init}: {e}") from None  # fmt: skip
    if cfg.init:
        try:
            model.load_state_dict(load_cond(cfg.init).denoiser.state_dict())
        except ValueError as e:
            raise ValueError(
                f"init: the model does not fit the weights of {cfg.init}: {e}"
            ) from None


def train_text2im(
    config: Text2ImConfig,
    data: CaptionedScenes | None = None,
    progress: bool = True,
    threads: int | None = 1,
    workers: int = 1,
    *,
    run_dir: str | os.PathLike | None = None,
    checkpoint_interval: int = 0,
    resume: RunState | None = None,
    until: int | None = None,
) -> Text2ImResult:
    """Train a scene denoiser by L_simple (captions dropped with p_uncond for "cond").

    Deterministic for a seed; BLAS on `threads` threads (see `minigen.diffusion.blas_threads`).
    `workers` processes (1 .. config.shards) compute the shards of each batch's gradient: the
    weights do not depend on it, only the wall time does. The steps run through the one
    training loop (`minigen.training.Loop`); `run_dir`, `checkpoint_interval`, `resume`, `until`:
    saving and resuming the run, as in `minigen.diffusion.train`.
    """
    with blas_threads(threads), np.errstate(over="ignore", invalid="ignore"):
        return _train(config, data, progress, workers, threads, run_dir, checkpoint_interval,
                      resume, until)  # fmt: skip


def _shard_loss(
    schedule: NoiseSchedule,
    snr_gamma: float | None,
    prediction: str,
    cell_weight: float,
    model: nn.Module,
    shard: dict[str, Any],
) -> Tensor:
    """One shard's share of a step's loss (`minigen.parallel`): L_simple on its examples (plus
    the cell map's weighted cross-entropy), times their share of the batch."""
    fn = model
    if "tokens" in shard:  # the conditional model: e(c), the null caption where dropped
        e = model.embed(shard["tokens"], shard["drop"], shard.get("cells"))  # (b, E)
        fn = lambda x, t: model.raw(x, t, e)  # noqa: E731
    x0, t, eps = shard["x0"], shard["t"], shard["eps"]
    loss = denoising_loss(fn, schedule, x0, t, eps, snr_gamma, prediction)
    if cell_weight:
        # L = L_simple + lambda CE(cell map, the scene's cells)
        loss = loss + model.cell_loss(e, shard["cells"]) * cell_weight
    return loss if shard["share"] == 1 else loss * shard["share"]


def draw_batch(
    data: CaptionedScenes, rows: np.ndarray, n: int, gen: np.random.Generator,
    schedule: NoiseSchedule, p_uncond: float | None = None, cells: np.ndarray | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """n training examples of `rows` of data, drawn with replacement: scenes x_0, their t and
    noise eps, and for a conditional model (`p_uncond` given) their captions, which of them
    are dropped, and their cell targets (`cells`: `cells.token_cells` of the data)."""
    idx = rows[gen.integers(0, len(rows), n)]  # (n,)
    batch = {"x0": data.images[idx]}  # (n, 3, 16, 16)
    if p_uncond is not None:
        batch["tokens"] = data.tokens[idx]  # (n, L)
    if cells is not None:
        batch["cells"] = cells[idx]  # (n, L)
    batch["t"], batch["eps"] = draw_noise(schedule, batch["x0"], gen)  # (n,), (n, 3, 16, 16)
    if p_uncond is not None:
        batch["drop"] = caption_dropout(n, p_uncond, gen)  # (n,)
    return batch


# the run keywords (run_dir, interval, resume, until) mirror diffusion.train's: each trainer
# declares its own, alike in shape only
def _train(
    cfg: Text2ImConfig,
    data: CaptionedScenes | None,
    progress: bool,
    workers: int = 1,
    threads: int | None = 1,
    run_dir: str | os.PathLike | None = None,
    interval: int = 0,
    resume: RunState | None = None,
    until: int | None = None,
) -> Text2ImResult:
    data = data if data is not None else scene_data(cfg.n_train, cfg.data_seed)
    if data.images.shape[1:] != SCENE_SHAPE:
        raise ValueError(f"scene images must have shape {SCENE_SHAPE}, got {data.images.shape[1:]}")
    _rng.manual_seed(cfg.seed)  # the weights' initialisation
    gen = np.random.default_rng(cfg.seed)  # batches, dropout, timesteps, noise
    schedule = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)
    model = cfg.make_model()
    if cfg.kind == "cond" and resume is None:  # a resumed run has its weights in its state
        _init_weights(model, cfg)
    opt = optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr = Schedule(cfg.lr, cfg.warmup, cfg.steps, cfg.lr / 10)
    loop = Loop(model, opt, cfg.steps, lr, cfg.grad_clip, cfg.ema_decay, {"batches": gen},
                desc=f"text2im {cfg.kind}", progress=progress)  # fmt: skip
    if resume is not None:
        resume.restore(model, loop)
    loss_fn = partial(_shard_loss, schedule, cfg.snr_gamma, cfg.prediction, cfg.cell_weight)
    cells = token_cells(data.tokens, data.scenes) if cfg.cell_weight else None  # (N, L)
    parts = np.array_split(np.arange(cfg.batch_size), cfg.shards)  # each shard's rows
    sharded = ShardedBackward(model, partial(Text2ImConfig.make_model, cfg), loss_fn, cfg.shards,
                              workers, threads)  # fmt: skip
    pool = mirror_safe(data, cfg.data_seed) if cfg.mirror_pairs else np.arange(len(data))
    p_uncond = cfg.p_uncond if cfg.kind == "cond" else None  # the scenes model reads no caption

    def step_fn(step: int) -> float:
        # with mirror pairs, half a batch is drawn and the other half is its mirror
        n = cfg.batch_size // 2 if cfg.mirror_pairs else cfg.batch_size
        batch = draw_batch(data, pool, n, gen, schedule, p_uncond, cells)
        if cfg.mirror_pairs:
            batch = mirror_pairs(batch)  # (2n, ...) each
        opt.zero_grad()
        # grad L = sum_k grad((B_k / B) L_k), the shards' gradients summed into the parameters
        value = sharded(
            [{**{k: v[rows] for k, v in batch.items()}, "share": len(rows) / cfg.batch_size}
             for rows in parts]
        )  # fmt: skip
        return loop.apply(value)

    hooks = []
    if run_dir is not None:
        save = lambda lp: save_run(run_dir, asdict(cfg), model, lp)  # noqa: E731
        hooks.append(Every(interval, save, at_end=False))
    start, cpu_start = time.perf_counter(), time.process_time()
    with sharded:
        loop.run(step_fn, hooks, until)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return Text2ImResult(loop.ema.copy_to(cfg.make_model()).eval(), loop.losses, cfg, seconds, cpu)
