"""GPT checkpoints: one directory, safetensors weights, JSON config, the tokenizer.

    model.safetensors           the weights by parameter name (see `minigen.text.gpt`)
    config.json                 {"format": "minigen.gpt", "model": GPTConfig, "train":
                                 TrainConfig, "meta": {...}}
    tokenizer.json              the tokenizer (`minigen.text.load_tokenizer` reads it)
    trainer_state.safetensors   the training loop's arrays: AdamW's moments (for resuming)
    trainer_state.json          the step, the losses and estimates, the generator's state
    loss.png                    the loss curves so far

The weights and the two trainer_state files are every resumable run's state, written and read
by `minigen.run_state` (`write_state`, `read_state`). The folder is written as one transaction
(`minigen.runs.transaction`): every file into a staging folder beside it, then swapped in at
once, so a reader (and `--resume`) only ever sees a complete checkpoint, and a run killed while
saving leaves the previous one as it was. The three state files still record the step, and
loading checks that they agree (a folder assembled by hand from two runs is refused).
A folder holding only config, weights and tokenizer (the shipped ones) is for inference.

The shipped models answer to short names wherever a GPT checkpoint is read (`generate --ckpt`,
`fewshot --model`, `eval-icl --ckpt`, `load_gpt`): `shakespeare-char` (a character-level GPT
of tiny Shakespeare, weights stored as float16) and `icl-gpt` (the in-context learner), in
minigen/assets/. A folder of that name in the working directory comes first."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minigen import checkpoint
from minigen.checkpoint import CheckpointError, atomic_write
from minigen.plotting import plot_losses, save_figure
from minigen.run_state import STATE_FILES, read_state, write_state
from minigen.runs import previous, transaction
from minigen.text.gpt import GPT, GPTConfig, param_shapes
from minigen.text.tokenizers import load_tokenizer
from minigen.training import Loop

__all__ = [
    "CHECKPOINT_FILES",
    "Checkpoint",
    "check_writable",
    "save_checkpoint",
    "load_checkpoint",
    "load_gpt",
    "LOSS_LABEL",
    "SHIPPED",
    "resolve_gpt",
    "export_for_inference",
]

CHECKPOINT_FILES = {
    "model": "model.safetensors",
    "config": "config.json",
    "tokenizer": "tokenizer.json",
    "arrays": STATE_FILES["arrays"],
    "state": STATE_FILES["state"],
    "plot": "loss.png",
}
FORMAT = "minigen.gpt"
LOSS_LABEL = "cross-entropy (nats / token)"  # the y axis of loss.png
OLD_OPTIMIZER_FILE = "optimizer.safetensors"  # the optimizer's moments, before minigen.run_state
ASSETS = Path(__file__).resolve().parents[1] / "assets"
# short name -> its folder in minigen/assets
SHIPPED = {"shakespeare-char": "shakespeare-char", "icl-gpt": "icl-gpt"}


def resolve_gpt(name_or_path: str | Path) -> Path:
    """A checkpoint folder: the path itself where it exists, else the shipped model of that
    short name (SHIPPED), else the path (whose loading then says it is not found)."""
    path = Path(name_or_path)
    if path.exists() or previous(path).exists() or str(name_or_path) not in SHIPPED:
        return path
    return ASSETS / SHIPPED[str(name_or_path)]


@dataclass
class Checkpoint:
    """What `load_checkpoint` read (`train_config`: the TrainConfig's fields, or None;
    `state`, `opt_arrays`: the training loop's state, see `minigen.training.Loop.state_dict`)."""

    config: GPTConfig
    train_config: dict[str, Any] | None
    tokenizer: Any
    weights: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    opt_arrays: dict[str, np.ndarray] | None = None


def check_writable(out_dir: str | Path) -> None:
    """Refuse a folder that already holds a checkpoint (so nothing is overwritten)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    found = [n for n in CHECKPOINT_FILES.values() if (out / n).exists()]
    if found:
        raise FileExistsError(
            f"{out} already holds a checkpoint ({', '.join(found)}); resume it (--resume) "
            "or overwrite it (--force)"
        )


def save_checkpoint(
    out_dir: str | Path,
    model: GPT,
    tokenizer: Any,
    train_config: Any,
    loop: Loop | None = None,
    meta: dict[str, Any] | None = None,
    extra_state: dict[str, Any] | None = None,
    plot: dict[str, list] | None = None,
    half: bool = False,
) -> Path:
    """Write a checkpoint directory (see the module docstring) as one transaction; returns its
    path. `loop`: the training loop whose state to keep for resuming, with `extra_state` in its
    JSON (None: an inference-only checkpoint); `plot`: the history to draw in loss.png; `half`
    (inference-only): the weights stored as float16, read back into float32 by `load_gpt`."""
    if half and loop is not None:
        raise ValueError("half=True stores an inference-only checkpoint: pass no loop")
    out = Path(out_dir)
    config = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "train": _fields(train_config),
        "meta": meta or {},
    }
    with transaction(out, owned=[*CHECKPOINT_FILES.values(), OLD_OPTIMIZER_FILE]) as tmp:
        if loop is not None:
            write_state(tmp, model, loop, extra_state)
        else:
            checkpoint.save(tmp / CHECKPOINT_FILES["model"], model.state_dict(), half=half)
        atomic_write(tmp / CHECKPOINT_FILES["config"], json.dumps(config, indent=1))
        tokenizer.save(tmp / CHECKPOINT_FILES["tokenizer"])
        if plot is not None:
            fig = plot_losses(plot["loss"], ylabel=LOSS_LABEL, estimates=plot.get("eval", []))
            save_figure(fig, tmp / CHECKPOINT_FILES["plot"])
    return out


def _fields(train_config: Any) -> dict[str, Any] | None:
    """A TrainConfig's fields (or a dict of them, as read back from config.json), or None."""
    if train_config is None:
        return None
    return asdict(train_config) if is_dataclass(train_config) else dict(train_config)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a complete minigen GPT checkpoint")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def check_weights(weights: dict[str, Any], config: GPTConfig, source: str) -> None:
    """Raise CheckpointError unless `weights` has exactly the parameters of `config`."""
    want = param_shapes(config)
    missing = [k for k in want if k not in weights]
    unexpected = [k for k in weights if k not in want]
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, shape in want.items():
        if tuple(weights[k].shape) != shape:
            raise CheckpointError(
                f"{source}: {k} has shape {tuple(weights[k].shape)}, but the config needs {shape}"
            )


def load_checkpoint(out_dir: str | Path, with_state: bool = False) -> Checkpoint:
    """Read a checkpoint directory, checking that its parts fit together.

    Raises CheckpointError (a ValueError) naming the file and what does not fit.
    """
    out = Path(out_dir)
    if not out.is_dir() and previous(out).is_dir():
        out = previous(out)  # a save cut between its two renames (where no atomic swap exists)
    if not out.is_dir():
        raise CheckpointError(
            f"checkpoint directory not found: {out} (the shipped models: {', '.join(SHIPPED)})"
        )
    cfg_path = out / CHECKPOINT_FILES["config"]
    cfg = _read_json(cfg_path)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a minigen GPT config (format {FORMAT!r})")
    try:
        config = GPTConfig.from_dict(cfg["model"], str(cfg_path))
        tc = cfg.get("train")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: bad config ({e})") from None
    model_path = out / CHECKPOINT_FILES["model"]
    weights, wmeta = checkpoint.load(model_path)
    check_weights(weights, config, str(model_path))
    tok_path = out / CHECKPOINT_FILES["tokenizer"]
    if not tok_path.is_file():
        raise CheckpointError(f"{tok_path} not found: not a complete minigen GPT checkpoint")
    tokenizer = load_tokenizer(tok_path)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{tok_path}: the tokenizer has {tokenizer.vocab_size} tokens, the model "
            f"{config.vocab_size}"
        )
    ck = Checkpoint(config, tc, tokenizer, weights, cfg.get("meta") or {})
    if with_state:
        if not isinstance(tc, dict):
            raise CheckpointError(f"{cfg_path}: no training settings to resume with")
        if (out / OLD_OPTIMIZER_FILE).is_file():  # written before the one training loop
            ck.state, ck.opt_arrays = _read_old_state(out, wmeta)
        else:
            _, ck.opt_arrays, ck.state = read_state(out)
    return ck


