"""The scene denoisers' checkpoints, and the shipped models (`minigen/assets/text2im_*`).

- the unconditional model is a `minigen.diffusion` checkpoint (so `minigen sample-diffusion`
  reads it) of scenes (3, 16, 16) already in [-1, 1];
- the conditional model is a safetensors file of format "minigen.text2im", version 2 (the
  caption read by cross-attention and FiLM), its `CaptionUNet` config, its noise schedule and
  its training record in the metadata; its weights may be stored as float16 (`half`).

`resolve` names the shipped files ("clip", "scenes", "cond") or takes a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minigen import checkpoint
from minigen.checkpoint import CheckpointError
from minigen.diffusion import DiffusionModel, Normalizer, load_model, resolve_checkpoint
from minigen.synthesis.caption_unet import CaptionUNet
from minigen.synthesis.text2im_config import SCENE_SHAPE, Text2ImResult

__all__ = [
    "FORMAT", "VERSION", "ASSETS", "SHIPPED", "CondModel", "save_text2im", "save_cond",
    "resolve", "load_scenes", "load_cond",
]  # fmt: skip

FORMAT = "minigen.text2im"
# 2: the caption through cross-attention and FiLM (xunet.py); 1 (refused): one pooled vector
VERSION = 2
ASSETS = Path(__file__).resolve().parents[1] / "assets"  # where resolve_checkpoint looks
SHIPPED = {
    "clip": "text2im_clip.safetensors",
    "scenes": "text2im_scenes.safetensors",
    "cond": "text2im_cond.safetensors",
}


@dataclass
class CondModel:
    """The conditional denoiser of classifier-free guidance, with its noise schedule."""

    denoiser: CaptionUNet
    schedule: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_training(cls, result: Text2ImResult) -> CondModel:
        return cls(result.model, result.schedule, {"train": result.train_record()})


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
    meta = {"format": FORMAT, "version": VERSION, "model": model.denoiser.config,
            "schedule": model.schedule, "train": model.config.get("train", {}),
            "stored_dtype": "float16" if half else str(next(iter(state.values())).dtype)}  # fmt: skip
    return checkpoint.save(path, state, meta, half=half)


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint file, or a shipped one by name (clip, scenes, cond)."""
    return resolve_checkpoint(name_or_path, SHIPPED, "text-to-image")


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
