"""Training CLIP on captioned scenes, its checkpoints, zero-shot retrieval, and the figure.

Training draws B pairs (x_0, c) from the training scenes, a timestep t ~ U{0, ..., T-1} and
noise eps ~ N(0, I) per pair, and minimises the contrastive loss of `clip` on

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,

with AdamW and a warm-up + cosine learning rate. Same seed, same model.

Zero-shot retrieval measures, for held-out scenes at a fixed t, whether the image embedding is
closest to a right caption: among k candidates (its own caption and k - 1 captions that do
not describe it), and among all the captions of a batch (image -> text top-1). A caption
*describes* a scene when it names exactly the scene's things and each of its relations holds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minigen import checkpoint, optim, rng
from minigen.checkpoint import CheckpointError
from minigen.synthesis.captions import (
    CaptionedScenes,
    caption_scenes,
    is_held_out,
    make_split,
)
from minigen.synthesis.clip import CLIP, CLIPConfig, caption_key, contrastive_loss
from minigen.synthesis.clip_hard import (
    describes,
    hard_negative_loss,
    minimal_edits,
    seen_combinations,
)
from minigen.synthesis.clip_hard import hard_negatives as hard_negatives_of
from minigen.synthesis.scenes import COLOURS, SHAPES, generate, to_unit
from minigen.tensor import Tensor, no_grad
from minigen.training import Loop, Schedule

__all__ = [
    "TrainResult",
    "training_data",
    "train_clip",
    "save_clip",
    "load_clip",
    "similarity",
    "describes",
    "minimal_edits",
    "retrieval_accuracy",
    "in_distribution_scenes",
    "plot_similarity",
]


@dataclass
class TrainResult:
    model: CLIP
    losses: list[float] = field(default_factory=list)  # one per step
    accuracies: list[float] = field(default_factory=list)  # in-batch image -> text top-1
    settings: dict[str, Any] = field(default_factory=dict)  # how it was trained (JSON-able)


def training_data(cfg: CLIPConfig, n_train: int = 20000, seed: int = 0) -> CaptionedScenes:
    """The training scenes of `make_split(n_train, 0, seed)` (held-out combinations excluded),
    in the model's value range."""
    return make_split(n_train, 0, seed, size=cfg.image_size, value_range=cfg.value_range).train


def train_clip(
    config: CLIPConfig | None = None,
    *,
    data: CaptionedScenes | None = None,
    n_train: int = 20000,
    data_seed: int = 0,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    grad_clip: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    hard_negatives: int = 0,
) -> TrainResult:
    """Train a CLIP from scratch (calls `minigen.manual_seed(seed)`; deterministic for a seed).

    data: captioned scenes in config.value_range (default: `training_data(config, n_train,
    data_seed)`). The steps run through the one training loop (`minigen.training.Loop`):
    warm-up over `warmup` steps, cosine decay to lr / 20, gradients clipped to norm
    `grad_clip` (0: not clipped), a non-finite loss or gradient stops the run with
    `TrainingDiverged`. Returns the model and the loss and in-batch accuracy of every step.
    hard_negatives k > 0 adds, for every image, the cross-entropy of its own caption against k
    minimal edits of it that name only combinations the training captions show
    (`clip_hard.hard_negative_loss`, weight 1).
    """
    cfg = config or CLIPConfig()
    given_data = data
    if data is None:
        data = training_data(cfg, n_train, data_seed)
    if data.images.shape[1:] != (3, cfg.image_size, cfg.image_size):
        raise ValueError(
            f"train_clip: images of shape {data.images.shape[1:]}, but the config says "
            f"(3, {cfg.image_size}, {cfg.image_size})"
        )
    if len(data) < 2:
        raise ValueError(f"train_clip: need at least 2 captioned scenes, got {len(data)}")
    from minigen.diffusion import NoiseSchedule  # here, not at the top: no import cycle

    rng.manual_seed(seed)
    model = CLIP(cfg)
    sched = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)
    gen = np.random.default_rng([seed, 1])  # batches, timesteps and noise
    keys = _key_ids(data.captions)  # (N,) one id per meaning
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    settings = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "warmup": warmup, "grad_clip": grad_clip, "seed": seed,
        "n_train": len(data), "data_seed": data_seed if given_data is None else None,
    }  # fmt: skip
    if hard_negatives:  # written only when used: older checkpoints have no such key
        settings["hard_negatives"] = hard_negatives
    hard_gen = np.random.default_rng([seed, 2])  # which edits
    seen = seen_combinations(data.properties) if hard_negatives else None
    result = TrainResult(model, settings=settings)
    # warm-up, then cosine decay to lr / 20 (the shipped CLIP's recipe)
    loop = Loop(model, opt, steps, Schedule(lr, warmup, steps, lr / 20), grad_clip,
                generators={"batches": gen}, desc="clip", progress=progress)  # fmt: skip

    def loss_at(step: int) -> Tensor:
        idx = gen.choice(len(data), min(batch_size, len(data)), replace=False)  # (B,)
        x0 = data.images[idx]  # (B, 3, H, W)
        t = gen.integers(0, cfg.num_train_timesteps, len(idx))  # (B,) t ~ U{0..T-1}
        eps = gen.standard_normal(x0.shape, dtype=np.float32)
        # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        x_t = sched.add_noise(x0, eps, t)
        # P_ij = captions i and j mean the same (duplicates are positives, not negatives)
        P = keys[idx][:, None] == keys[idx][None, :]  # (B, B)
        z_img, z_txt = model(x_t, t, data.tokens[idx])  # (B, E) each
        loss = contrastive_loss(z_img, z_txt, model.log_scale, P, cfg.max_scale)
        if hard_negatives:
            objs = [data.scenes.objects(i) for i in idx]
            caps, valid = hard_negatives_of([data.captions[i] for i in idx], objs, hard_negatives,
                                            hard_gen, seen)  # fmt: skip
            z_hard = model.encode_text(caps)  # (B k, E)
            # L + L_hard: each image's own caption against k minimal edits of it
            loss = loss + hard_negative_loss(z_img, z_txt, z_hard, model.log_scale, valid,
                                             cfg.max_scale)  # fmt: skip
        # the in-batch image -> text top-1: the trainer's own log, beside the loop's losses
        sim = z_img.data @ z_txt.data.T  # (B, B)
        acc = float(P[np.arange(len(idx)), sim.argmax(axis=1)].mean())
        result.accuracies.append(acc)
        loop.postfix["acc"] = f"{acc:.2f}"
        return loss

    result.losses = loop.run(loss_at)
    model.eval()
    return result


