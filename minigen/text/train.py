"""Training a GPT on a corpus: next-token prediction with AdamW (nanoGPT's recipe).

The loss is the mean cross-entropy of each next token, over random blocks of the corpus:

    L(w) = - 1/(B T) sum_b sum_t log p_w(x^b_{t+1} | x^b_1..x^b_t)

minimised with AdamW (weight decay on the matrices and embeddings only), a linear warm-up
then cosine decay of the learning rate, and the gradient clipped to a maximum norm.

One seed fixes everything: it seeds minigen's generator, from which come the initial
weights, the batches and the dropout masks (the loss estimates draw from generators of
their own, seeded by (seed, step), so evaluating does not change training). A checkpoint
holds that generator's state with the weights and the optimizer's moments, so a resumed run
computes the same losses as one that never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from minigen import optim, rng
from minigen.parallel import ShardedBackward, check_workers
from minigen.tensor import Tensor, no_grad
from minigen.text.corpus import check_corpus_length
from minigen.text.gpt import GPT, GPTConfig
from minigen.text.gpt_io import (
    CHECKPOINT_FILES,
    check_writable,
    load_checkpoint,
    plot_losses,
    save_checkpoint,
)

__all__ = ["TrainConfig", "Trainer", "get_batch", "make_optimizer", "shard_loss"]


def shard_loss(model: GPT, shard: tuple[np.ndarray, np.ndarray, float]) -> Tensor:
    """A shard's share of the batch loss: (B_k / B) L_k on its rows x, y (B_k, T)."""
    x, y, share = shard
    loss = model.loss(x, y)
    return loss if share == 1 else loss * share


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults are nanoGPT's CPU shakespeare_char recipe."""

    max_iters: int = 2000
    batch_size: int = 12
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: decay over max_iters
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0: no clipping
    eval_interval: int = 250
    eval_iters: int = 20
    checkpoint_interval: int = 500  # 0: only at the end
    seed: int = 1337
    shards: int = 1  # each batch's gradient summed over this many shards (minigen.parallel)

    def __post_init__(self) -> None:
        for f in ("max_iters", "batch_size", "eval_iters", "shards"):
            if getattr(self, f) < 1:
                raise ValueError(f"TrainConfig: {f} must be >= 1, got {getattr(self, f)}")
        for f in ("warmup_iters", "eval_interval", "checkpoint_interval"):
            if getattr(self, f) < 0:
                raise ValueError(f"TrainConfig: {f} must be >= 0, got {getattr(self, f)}")
        if self.shards > self.batch_size:
            raise ValueError(
                f"TrainConfig: {self.shards} shards of a batch of {self.batch_size}: too many"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> TrainConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{source}: unknown TrainConfig keys {unknown}")
        return cls(**d)


def get_batch(
    data: np.ndarray, batch_size: int, block_size: int, gen: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random blocks x (B, T) of the corpus and their next tokens y (B, T): y_t = x_{t+1}."""
    start = gen.integers(0, len(data) - block_size, batch_size)  # (B,)
    pos = start[:, None] + np.arange(block_size)  # (B, T)
    return data[pos], data[pos + 1]


def make_optimizer(model: GPT, tc: TrainConfig) -> optim.AdamW:
    """AdamW with weight decay on the matrices and embeddings, none on biases and norms."""
    params = model.parameters()
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2))


class Trainer:
    """Trains a GPT on token ids, evaluates it, and checkpoints it into `out_dir`.

    Args:
        model_config: the model's shape (its vocab_size must be the tokenizer's).
        train_config: the optimisation settings.
        tokenizer: saved with the checkpoints, so `generate` can decode.
        train_ids, val_ids: the two splits of the corpus as token ids.
        out_dir: the checkpoint directory (None: no checkpoints). It must not hold a
            checkpoint already, unless `force` (to start over) or `Trainer.resume`.
        meta: anything JSON-able to keep in the checkpoint's config (e.g. the corpus).
        workers: processes computing the `train_config.shards` shards of each step's gradient
            (1 .. shards; `minigen.parallel`): the losses do not depend on it, the time does.
    """

    def __init__(
        self,
        model_config: GPTConfig,
        train_config: TrainConfig,
        tokenizer: Any,
        train_ids: Any,
        val_ids: Any,
        out_dir: str | Path | None = None,
        force: bool = False,
        meta: dict[str, Any] | None = None,
        workers: int = 1,
    ) -> None:
        if train_config.shards > 1 and model_config.dropout > 0:
            raise ValueError(
                "TrainConfig: shards > 1 needs dropout 0 (each process would draw its own masks)"
            )
        check_workers(train_config.shards, workers)  # here: the workers start at the first step
        if model_config.vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"the model's vocab_size {model_config.vocab_size} is not the tokenizer's "
                f"{tokenizer.vocab_size}"
            )
        self.train_ids = np.asarray(train_ids, dtype=np.int64)
        self.val_ids = np.asarray(val_ids, dtype=np.int64)
        check_corpus_length(self.train_ids, model_config.block_size, "the training split")
        check_corpus_length(self.val_ids, model_config.block_size, "the validation split")
        self.out_dir = None if out_dir is None else Path(out_dir)
        if self.out_dir is not None and not force:
            check_writable(self.out_dir)
        self.config, self.tc, self.tokenizer = model_config, train_config, tokenizer
        self.meta = dict(meta or {})
        rng.manual_seed(train_config.seed)  # one seed: weights, batches, dropout
        self.model = GPT(model_config)
        self.opt = make_optimizer(self.model, train_config)
        self.step = 0
        self.history: dict[str, list] = {"loss": [], "eval": []}  # loss[i]: step i + 1
        self.workers = workers
        self._sharded: ShardedBackward | None = None

    @classmethod
    def resume(
        cls,
        out_dir: str | Path,
        train_ids: Any,
        val_ids: Any,
        max_iters: int | None = None,
        workers: int = 1,
    ) -> Trainer:
        """Continue from the checkpoint in `out_dir` (optionally to a new `max_iters`)."""
        ck = load_checkpoint(out_dir, with_state=True)
        tc = TrainConfig.from_dict(ck.train_config, str(out_dir))
        if max_iters is not None:
            tc = TrainConfig.from_dict({**asdict(tc), "max_iters": max_iters})
        self = cls(ck.config, tc, ck.tokenizer, train_ids, val_ids, out_dir, True, ck.meta, workers)
        self.model.load_state_dict(ck.weights)
        self.opt.load_state_dict(ck.opt_arrays, ck.opt_meta)
        self.step, self.history = ck.state["step"], ck.state["history"]
        rng.set_state(ck.state["rng"])
        return self

    # -- one step, and the loss estimate --------------------------------------------------------
    def lr_at(self, step: int) -> float:
        tc = self.tc
        decay = tc.lr_decay_iters or tc.max_iters
        return optim.warmup_cosine(step, tc.learning_rate, tc.warmup_iters, decay, tc.min_lr)

    def batch(self, data: np.ndarray, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (B, T) from a split (random blocks; subclasses may cut otherwise)."""
        return get_batch(data, self.tc.batch_size, self.config.block_size, gen)

    def train_step(self) -> float:
        """One AdamW step on a fresh batch; returns the batch's loss."""
        x, y = self.batch(self.train_ids, rng.generator())
        self.opt.set_lr(self.lr_at(self.step))
        self.opt.zero_grad()
        if self.tc.shards == 1:
            loss = self.model.loss(x, y)
            loss.backward()
            value = loss.item()
        else:  # grad L = sum_k grad((B_k / B) L_k), the shards in `workers` processes
            if self._sharded is None:
                self._sharded = ShardedBackward(
                    self.model, partial(GPT, self.config), shard_loss, self.tc.shards,
                    self.workers,
                )  # fmt: skip
            rows = np.array_split(np.arange(len(x)), self.tc.shards)
            value = self._sharded([(x[r], y[r], len(r) / len(x)) for r in rows])
        if self.tc.grad_clip:
            optim.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.opt.step()
        self.step += 1
        self.history["loss"].append(value)
        return value

    def close(self) -> None:
        """Stop the worker processes of a sharded run (`run` does at its end)."""
        if self._sharded is not None:
            self._sharded.close()
            self._sharded = None

    def estimate_loss(self) -> dict[str, float]:
        """Mean loss over `eval_iters` random batches of each split, in eval mode."""
        out = {}
        was_training = self.model.training
        self.model.eval()
        with no_grad():
            for i, (split, data) in enumerate((("train", self.train_ids), ("val", self.val_ids))):
                gen = np.random.default_rng([self.tc.seed, self.step, i])
                losses = [
                    self.model.loss(*self.batch(data, gen)).item()
                    for _ in range(self.tc.eval_iters)
                ]
                out[split] = float(np.mean(losses))
        self.model.train(was_training)
        self.history["eval"].append({"step": self.step, **out})
        return out

    # -- the loop ----------------------------------------------------------------------------
    def run(
        self,
        progress: bool = True,
        callback: Callable[[Trainer, dict[str, float] | None], Any] | None = None,
        until: int | None = None,
    ) -> dict[str, list]:
        """Train up to max_iters (or stop after step `until`, as if interrupted there);
        evaluate every eval_interval steps and at the end, save every checkpoint_interval
        steps and at the end. `callback(trainer, eval)` runs after each step (`eval` is the
        new loss estimate, or None). Returns the history."""
        from tqdm.auto import tqdm

        tc = self.tc
        tokens = tc.batch_size * self.config.block_size
        bar = tqdm(total=tc.max_iters, initial=self.step, disable=not progress, desc="train-gpt")
        stop = tc.max_iters if until is None else min(until, tc.max_iters)
        try:
            self._loop(bar, stop, tokens, callback)
        finally:
            self.close()
            bar.close()
        return self.history

    def _loop(self, bar: Any, stop: int, tokens: int, callback: Callable | None) -> None:
        tc, rate = self.tc, None
        while self.step < stop:
            t0 = time.perf_counter()
            loss = self.train_step()
            dt = time.perf_counter() - t0
            rate = tokens / dt if rate is None else 0.9 * rate + 0.1 * tokens / dt
            ev = None
            if (
                tc.eval_interval and self.step % tc.eval_interval == 0
            ) or self.step == tc.max_iters:
                ev = self.estimate_loss()
                bar.write(
                    f"step {self.step}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}"
                )
            if self.out_dir is not None and (
                (tc.checkpoint_interval and self.step % tc.checkpoint_interval == 0)
                or self.step == tc.max_iters
            ):
                self.save()
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
            bar.update(1)
            if callback is not None:
                callback(self, ev)

    def save(self, out_dir: str | Path | None = None) -> Path:
        """Write the checkpoint (and the loss curve) into `out_dir` or the trainer's folder."""
        path = Path(out_dir) if out_dir is not None else self.out_dir
        if path is None:
            raise ValueError("Trainer.save: no out_dir given")
        opt_arrays, opt_meta = self.opt.state_dict()
        state = {"step": self.step, "rng": rng.get_state(), "history": self.history}
        save_checkpoint(
            path, self.model, self.tokenizer, self.tc, state, opt_arrays, opt_meta, self.meta
        )
        plot_losses(self.history, path / CHECKPOINT_FILES["plot"])
        return path
