"""What a training run of a scene denoiser is given, and what it returns (`text2im.py`).

`SceneConfig` is the run of the unconditional model eps_theta(x_t, t): its U-Net, its data, its
noise schedule, its optimiser. `Text2ImConfig` adds what only the conditional model
eps_theta(x_t, t, c) of classifier-free guidance reads: the caption dropout, the caption
encoder, the cross-attention, what the U-Net predicts, and the shipped recipe's mirror pairs
and cell map. Both kinds of run are a `Text2ImConfig` (`kind` "scenes" or "cond", flat, as
the command line, `--resume` and the checkpoints' metadata hold it); a "scenes" run leaves the
conditional fields unread, and refuses `mirror_pairs` and `cell_weight`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from minigen import checks, nn
from minigen.diffusion import PREDICTIONS, UNet
from minigen.synthesis.caption_unet import CaptionUNet
from minigen.synthesis.clip import CLIPConfig
from minigen.synthesis.xunet import CrossAttnUNet

__all__ = ["SCENE_RANGE", "SCENE_SHAPE", "KINDS", "SceneConfig", "Text2ImConfig", "Text2ImResult"]

SCENE_RANGE = (-1.0, 1.0)
SCENE_SHAPE = (3, 16, 16)
KINDS = ("scenes", "cond")


@dataclass
class SceneConfig:
    """A training run of the unconditional scene denoiser (a `minigen.diffusion` U-Net)."""

    # this run's own settings: a column of fields like other configs', alike in shape only
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 2)
    n_train: int = 20000
    data_seed: int = 0
    seed: int = 0
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting (None: L_simple)
    shards: int = 1  # each batch's gradient as the sum of this many shards' (minigen.parallel)

    def __post_init__(self) -> None:
        checks.at_least(self, ("steps", "batch_size", "n_train", "base_channels", "shards"), 1)
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be positive, got {self.snr_gamma}")
        if self.shards > self.batch_size:
            raise ValueError(f"{self.shards} shards of a batch of {self.batch_size}: too many")
        self.channel_mults = tuple(int(m) for m in self.channel_mults)

    def unet_config(self) -> dict[str, Any]:
        return {"kind": "unet", "image_size": SCENE_SHAPE[1], "in_channels": SCENE_SHAPE[0],
                "base_channels": self.base_channels, "channel_mults": list(self.channel_mults)}  # fmt: skip

    def make_model(self) -> nn.Module:
        return UNet(**{k: v for k, v in self.unet_config().items() if k != "kind"})


@dataclass
class Text2ImConfig(SceneConfig):
    """A training run of a scene denoiser: `kind` "scenes" (unconditional: `SceneConfig`'s
    fields) or "cond" (those, and the conditional model's below)."""

    kind: str = "scenes"
    p_uncond: float = 0.1  # the caption-dropout probability
    text_width: int = 64  # the caption encoder
    text_layers: int = 2
    text_heads: int = 4
    embed_dim: int = 64
    heads: int = 4  # heads of the cross-attention blocks
    attn_levels: tuple[int, ...] = (1, 2)  # levels (0 = 16x16) with cross-attention
    text_init: str | None = None  # start the caption encoder from this CLIP's text tower
    init: str | None = None  # start every weight from this conditional checkpoint
    prediction: str = "eps"  # the U-Net predicts eps, or v (Salimans & Ho 2022)
    mirror_pairs: bool = False  # half of each batch the mirrors of the other half (mirrors.py)
    cell_weight: float = 0.0  # > 0 adds the cell map, its cross-entropy so weighted (cells.py)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {list(KINDS)}")
        super().__post_init__()
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of {PREDICTIONS}")
        if self.mirror_pairs and (self.kind != "cond" or self.batch_size % 2):
            raise ValueError("mirror_pairs: a conditional model and an even batch size only")
        if self.cell_weight < 0 or (self.cell_weight and self.kind != "cond"):
            raise ValueError(
                f"cell_weight: >= 0 and a conditional model only, got {self.cell_weight}"
            )
        self.attn_levels = tuple(int(a) for a in self.attn_levels)

    def make_model(self) -> nn.Module:
        if self.kind == "scenes":
            return super().make_model()
        # the caption encoder: a CLIPConfig's text fields (its image fields go unused); the cell
        # map reads the caption both ways
        text = CLIPConfig(embed_dim=self.embed_dim, width=self.text_width, heads=self.text_heads,
                          layers=self.text_layers, causal=not self.cell_weight)  # fmt: skip
        unet = {**self.unet_config(), "kind": CrossAttnUNet.kind, "heads": self.heads,
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