def _key_ids(captions: Sequence[str]) -> np.ndarray:
    """(N,) int: equal ids for captions that mean the same (see `clip.caption_key`)."""
    table: dict[frozenset, int] = {}
    return np.array([table.setdefault(caption_key(c), len(table)) for c in captions], np.int64)


# ----------------------------------------------------------------------------- checkpoints


def save_clip(model: CLIP, path: str | os.PathLike, training: dict[str, Any] | None = None) -> Path:
    """Write the parameters (safetensors) with the config (and how it was trained) as JSON."""
    meta = {"model": "clip", "config": model.config.to_dict(), "training": training or {}}
    return checkpoint.save_module(model, path, meta)


def load_clip(path: str | os.PathLike) -> CLIP:
    """A CLIP rebuilt from its checkpoint's config; CheckpointError names the file and what is
    wrong (not a CLIP checkpoint, an unknown config field, a key or shape that does not fit)."""
    _, meta = checkpoint.load(path)
    if meta.get("model") != "clip":
        raise CheckpointError(f"{path} is not a CLIP checkpoint (model = {meta.get('model')!r})")
    try:
        cfg = CLIPConfig.from_dict(meta.get("config", {}))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    model = CLIP(cfg)
    checkpoint.load_module(model, path)
    model.eval()
    return model


# ----------------------------------------------------------------------------- retrieval


def _embed_images(model: CLIP, x: np.ndarray, t: Any, batch_size: int = 256) -> np.ndarray:
    """z_img of images x_t (N, 3, H, W) at t (int or (N,)), in batches: (N, E)."""
    tt = np.broadcast_to(np.asarray(t), (len(x),))
    with no_grad():
        parts = [
            model.encode_image(x[i : i + batch_size], tt[i : i + batch_size]).numpy()
            for i in range(0, len(x), batch_size)
        ]
    return np.concatenate(parts)  # (N, E)


def similarity(model: CLIP, images: Any, t: Any, captions: Any) -> np.ndarray:
    """Cosine similarities z_img_i . z_txt_j of images x_t (N, 3, H, W) at t and captions (M)."""
    with no_grad():
        z_txt = model.encode_text(captions).numpy()  # (M, E)
    return _embed_images(model, np.asarray(images), t) @ z_txt.T  # (N, M)


