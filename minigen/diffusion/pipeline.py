"""A trained diffusion model in one object: denoiser, schedule, normaliser; save, load, sample.

A checkpoint is a safetensors file of the denoiser's (EMA) weights whose metadata
carries everything sampling needs, so `load(path).sample(n)` works on its own:

    {"format": "minigen.diffusion", "version": 1,
     "model": {"kind": "unet", "image_size": 8, ...},       the denoiser's config
     "schedule": {"name": "linear", "num_train_timesteps": 1000},
     "data": {"name": "digits", "sample_shape": [1, 8, 8], "normalizer": {"mean", "std"}},
     "train": {...the TrainConfig, "seconds", "final_loss"}, "weights": "ema"}

Sampling starts from x_T ~ N(0, I) and runs a scheduler of `schedulers.py`: DDPM
(ancestral, Eq. 7.1) or DDIM, then maps x_0 back to the data's units with the
normaliser. Shipped checkpoints (`minigen/assets/`) are found by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minigen import checkpoint, nn
from minigen.diffusion.data import Normalizer
from minigen.diffusion.schedulers import VARIANCE_TYPES, DDIMScheduler, DDPMScheduler, sample_loop
from minigen.diffusion.training import TrainResult, blas_threads, make_denoiser
from minigen.tensor import Tensor, no_grad

__all__ = [
    "FORMAT", "SHIPPED", "DiffusionModel", "Samples", "save", "load", "resolve_checkpoint",
    "make_scheduler", "SAMPLERS",
]  # fmt: skip

FORMAT = "minigen.diffusion"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED = {"swissroll": "diffusion_swissroll.safetensors", "digits": "diffusion_digits.safetensors"}
SAMPLERS = ("ddpm", "ddim")  # the schedulers of `schedulers.py`, by name


@dataclass
class Samples:
    """Samples x_0 (n, ...) in the data's units, and optionally their trajectories.

    `trajectory[k]` is x_t for t = `frame_t[k]`, the book's index (T for the white
    noise x_T, the first frame; 0 for the samples x_0, the last), recorded along the
    `num_steps` denoising steps.
    """

    x: np.ndarray
    num_steps: int
    trajectory: list[np.ndarray] | None = None
    frame_t: list[int] | None = None


def make_scheduler(
    schedule: dict[str, Any],
    sampler: str = "ddpm",
    steps: int | None = None,
    variance_type: str = "fixed_small",
    spacing: str = "trailing",
    clip_sample: bool = False,
) -> DDPMScheduler | DDIMScheduler:
    """A scheduler for a model trained on `schedule` ({"name", "num_train_timesteps"}).

    DDPM visits all T timesteps unless `steps` says fewer; DDIM takes `steps` (default 50).
    `clip_sample` clips each predicted x_0 to [-1, 1] (for data in that range).
    """
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance type {variance_type!r}; one of {list(VARIANCE_TYPES)}")
    kw = {"num_train_timesteps": int(schedule["num_train_timesteps"]),
          "beta_schedule": schedule["name"], "timestep_spacing": spacing,
          "clip_sample": clip_sample}  # fmt: skip
    if sampler == "ddpm":
        s: DDPMScheduler | DDIMScheduler = DDPMScheduler(**kw, variance_type=variance_type)
        if steps is not None and steps != s.num_train_timesteps:
            s.set_timesteps(steps)
    elif sampler == "ddim":
        s = DDIMScheduler(**kw)
        s.set_timesteps(50 if steps is None else steps)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    return s


class DiffusionModel:
    """A denoiser eps_theta with its noise schedule and data normaliser."""

    def __init__(
        self,
        denoiser: nn.Module,
        schedule: dict[str, Any],
        normalizer: Normalizer,
        data: str,
        sample_shape: tuple[int, ...],
        config: dict[str, Any] | None = None,
    ) -> None:
        self.denoiser = denoiser.eval()
        self.schedule = dict(schedule)
        self.normalizer = normalizer
        self.data = data
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.config = dict(config or {})

    @classmethod
    def from_training(cls, result: TrainResult) -> DiffusionModel:
        cfg = result.config
        shape = (1, 8, 8) if cfg.data == "digits" else (2,)
        schedule = {"name": cfg.schedule, "num_train_timesteps": cfg.num_train_timesteps}
        train = {**asdict(cfg), "seconds": round(result.seconds, 2),
                 "final_loss": float(np.mean(result.losses[-100:]))}  # fmt: skip
        return cls(result.model, schedule, result.normalizer, cfg.data, shape, {"train": train})

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3

    def check_image_size(self, size: int | None) -> None:
        """Refuse an image size the denoiser was not trained on (None: the trained size)."""
        if size is None:
            return
        if not self.is_image:
            raise ValueError(f"this model generates 2-D points ({self.data}), not images")
        trained = self.sample_shape[-1]
        if size != trained:
            raise ValueError(
                f"this model was trained on {trained}x{trained} images ({self.data});"
                f" it cannot sample {size}x{size} images"
            )

    def eps(self, x_t: np.ndarray, t: Any, batch: int = 256) -> np.ndarray:
        """The denoiser's noise estimate eps_theta(x_t, t), without a graph, in chunks."""
        with no_grad():
            out = [
                self.denoiser(Tensor(x_t[i : i + batch]), t).data  # (b, ...)
                for i in range(0, len(x_t), batch)
            ]
        return np.concatenate(out, axis=0)  # like x_t

    def sample(
        self,
        n: int,
        sampler: str = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        variance_type: str = "fixed_small",
        spacing: str = "trailing",
        seed: int | np.random.Generator | None = 0,
        record: int = 0,
        progress: bool = False,
        image_size: int | None = None,
        threads: int | None = 1,
        clip_sample: bool = False,
    ) -> Samples:
        """n samples by DDPM (Eq. 7.1) or DDIM; `record` > 1 keeps that many trajectory frames.

        The same seed gives the same samples (x_T and every step's noise come from it).
        BLAS runs on `threads` threads (see `training.blas_threads`); `clip_sample` clips
        each predicted x_0 to [-1, 1].
        """
        # the scheduler stops at the first NaN or inf, with a clear error: no NumPy warnings
        with blas_threads(threads), np.errstate(over="ignore", invalid="ignore"):
            return self._sample(n, sampler, steps, eta, variance_type, spacing, seed, record,
                                progress, image_size, clip_sample)  # fmt: skip

    def _sample(
        self, n: int, sampler: str, steps: int | None, eta: float, variance_type: str,
        spacing: str, seed: Any, record: int, progress: bool, image_size: int | None,
        clip_sample: bool = False,
    ) -> Samples:  # fmt: skip
        self.check_image_size(image_size)
        if n < 1:
            raise ValueError(f"the number of samples must be >= 1, got {n}")
        if record == 1 or record < 0:
            raise ValueError(f"record keeps x_T, x_0 and frames between: 0 or >= 2, got {record}")
        sched = make_scheduler(self.schedule, sampler, steps, variance_type, spacing, clip_sample)
        gen = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        x_T = gen.standard_normal((n, *self.sample_shape), dtype=np.float32)  # (n, ...)
        ts = [int(t) for t in sched.timesteps]
        n_steps = len(ts)
        # after k steps the sample is x_t, t = ts[k] + 1 in the book's numbering (x_0 at the end)
        book_t = [t + 1 for t in ts] + [0]
        keep = (
            set(np.round(np.linspace(0, n_steps, record)).astype(int).tolist()) if record else set()
        )
        frames, frame_t = ([x_T], [book_t[0]]) if 0 in keep else ([], [])

        def callback(i: int, t: int, x: np.ndarray) -> None:
            if i + 1 in keep:
                frames.append(x.copy())
                frame_t.append(book_t[i + 1])

        kw = {"eta": eta} if sampler == "ddim" else {}
        x0 = sample_loop(sched, self.eps, x_T, generator=gen, progress=progress,
                         callback=callback if keep else None, **kw)  # fmt: skip
        inv = self.normalizer.inverse
        if not keep:
            return Samples(inv(x0), n_steps)
        return Samples(inv(x0), n_steps, [inv(f) for f in frames], frame_t)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "model": self.denoiser.config,
            "schedule": self.schedule,
            "data": {
                "name": self.data,
                "sample_shape": list(self.sample_shape),
                "normalizer": json.loads(self.normalizer.to_json()),
            },  # fmt: skip
            "weights": "ema",
            **{k: v for k, v in self.config.items() if k == "train"},
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights and the config to a safetensors file, atomically."""
        return checkpoint.save_module(self.denoiser, path, self.checkpoint_config())


def save(model: DiffusionModel, path: str | os.PathLike) -> Path:
    return model.save(path)


def resolve_checkpoint(
    name_or_path: str | os.PathLike, shipped: Mapping[str, str] = SHIPPED, what: str = ""
) -> Path:
    """A checkpoint path, or the file in minigen/assets of a shipped checkpoint by its name in
    `shipped` (diffusion's "swissroll" and "digits" by default; text to image passes its own,
    and `what` names them in the error)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if str(name_or_path) in shipped:
        return ASSETS / shipped[str(name_or_path)]
    names = ", ".join(shipped)
    raise checkpoint.CheckpointError(
        f"checkpoint file not found: {p} (shipped {what + ' ' if what else ''}checkpoints: {names})"
    )


def load(name_or_path: str | os.PathLike) -> DiffusionModel:
    """A DiffusionModel from a checkpoint written by `save` (or a shipped one, by name)."""
    path = resolve_checkpoint(name_or_path)
    arrays, cfg = checkpoint.load(path)
    if cfg.get("format") != FORMAT:
        raise checkpoint.CheckpointError(
            f"{path} is not a minigen diffusion checkpoint (format {cfg.get('format')!r})"
        )
    try:
        data = cfg["data"]
        denoiser = make_denoiser(cfg["model"])
        norm = Normalizer.from_json(json.dumps(data["normalizer"]))
        model = DiffusionModel(denoiser, cfg["schedule"], norm, data["name"],
                               tuple(data["sample_shape"]), cfg)  # fmt: skip
    except (KeyError, TypeError) as e:
        raise checkpoint.CheckpointError(f"{path}: its config lacks or garbles {e}") from None
    try:
        denoiser.load_state_dict(arrays)
    except ValueError as e:
        raise checkpoint.CheckpointError(f"{path}: {e}") from None
    return model
