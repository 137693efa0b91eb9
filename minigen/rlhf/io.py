"""RLHF checkpoints: one safetensors file per stage, its config in the metadata.

    <run>/pretrained.safetensors   policy  (a GPT)
    <run>/sft.safetensors          policy
    <run>/reward.safetensors       reward  (a GPT trunk "gpt.*" and a head "head.*")
    <run>/ppo.safetensors          policy  (and ppo_beta0.safetensors, the run without KL)
    <run>/dpo.safetensors          policy

The metadata holds {"format": "minigen.rlhf", "kind": "policy" | "reward", "stage",
"model": GPTConfig, "tokenizer", "rlhf": RLHFConfig (its "seed" the stage's own), "history",
"input_seeds" (the seed each input was made with: {"sft": 0, ...}), and for a reward model its
normalisation "reward_mean", "reward_std"}. Loading checks the kind, the weights against the
model's shape, and (`check_same_world`) that checkpoints which work together share one
tokenizer and one model shape, with errors that name both files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from minigen import checkpoint
from minigen.checkpoint import CheckpointError
from minigen.rlhf.config import RLHFConfig
from minigen.rlhf.models import RewardModel
from minigen.text import GPT, GPTConfig, tokenizer_from_dict

__all__ = [
    "STAGES", "FORMAT", "Loaded", "stage_path", "save_policy", "save_reward", "load_policy",
    "load_reward", "check_same_world",
]  # fmt: skip

FORMAT = "minigen.rlhf"
STAGES = ("pretrained", "sft", "reward", "ppo", "ppo_beta0", "dpo")


class Loaded:
    """A checkpoint read back: the model, its tokenizer, and its metadata."""

    def __init__(self, model: Any, tokenizer: Any, meta: dict[str, Any], path: Path) -> None:
        self.model, self.tokenizer, self.meta, self.path = model, tokenizer, meta, path

    @property
    def config(self) -> RLHFConfig:
        return RLHFConfig.from_dict(self.meta["rlhf"], str(self.path))

    @property
    def history(self) -> Any:
        return self.meta.get("history")

    @property
    def seed(self) -> int:
        """The seed the stage that wrote it ran with."""
        return self.config.seed


def stage_path(run: str | Path, stage: str) -> Path:
    return Path(run) / f"{stage}.safetensors"


def _meta(kind: str, stage: str, config: GPTConfig, tokenizer: Any, cfg: RLHFConfig,
          history: Any, inputs: Mapping[str, int] | None) -> dict[str, Any]:  # fmt: skip
    return {
        "format": FORMAT, "kind": kind, "stage": stage, "model": config.to_dict(),
        "tokenizer": tokenizer.to_dict(), "rlhf": cfg.to_dict(), "history": history,
        "input_seeds": dict(inputs or {}),
    }  # fmt: skip


def save_policy(path: str | Path, model: GPT, tokenizer: Any, cfg: RLHFConfig, stage: str,
                history: Any = None, inputs: Mapping[str, int] | None = None) -> Path:  # fmt: skip
    """Write a policy (a GPT) and its metadata, atomically; `inputs`: the seed of each
    checkpoint (or file) the stage read."""
    meta = _meta("policy", stage, model.config, tokenizer, cfg, history, inputs)
    return checkpoint.save(path, model.state_dict(), meta)


def save_reward(path: str | Path, rm: RewardModel, tokenizer: Any, cfg: RLHFConfig,
                history: Any = None, inputs: Mapping[str, int] | None = None) -> Path:  # fmt: skip
    """Write a reward model (trunk, head and normalisation) and its metadata, atomically."""
    meta = _meta("reward", "reward", rm.config, tokenizer, cfg, history, inputs)
    meta.update(reward_mean=rm.mean, reward_std=rm.std)
    return checkpoint.save(path, rm.state_dict(), meta)


def _read(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, Any], GPTConfig, Any]:
    path = Path(path)
    arrays, meta = checkpoint.load(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minigen RLHF checkpoint (format {FORMAT!r})")
    if meta.get("kind") != kind:
        raise CheckpointError(
            f"{path} holds a {meta.get('kind')} model ({meta.get('stage')}), not a {kind} model"
        )
    try:
        config = GPTConfig.from_dict(meta["model"], str(path))
        tokenizer = tokenizer_from_dict(meta["tokenizer"], str(path))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad metadata ({e})") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model {config.vocab_size}"
        )
    return arrays, meta, config, tokenizer


def _load_into(module: Any, arrays: dict[str, Any], path: Path) -> None:
    try:
        module.load_state_dict(arrays)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_policy(path: str | Path) -> Loaded:
    """A policy checkpoint as a GPT in eval mode."""
    arrays, meta, config, tokenizer = _read(path, "policy")
    model = GPT(config)
    _load_into(model, arrays, Path(path))
    model.eval()
    return Loaded(model, tokenizer, meta, Path(path))


def load_reward(path: str | Path) -> Loaded:
    """A reward-model checkpoint, with its normalisation, in eval mode."""
    arrays, meta, config, tokenizer = _read(path, "reward")
    rm = RewardModel(config)
    _load_into(rm, arrays, Path(path))
    rm.mean, rm.std = float(meta["reward_mean"]), float(meta["reward_std"])
    rm.eval()
    return Loaded(rm, tokenizer, meta, Path(path))


def check_same_world(*loaded: Loaded) -> None:
    """Checkpoints used together must share the tokenizer and the model's shape."""
    first = loaded[0]
    for other in loaded[1:]:
        if other.meta["tokenizer"] != first.meta["tokenizer"]:
            raise CheckpointError(
                f"{other.path} and {first.path} use different tokenizers; they do not fit together"
            )
        a, b = first.meta["model"], other.meta["model"]
        diff = sorted(k for k in a if k != "vocab_size" and a[k] != b.get(k))
        if diff:
            raise CheckpointError(
                f"{other.path} and {first.path} have different model shapes: "
                + ", ".join(f"{k} {b.get(k)} vs {a[k]}" for k in diff)
            )