def retrieval_accuracy(
    model: CLIP,
    data: CaptionedScenes,
    t: int,
    *,
    k: int = 5,
    batch: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Zero-shot retrieval at timestep t (t = 0: the clean images x_0), image -> text.

    k_way: the image's own caption scores above k - 1 captions of other scenes that do not
    describe it (chance 1 / k). k_way_hard: the same against k - 1 minimal edits of its own
    caption that do not describe it (`minimal_edits`: a word changed, a relation reversed,
    two colours swapped). top1: the best of the captions of a batch of `batch` scenes
    describes the image (top1_chance: the mean share of the batch's captions that do).
    """
    gen = np.random.default_rng(seed)
    n = len(data)
    objects = [data.scenes.objects(i) for i in range(n)]
    fits = np.array([[describes(p, objects[i]) for p in data.properties] for i in range(n)])
    hard = []
    for i in range(n):
        edits = [c for c in minimal_edits(data.captions[i]) if not describes(c, objects[i])]
        if len(edits) >= k - 1:
            hard.append((i, [edits[j] for j in gen.choice(len(edits), k - 1, replace=False)]))
    x = _noised(model, data.images, t, gen)
    with no_grad():
        z_img = _embed_images(model, x, t)  # (N, E)
        z_txt = model.encode_text(data.tokens).numpy()  # (N, E)
        z_hard = model.encode_text([c for _, cs in hard for c in cs]).numpy() if hard else None
    sim = z_img @ z_txt.T  # (N, N)
    wins, top1, chance = [], [], []
    for i in range(n):
        wrong = np.flatnonzero(~fits[i])
        if len(wrong) >= k - 1:
            pick = gen.choice(wrong, k - 1, replace=False)
            wins.append(sim[i, i] > sim[i, pick].max())
    hard_wins = [
        sim[i, i] > (z_hard[m * (k - 1) : (m + 1) * (k - 1)] @ z_img[i]).max()
        for m, (i, _) in enumerate(hard)
    ]
    for lo in range(0, n - batch + 1, batch):
        blk = slice(lo, lo + batch)
        best = sim[blk, blk].argmax(axis=1)  # (batch,)
        top1 += fits[blk, blk][np.arange(batch), best].tolist()
        chance += fits[blk, blk].mean(axis=1).tolist()
    mean = lambda v: float(np.mean(v)) if len(v) else float("nan")
    return {
        "k_way": mean(wins),
        "k_way_hard": mean(hard_wins),
        "top1": mean(top1),
        "top1_chance": mean(chance),
    }


def in_distribution_scenes(
    cfg: CLIPConfig, n: int, seed: int = 1, split_seed: int = 0
) -> CaptionedScenes:
    """Fresh scenes of the training distribution of `make_split(..., split_seed)`: no held-out
    thing or relation, drawn with another seed (so, new scenes, seen combinations)."""
    split = make_split(0, 0, split_seed, size=cfg.image_size)
    held = {(h.colour, h.shape) for h in split.held_out_things}
    allowed = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]
    gen = np.random.default_rng(seed)
    out = None
    while out is None or len(out) < n:
        d = caption_scenes(
            generate(2 * n, gen, size=cfg.image_size, things=allowed, value_range=cfg.value_range),
            gen,
        )
        keep = [
            i
            for i, p in enumerate(d.properties)
            if not is_held_out(p, split.held_out_things, split.held_out_relations)
        ]
        out = d[np.array(keep, dtype=np.int64)]
    return out[np.arange(n)]


# ----------------------------------------------------------------------------- the figure


def plot_similarity(
    sim: np.ndarray,
    images: np.ndarray,
    captions: Sequence[str],
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    title: str | None = None,
) -> Any:
    """A matplotlib figure of the (N images, M captions) similarity matrix, CLIP-paper style:
    captions down the left, images along the top, each cell its cosine similarity."""
    import matplotlib.pyplot as plt

    sim = np.asarray(sim)
    n, m = sim.shape
    if len(images) != n or len(captions) != m:
        raise ValueError(
            f"plot_similarity: a ({n}, {m}) matrix needs {n} images and {m} captions, "
            f"got {len(images)} and {len(captions)}"
        )
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * n, 1.2 + 0.55 * m))
    ax.imshow(sim.T, cmap="viridis", aspect="auto")  # rows: captions, columns: images
    for i in range(n):
        img = to_unit(images[i], value_range).transpose(1, 2, 0)
        ax.imshow(img, extent=(i - 0.45, i + 0.45, -0.6, -1.5), interpolation="nearest")
        for j in range(m):
            ax.text(i, j, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_yticks(range(m), list(captions), fontsize=8)
    ax.set_xticks([])
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(m - 0.5, -1.6)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _noised(model: CLIP, x0: np.ndarray, t: int, gen: np.random.Generator) -> np.ndarray:
    """x_t for a fixed t (x_0 itself at t = 0)."""
    if t == 0:
        return x0
    from minigen.diffusion import NoiseSchedule

    cfg = model.config
    sched = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)
    return sched.add_noise(x0, gen.standard_normal(x0.shape, dtype=np.float32), t)
