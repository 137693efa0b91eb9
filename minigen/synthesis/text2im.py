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
  by the scenes themselves (`captions.token_cells`: which cell holds the object each word names):

      L = L_simple + lambda * mean_j CE(P_j, cell of token j's object)

The training scenes are those of `make_split` (seed 0), the same as CLIP's: held-out
combinations never appear, so scores on held-out captions measure composition.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from minigen import checkpoint, nn, optim
from minigen import rng as _rng
from minigen.checkpoint import CheckpointError
from minigen.diffusion import (
    PREDICTIONS,
    DiffusionModel,
    NoiseSchedule,
    Normalizer,
    UNet,
    blas_threads,
    denoising_loss,
    draw_noise,
    load_model,
)
from minigen.parallel import ShardedBackward
from minigen.run_state import RunState, save_run
from minigen.synthesis.caption_unet import CaptionUNet
from minigen.synthesis.captions import (
    CaptionedScenes,
    decode,
    is_held_out,
    make_split,
    mirror_token_cells,
    mirror_tokens,
    parse_caption,
    token_cells,
)
from minigen.synthesis.clip import CLIPConfig
from minigen.synthesis.clip_train import load_clip
from minigen.synthesis.scenes import mirror
from minigen.synthesis.xunet import CrossAttnUNet
from minigen.tensor import Tensor
from minigen.training import Every, Loop, Schedule

__all__ = [
    "SCENE_RANGE", "SCENE_SHAPE", "ASSETS", "SHIPPED", "CaptionUNet", "Text2ImConfig",
    "Text2ImResult", "caption_dropout", "scene_data", "train_text2im", "CondModel",
    "save_text2im", "save_cond", "load_scenes", "load_cond", "resolve",
]  # fmt: skip

SCENE_RANGE = (-1.0, 1.0)
SCENE_SHAPE = (3, 16, 16)
FORMAT = "minigen.text2im"
# 2: the caption through cross-attention and FiLM (xunet.py); 1 (refused): one pooled vector
VERSION = 2
ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED = {
    "clip": "text2im_clip.safetensors",
    "scenes": "text2im_scenes.safetensors",
    "cond": "text2im_cond.safetensors",
}
KINDS = ("scenes", "cond")


def caption_dropout(batch: int, p: float, generator: np.random.Generator) -> np.ndarray:
    """(B,) bool: which captions become the null caption, each with probability p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"the caption-dropout probability must lie in [0, 1], got {p}")
    return generator.random(batch) < p


@dataclass
class Text2ImConfig:
    """A training run of a scene denoiser: `kind` "scenes" (unconditional) or "cond"."""

    kind: str = "scenes"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 2)
    p_uncond: float = 0.1  # cond only: the caption-dropout probability
    text_width: int = 64  # cond only: the caption encoder
    text_layers: int = 2
    text_heads: int = 4
    embed_dim: int = 64
    n_train: int = 20000
    data_seed: int = 0
    seed: int = 0
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    heads: int = 4  # cond only: heads of the cross-attention blocks
    attn_levels: tuple[int, ...] = (1, 2)  # cond only: levels (0 = 16x16) with cross-attention
    text_init: str | None = None  # cond only: start the caption encoder from this CLIP's text tower
    init: str | None = None  # cond only: start every weight from this conditional checkpoint
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting (None: L_simple)
    prediction: str = "eps"  # cond only: the U-Net predicts eps, or v (Salimans & Ho 2022)
    shards: int = 1  # each batch's gradient as the sum of this many shards' (minigen.parallel)
    mirror_pairs: bool = False  # cond only: half of each batch the mirrors of the other half
    cell_weight: float = 0.0  # cond only: > 0 adds the cell map, its cross-entropy so weighted

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {list(KINDS)}")
        for name in ("steps", "batch_size", "n_train", "base_channels", "shards"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be positive, got {self.snr_gamma}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of {PREDICTIONS}")
        if self.mirror_pairs and (self.kind != "cond" or self.batch_size % 2):
            raise ValueError("mirror_pairs: a conditional model and an even batch size only")
        if self.cell_weight < 0 or (self.cell_weight and self.kind != "cond"):
            raise ValueError(
                f"cell_weight: >= 0 and a conditional model only, got {self.cell_weight}"
            )
        if self.shards > self.batch_size:
            raise ValueError(f"{self.shards} shards of a batch of {self.batch_size}: too many")
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.attn_levels = tuple(int(a) for a in self.attn_levels)

    def unet_config(self) -> dict[str, Any]:
        return {"kind": "unet", "image_size": SCENE_SHAPE[1], "in_channels": SCENE_SHAPE[0],
                "base_channels": self.base_channels, "channel_mults": list(self.channel_mults)}  # fmt: skip

    def make_model(self) -> nn.Module:
        unet = self.unet_config()
        if self.kind == "scenes":
            return UNet(**{k: v for k, v in unet.items() if k != "kind"})
        # the caption encoder: a CLIPConfig's text fields (its image fields go unused); the cell
        # map reads the caption both ways
        text = CLIPConfig(embed_dim=self.embed_dim, width=self.text_width, heads=self.text_heads,
                          layers=self.text_layers, causal=not self.cell_weight)  # fmt: skip
        unet = {**unet, "kind": CrossAttnUNet.kind, "heads": self.heads,
                "attn_levels": list(self.attn_levels)}  # fmt: skip
        schedule = {"name": self.schedule, "num_train_timesteps": self.num_train_timesteps}
        return CaptionUNet(unet, text.to_dict(), self.p_uncond, self.prediction, schedule,
                           cells=self.cell_weight > 0)  # fmt: skip


@dataclass
class Text2ImResult:
    """A trained denoiser (EMA weights), its losses, the run's config and wall time."""

    model: nn.Module
    losses: list[float]
    config: Text2ImConfig
    seconds: float  # wall time
    cpu_seconds: float = 0.0  # the process's CPU time (wall time on a machine nobody shares)

    @property
    def schedule(self) -> dict[str, Any]:
        c = self.config
        return {"name": c.schedule, "num_train_timesteps": c.num_train_timesteps}

    def train_record(self) -> dict[str, Any]:
        return {**asdict(self.config), "seconds": round(self.seconds, 1),
                "cpu_seconds": round(self.cpu_seconds, 1),
                "final_loss": float(np.mean(self.losses[-100:]))}  # fmt: skip


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


def mirror_safe(data: CaptionedScenes, data_seed: int) -> np.ndarray:
    """The rows whose mirrored caption asserts no held-out relation of `make_split(..., data_seed)`
    (the mirror of "yellow right of red" is "yellow left of red", which may be held out)."""
    split = make_split(0, 0, data_seed)  # the held-out sets depend on the seed only
    mirrored = [parse_caption(decode(t)) for t in mirror_tokens(data.tokens)]
    held = [is_held_out(p, split.held_out_things, split.held_out_relations) for p in mirrored]
    return np.flatnonzero(~np.array(held, dtype=bool))  # (n_safe,)


def _mirror_batch(
    data: CaptionedScenes, pool: np.ndarray, gen: np.random.Generator, n: int,
    p_uncond: float, schedule: NoiseSchedule, cells: np.ndarray | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """n scenes of `pool` and their mirrors (`scenes.mirror`, "left" and "right" swapped in the
    caption), with the same t, the mirrored noise and the same caption dropout: pairs that
    differ only by where things are and by the relation word, so the word's gradient is not
    lost among everything else that differs between two scenes."""
    idx = pool[gen.integers(0, len(pool), n)]  # (n,)
    x0, tokens = data.images[idx], data.tokens[idx]  # (n, 3, 16, 16), (n, L)
    t, eps = draw_noise(schedule, x0, gen)  # (n,), (n, 3, 16, 16)
    drop = caption_dropout(n, p_uncond, gen)  # (n,)
    extra = {}
    if cells is not None:  # where each token's object is: in the mirror, columns reversed
        extra["cells"] = np.concatenate([cells[idx], mirror_token_cells(cells[idx])])  # (2n, L)
    return {
        **extra,
        "x0": np.concatenate([x0, mirror(x0)]),  # (2n, 3, 16, 16)
        "tokens": np.concatenate([tokens, mirror_tokens(tokens)]),  # (2n, L)
        "drop": np.concatenate([drop, drop]),  # (2n,)
        "t": np.concatenate([t, t]),  # (2n,)
        "eps": np.concatenate([eps, mirror(eps)]),  # (2n, 3, 16, 16)
    }


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
    pool = mirror_safe(data, cfg.data_seed) if cfg.mirror_pairs else None

    def step_fn(step: int) -> float:
        if cfg.mirror_pairs:
            batch = _mirror_batch(data, pool, gen, cfg.batch_size // 2, cfg.p_uncond,
                                  schedule, cells)  # fmt: skip
        else:
            idx = gen.integers(0, len(data), cfg.batch_size)  # (B,)
            batch = {"x0": data.images[idx]}  # (B, 3, 16, 16)
            if cfg.kind == "cond":
                batch["tokens"] = data.tokens[idx]  # (B, L)
                batch["drop"] = caption_dropout(len(idx), cfg.p_uncond, gen)  # (B,)
            if cells is not None:
                batch["cells"] = cells[idx]  # (B, L)
            t, eps = draw_noise(schedule, batch["x0"], gen)  # (B,), (B, 3, 16, 16)
            batch["t"], batch["eps"] = t, eps
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


# ----------------------------------------------------------------------------- checkpoints


def save_text2im(result: Text2ImResult, path: str | os.PathLike, half: bool = False) -> Path:
    """Write a trained denoiser: "scenes" as a `minigen.diffusion` checkpoint (so
    `minigen sample-diffusion` reads it), "cond" with its text encoder and null caption
    (`half`: its weights stored as float16, see `save_cond`)."""
    if result.config.kind == "scenes":
        identity = Normalizer(np.asarray(0.0), np.asarray(1.0))  # x_0 already in [-1, 1]
        model = DiffusionModel(result.model, result.schedule, identity, "scenes", SCENE_SHAPE,
                               {"train": result.train_record()})  # fmt: skip
        return model.save(path)
    return save_cond(CondModel.from_training(result), path, half)


def save_cond(model: CondModel, path: str | os.PathLike, half: bool = False) -> Path:
    """Write a conditional denoiser; `half` stores its weights as float16 (half the file,
    read back into the model's float32: a relative rounding of at most 2^-11 per weight)."""
    state = model.denoiser.state_dict()
    if half:
        state = {k: v.astype(np.float16) for k, v in state.items()}
    meta = {"format": FORMAT, "version": VERSION, "model": model.denoiser.config,
            "schedule": model.schedule, "train": model.config.get("train", {}),
            "stored_dtype": "float16" if half else str(next(iter(state.values())).dtype)}  # fmt: skip
    return checkpoint.save(path, state, meta)


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint file, or a shipped one by name (clip, scenes, cond)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if str(name_or_path) in SHIPPED:
        return ASSETS / SHIPPED[str(name_or_path)]
    raise CheckpointError(
        f"checkpoint file not found: {p} (shipped text-to-image checkpoints: {', '.join(SHIPPED)})"
    )


@dataclass
class CondModel:
    """The conditional denoiser of classifier-free guidance, with its noise schedule."""

    denoiser: CaptionUNet
    schedule: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_training(cls, result: Text2ImResult) -> CondModel:
        return cls(result.model, result.schedule, {"train": result.train_record()})


def load_scenes(name_or_path: str | os.PathLike = "scenes") -> DiffusionModel:
    """The unconditional scene model from a checkpoint (default: the shipped one)."""
    path = resolve(name_or_path)
    model = load_model(path)
    if model.sample_shape != SCENE_SHAPE:
        raise CheckpointError(
            f"{path}: a diffusion model of samples {model.sample_shape}, not scenes {SCENE_SHAPE}"
        )
    return model


def load_cond(name_or_path: str | os.PathLike = "cond") -> CondModel:
    """The conditional scene model from a checkpoint (default: the shipped one)."""
    path = resolve(name_or_path)
    _, meta = checkpoint.load(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a conditional text-to-image checkpoint (format {meta.get('format')!r})"
        )
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: a conditional text-to-image checkpoint of format version "
            f"{meta.get('version')!r}; this minigen reads version {VERSION} (the caption read by "
            "cross-attention and FiLM): retrain it with `minigen train-text2im --model cond`"
        )
    try:
        cfg = meta["model"]
        schedule = dict(meta["schedule"])
        denoiser = CaptionUNet(cfg["unet"], cfg["text"], cfg.get("p_uncond", 0.1),
                               cfg.get("prediction", "eps"), schedule,
                               cells=bool(cfg.get("cells", False)))  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its config lacks or garbles {e}") from None
    checkpoint.load_module(denoiser, path)
    return CondModel(denoiser.eval(), schedule, {"train": meta.get("train", {})})
