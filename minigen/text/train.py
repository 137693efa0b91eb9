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

Under `mpiexec -n N` (`minigen.mpi`), the N ranks draw the same batches and each computes one
of its N shards; rank 0 alone evaluates, checkpoints and shows the progress bar. The losses and
weights are those of `shards=N` in one process, bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from minigen import checks, mpi, optim, rng
from minigen.checkpoint import CheckpointError
from minigen.parallel import ShardedBackward, check_workers
from minigen.runs import RunLock, check_writable_dir
from minigen.tensor import Tensor, no_grad
from minigen.text.corpus import check_corpus_length
from minigen.text.gpt import GPT, GPTConfig
from minigen.text.gpt_io import check_writable, load_checkpoint, save_checkpoint
from minigen.training import Every, Loop, Schedule, TrainingDiverged

__all__ = ["TrainConfig", "Trainer", "get_batch", "make_optimizer", "shard_loss"]


def shard_loss(model: GPT, shard: tuple[np.ndarray, np.ndarray, float]) -> Tensor:
    """A shard's share of the batch loss: (B_k / B) L_k on its rows x, y (B_k, T)."""
    x, y, share = shard
    loss = model.loss(x, y)
    return loss if share == 1 else loss * share


@dataclass(frozen=True)
class TrainConfig(checks.DictConfig):
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
        name = "TrainConfig: "
        checks.at_least(self, ("max_iters", "batch_size", "eval_iters", "shards"), 1, name)
        checks.at_least(self, ("warmup_iters", "eval_interval", "checkpoint_interval"), 0, name)
        if self.shards > self.batch_size:
            raise ValueError(
                f"TrainConfig: {self.shards} shards of a batch of {self.batch_size}: too many"
            )
        lr, finite = ("learning_rate",), ("min_lr", "grad_clip", "weight_decay")
        checks.require(self, lr, lambda v: math.isfinite(v) and v > 0, "be finite and > 0", name)
        checks.require(
            self, finite, lambda v: math.isfinite(v) and v >= 0, "be finite and >= 0", name
        )
        checks.require(self, ("beta1", "beta2"), lambda v: 0 <= v < 1, "lie in [0, 1)", name)


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

    The steps run through the one training loop (`minigen.training.Loop`: the schedule,
    clipping, the divergence check, the progress bar); this class keeps what is the GPT's own:
    the batches, the loss, the loss estimates and the checkpoint's files.

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
            Under mpiexec the ranks compute the shards instead (one each: shards = ranks).
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
        self.comm = mpi.world()  # None unless one of several MPI ranks
        self.root = self.comm is None or self.comm.Get_rank() == 0
        if self.comm is not None and train_config.shards != self.comm.Get_size():
            raise ValueError(
                f"under mpiexec -n {self.comm.Get_size()} each rank computes one shard of the "
                f"batch: shards must be {self.comm.Get_size()}, the run's is {train_config.shards}"
            )
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
        if self.out_dir is not None:
            check_writable_dir(self.out_dir.parent)  # before the first step, not at the first save
            if not force:
                check_writable(self.out_dir)
        self.config, self.tc, self.tokenizer = model_config, train_config, tokenizer
        self.meta = dict(meta or {})
        rng.manual_seed(train_config.seed)  # one seed: weights, batches, dropout
        self.model = GPT(model_config)
        self.opt = make_optimizer(self.model, train_config)
        tc = train_config
        schedule = Schedule(
            tc.learning_rate, tc.warmup_iters, tc.lr_decay_iters or tc.max_iters, tc.min_lr
        )
        self.loop = Loop(self.model, self.opt, tc.max_iters, schedule, tc.grad_clip,
                         desc="train-gpt")  # fmt: skip
        self.evals: list[dict[str, Any]] = []  # the loss estimates, {"step", "train", "val"}
        self.workers = workers
        self._sharded: ShardedBackward | mpi.MPIBackward | None = None

    @property
    def step(self) -> int:
        """Steps done."""
        return self.loop.step

    @property
    def history(self) -> dict[str, list]:
        """{"loss": the batch loss of every step (loss[i]: step i + 1), "eval": the estimates}."""
        return {"loss": self.loop.losses, "eval": self.evals}

    @classmethod
    def resume(
        cls,
        out_dir: str | Path,
        train_ids: Any,
        val_ids: Any,
        max_iters: int | None = None,
        workers: int = 1,
    ) -> Trainer:
        """Continue from the checkpoint in `out_dir` (optionally to a new `max_iters`). Under
        MPI every rank reads it, rank 0 first (under the folder's lock)."""
        comm = mpi.world()
        with mpi.root_first(comm):
            lock = RunLock(out_dir) if comm is None or comm.Get_rank() == 0 else None
            with lock or contextlib.nullcontext():
                ck = load_checkpoint(out_dir, with_state=True)
        tc = TrainConfig.from_dict(ck.train_config, str(out_dir))
        if max_iters is not None:
            tc = TrainConfig.from_dict({**asdict(tc), "max_iters": max_iters})
        if tc.max_iters < ck.state["step"]:
            raise ValueError(
                f"--max-iters {tc.max_iters} is below the {ck.state['step']} steps the checkpoint "
                f"in {out_dir} has done"
            )
        self = cls(ck.config, tc, ck.tokenizer, train_ids, val_ids, out_dir, True, ck.meta, workers)
        self.model.load_state_dict(ck.weights)
        try:
            self.loop.load_state_dict(ck.opt_arrays, ck.state)
        except ValueError as e:
            raise CheckpointError(f"{out_dir}: {e}") from None
        evals = ck.state.get("eval")
        if not isinstance(evals, list) or not all(
            isinstance(e, dict) and {"step", "train", "val"} <= set(e) for e in evals
        ):
            raise CheckpointError(
                f"{out_dir}: the trainer state's loss estimates are malformed (a list of "
                '{"step", "train", "val"} expected)'
            )
        self.evals = evals
        return self

    # -- one step, and the loss estimate --------------------------------------------------------
    def lr_at(self, step: int) -> float:
        return self.loop.schedule(step)

    def batch(self, data: np.ndarray, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (B, T) from a split (random blocks; subclasses may cut otherwise)."""
        return get_batch(data, self.tc.batch_size, self.config.block_size, gen)

    def loss_at(self, step: int) -> Tensor | float:
        """Step `step`'s batch loss L (a Tensor), or with shards its value once the gradient
        grad L = sum_k grad((B_k / B) L_k) is in the parameters (computed in `workers`
        processes) and applied."""
        x, y = self.batch(self.train_ids, rng.generator())  # (B, T) each
        if self.tc.shards == 1:
            return self.model.loss(x, y)
        if self._sharded is None and self.comm is not None:  # rank k: shard k
            self._sharded = mpi.MPIBackward(self.model, shard_loss, self.comm)
        elif self._sharded is None:
            self._sharded = ShardedBackward(
                self.model, partial(GPT, self.config), shard_loss, self.tc.shards, self.workers,
            )  # fmt: skip
        rows = np.array_split(np.arange(len(x)), self.tc.shards)
        self.opt.zero_grad()
        value = self._sharded([(x[r], y[r], len(r) / len(x)) for r in rows])
        return self.loop.apply(value)

    def train_step(self) -> float:
        """One AdamW step on a fresh batch (outside `run`); returns the batch's loss."""
        return self.loop.one_step(self.loss_at)

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
        self.evals.append({"step": self.step, **out})
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
        new loss estimate, or None). Returns the history. While it runs, this process is the
        only writer of `out_dir` (`minigen.runs.RunLock`)."""
        tc, loop = self.tc, self.loop
        tokens = tc.batch_size * self.config.block_size
        last: dict[str, Any] = {"eval": None, "t": time.perf_counter(), "rate": None}

        def measure(_: Loop) -> None:  # the step's own time: before the estimate and the save
            rate = tokens / max(time.perf_counter() - last["t"], 1e-9)
            last["rate"] = rate if last["rate"] is None else 0.9 * last["rate"] + 0.1 * rate
            loop.postfix["tok_s"] = f"{last['rate']:,.0f}"

        def evaluate(_: Loop) -> None:
            ev = last["eval"] = self.estimate_loss()
            loop.write(f"step {self.step}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}")

        def after(_: Loop) -> None:
            ev, last["eval"] = last["eval"], None
            if callback is not None:
                callback(self, ev)
            last["t"] = time.perf_counter()

        hooks = [Every(1, measure), Every(tc.eval_interval, evaluate)]
        if self.out_dir is not None:
            hooks.append(Every(tc.checkpoint_interval, lambda _: self.save()))
        hooks.append(Every(1, after))
        if not self.root:  # under MPI, rank 0 alone evaluates, saves and reports
            hooks, progress = [], False
        loop.progress = progress
        lock = RunLock(self.out_dir) if self.out_dir is not None and self.root else None
        try:
            with (
                mpi.abort_on_error(self.comm, (TrainingDiverged,)),
                lock or contextlib.nullcontext(),
            ):
                loop.run(self.loss_at, hooks, until)
                mpi.check_in_sync(self.comm, self.model)
        finally:
            self.close()
        return self.history

    def save(self, out_dir: str | Path | None = None, inference_only: bool = False) -> Path:
        """Write the checkpoint (and the loss curve) into `out_dir` or the trainer's folder, as
        one transaction; `inference_only` leaves out what only resuming needs (the optimizer's
        moments and the trainer state). Under MPI only rank 0 writes."""
        path = Path(out_dir) if out_dir is not None else self.out_dir
        if path is None:
            raise ValueError("Trainer.save: no out_dir given")
        if not self.root:
            return path
        loop = None if inference_only else self.loop
        with RunLock(path):
            save_checkpoint(path, self.model, self.tokenizer, self.tc, loop, self.meta,
                            {"eval": self.evals}, self.history)  # fmt: skip
        return path