def _read_old_state(out: Path, wmeta: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """The trainer state of a checkpoint written before `minigen.training.Loop`, converted."""
    state_path = out / CHECKPOINT_FILES["state"]
    state = _read_json(state_path)
    opt_arrays, ometa = checkpoint.load(out / OLD_OPTIMIZER_FILE)
    if not isinstance(state, dict) or "optimizer" not in ometa:
        raise CheckpointError(f"{state_path}: not a minigen trainer state (a JSON object)")
    steps = {"weights": wmeta.get("step"), "optimizer": ometa.get("step"),
             "state": state.get("step")}  # fmt: skip
    if len(set(map(str, steps.values()))) != 1:
        raise CheckpointError(
            f"{out}: its files are from different steps {steps} (assembled from two runs?)"
        )
    history = state.get("history") or {}
    new = {
        "step": state.get("step"),
        "losses": history.get("loss", []),
        "eval": history.get("eval", []),
        "optimizer": ometa["optimizer"],
        "rng": state.get("rng"),
        "generators": {},
    }
    return new, {f"opt.{k}": v for k, v in opt_arrays.items()}


def load_gpt(out_dir: str | Path) -> tuple[GPT, Any, Checkpoint]:
    """(model, tokenizer, checkpoint) from a checkpoint directory or a shipped model's short
    name (`SHIPPED`), the model in eval mode."""
    ck = load_checkpoint(resolve_gpt(out_dir))
    model = GPT(ck.config)
    model.load_state_dict(ck.weights)
    model.eval()
    return model, ck.tokenizer, ck


def export_for_inference(
    src: str | Path, dst: str | Path, half: bool = True, meta: dict[str, Any] | None = None
) -> Path:
    """Copy a checkpoint's config, weights (float16 with `half`) and tokenizer into `dst`, as
    the shipped models are: no optimizer state, no loss plot. `meta` is added to its own."""
    model, tokenizer, ck = load_gpt(src)
    record = {**ck.meta, **(meta or {}), "stored_dtype": "float16" if half else "float32"}
    return save_checkpoint(dst, model, tokenizer, ck.train_config, meta=record, half=half)
