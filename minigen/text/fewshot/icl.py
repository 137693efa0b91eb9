"""In-context learning, emerging in a small GPT trained here (§7.1, the ability of Figure 7.1).

An *episode* is a run of P pairs in Figure 7.1's format, "I: x, O: y, I: x', O: y', ...",
from a mapping drawn at random for that episode alone: n distinct inputs x (letters), each
given its own label y (n distinct digits of ten). The inputs of the pairs are drawn uniformly
from the n, so an input comes back, and its label can be read from an earlier pair, never
from the weights: across episodes the mapping means nothing.

Tokens (a `PieceTokenizer`): the question "I: x, O:" is one token, the answer with the
separator after it, " y, ", one token (as GPT-2's " positive" carries its space); a pair is two
tokens, [question][answer]. The GPT is trained by plain next-token prediction on episodes
(every position counts), each block one episode.

At k shots the question of pair k+1 sees exactly k pairs before it, so one forward pass on an
episode of 9 pairs gives the predictions at 0, 1, ..., 8 shots. Accuracy is measured two ways:

- ranked: the argmax, over the episode's n labels, of their logits (how GPT-3 scores
  classification); the labels are a random permutation, so chance is exactly 1/n;
- greedy: the argmax over the whole vocabulary (what `fewshot.predict` would write);

against an *ideal reader* of the context, who knows the label of an input seen before and
otherwise guesses among the n - m labels not yet seen (m: distinct inputs seen):

    acc*_k = E[ 1{query seen in k pairs} + 1{not seen} / (n - m_k) ].

The mechanism (`minigen.text.fewshot.icl_circuit`, measured by attention ablations on the shipped
model) is a two-step look-up akin to an *induction head* (Olsson et al. 2022): in block 1
the query's question gathers the answers before it; in block 2 it attends to the earlier
questions of the same letter. Both steps are necessary; reading the same-letter answers in
block 2, the textbook induction head's step, is not.
"""

from __future__ import annotations

import contextlib
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minigen.runs import RunLock
from minigen.tensor import no_grad
from minigen.text.char_tokenizers import PieceTokenizer
from minigen.text.fewshot.prompts import FIGURE_7_1
from minigen.text.gpt import GPT, GPTConfig
from minigen.text.gpt_io import check_writable
from minigen.text.train import TrainConfig, Trainer

__all__ = [
    "ICLTask",
    "Episode",
    "sample_episode",
    "episode_ids",
    "EpisodeTrainer",
    "ShotAccuracy",
    "shot_accuracy",
    "ICL_CHECKPOINT",
]

ICL_CHECKPOINT = Path(__file__).resolve().parents[2] / "assets" / "icl-gpt"
MAX_SHOTS = 8


@dataclass(frozen=True)
class ICLTask:
    """Episodes of `pairs` pairs, n-way with n drawn from `ways`."""

    inputs: str = string.ascii_lowercase
    labels: str = string.digits
    ways: tuple[int, ...] = (2, 3, 4)
    pairs: int = 10

    def __post_init__(self) -> None:
        if not self.ways or min(self.ways) < 1 or max(self.ways) > min(len(self.inputs), len(self.labels)):  # fmt: skip
            raise ValueError(
                f"ICLTask: ways {self.ways} must lie in [1, {min(len(self.inputs), len(self.labels))}]"
            )
        if self.pairs < MAX_SHOTS + 1:
            raise ValueError(f"ICLTask: pairs={self.pairs} < {MAX_SHOTS + 1} (8 shots + a query)")

    def tokenizer(self) -> PieceTokenizer:
        """The questions "I: x, O:", then the answers " y, "."""
        questions = [FIGURE_7_1.query(x) for x in self.inputs]
        return PieceTokenizer([*questions, *(self.answer(y) for y in self.labels)])

    @staticmethod
    def answer(y: str) -> str:
        return " " + y + FIGURE_7_1.separator

    @property
    def block_size(self) -> int:
        return 2 * self.pairs - 1  # an episode is 2 P tokens; a block predicts the last 2P - 1


@dataclass
class Episode:
    """A mapping inputs[i] -> labels[i], and the pairs (the indices `order` into it)."""

    inputs: list[str]
    labels: list[str]
    order: np.ndarray = field(repr=False)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(self.inputs[i], self.labels[i]) for i in self.order]

    @property
    def text(self) -> str:
        fmt = FIGURE_7_1
        return "".join(fmt.pair(x, y) + fmt.separator for x, y in self.pairs)


def sample_episode(
    task: ICLTask, gen: np.random.Generator, n_way: int | None = None, pairs: int | None = None
) -> Episode:
    """A random mapping of n inputs to n labels, and `pairs` pairs drawn from it."""
    n = int(gen.choice(task.ways)) if n_way is None else n_way
    xs = gen.choice(list(task.inputs), n, replace=False).tolist()
    ys = gen.choice(list(task.labels), n, replace=False).tolist()
    return Episode(xs, ys, gen.integers(0, n, task.pairs if pairs is None else pairs))


def episode_ids(tokenizer: PieceTokenizer, episodes: list[Episode]) -> np.ndarray:
    """Token ids of equally long episodes, (E, 2 P)."""
    return np.array([tokenizer.encode(e.text) for e in episodes], dtype=np.int64)


class EpisodeTrainer(Trainer):
    """A Trainer whose blocks are whole episodes: the splits are episodes laid end to end,
    each 2 P tokens, and a block starts where an episode does."""

    def batch(self, data: np.ndarray, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        T = self.config.block_size
        n = len(data) // (T + 1)
        start = gen.integers(0, n, self.tc.batch_size) * (T + 1)  # (B,)
        pos = start[:, None] + np.arange(T)  # (B, T)
        return data[pos], data[pos + 1]


# ----------------------------------------------------------------------------- evaluation
@dataclass
class ShotAccuracy:
    """Accuracy at 0..8 shots of an n-way task (`ranked`, `greedy`, `ideal`: (9,) arrays)."""

    n_way: int
    ranked: np.ndarray
    greedy: np.ndarray
    ideal: np.ndarray
    episodes: int


def _ideal_reader(e: Episode, k: int) -> float:
    """P(correct) of a reader who knows the labels of the inputs among the first k pairs."""
    seen = set(e.order[:k].tolist())
    q = int(e.order[k])
    return 1.0 if q in seen else 1.0 / (len(e.inputs) - len(seen))


def shot_accuracy(
    model: GPT, task: ICLTask, n_way: int, episodes: int = 500, seed: int = 0
) -> ShotAccuracy:
    """Accuracy at 0..8 shots on `episodes` held-out n-way episodes (mappings drawn from a
    generator of their own, seeded by (seed, n_way))."""
    gen = np.random.default_rng([seed, n_way, 7])
    tok = task.tokenizer()
    eps = [sample_episode(task, gen, n_way, MAX_SHOTS + 1) for _ in range(episodes)]
    ids = episode_ids(tok, eps)  # (E, 18): question, answer per pair
    q_pos = 2 * np.arange(MAX_SHOTS + 1)  # the question of pair k+1 predicts its answer
    with no_grad():
        logits = model(ids[:, :-1]).data[:, q_pos]  # (E, 9, V)
    target = ids[:, q_pos + 1]  # (E, 9)
    cand = np.array([[tok.encode(task.answer(y))[0] for y in e.labels] for e in eps])  # (E, n)
    cand_logits = np.take_along_axis(logits, np.broadcast_to(cand[:, None], (*target.shape, n_way)), -1)  # fmt: skip
    ranked = np.take_along_axis(cand, cand_logits.argmax(-1), -1) == target  # (E, 9)
    greedy = logits.argmax(-1) == target  # (E, 9)
    ideal = np.array([[_ideal_reader(e, k) for k in range(MAX_SHOTS + 1)] for e in eps])
    return ShotAccuracy(n_way, ranked.mean(0), greedy.mean(0), ideal.mean(0), episodes)


# ----------------------------------------------------------------------------- training
def icl_recipe(fast: bool = False) -> tuple[GPTConfig, TrainConfig]:
    """The model and the recipe (`fast`: a few steps, for tests and quick looks).

    The checkpoint shipped in minigen/assets/icl-gpt is this recipe, made by

        OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 minigen train-icl --out icl-gpt

    (7.6 minutes on one thread of a busy 2-core machine, 6000 steps) and keeping the three
    files inference needs: config.json, model.safetensors, tokenizer.json (1.6 MB).
    """
    task = ICLTask()
    cfg = GPTConfig(
        vocab_size=task.tokenizer().vocab_size, block_size=task.block_size,
        n_layer=2, n_head=4, n_embd=128 if not fast else 32,
    )  # fmt: skip
    tc = TrainConfig(
        max_iters=6000 if not fast else 20, batch_size=32, learning_rate=2e-3, min_lr=2e-4,
        warmup_iters=100 if not fast else 2, weight_decay=0.0, eval_interval=500 if not fast else 10,
        eval_iters=10 if not fast else 2, checkpoint_interval=0, seed=1337,
    )  # fmt: skip
    return cfg, tc


def make_splits(task: ICLTask, train_episodes: int, val_episodes: int, seed: int):
    """Episodes laid end to end: (train ids, val ids), from generators of their own."""
    tok = task.tokenizer()
    out = []
    for i, n in enumerate((train_episodes, val_episodes)):
        gen = np.random.default_rng([seed, 100 + i])
        out.append(episode_ids(tok, [sample_episode(task, gen) for _ in range(n)]).reshape(-1))
    return out[0], out[1]


def train_icl(
    out_dir: str | Path | None,
    config: GPTConfig,
    train_config: TrainConfig,
    task: ICLTask | None = None,
    force: bool = False,
    progress: bool = True,
    curve_every: int = 250,
    callback: Callable[[EpisodeTrainer, dict[str, Any]], Any] | None = None,
) -> EpisodeTrainer:
    """Train a GPT on episodes, recording as it goes the accuracy at 1 and 8 shots, 2- and
    4-way (ranked, 200 held-out episodes each) in `trainer.meta["curve"]`: in-context learning
    appearing. The checkpoint (`out_dir`) keeps only what inference needs."""
    task = task or ICLTask()
    # this run alone writes into out_dir, from now until its checkpoint is saved
    with RunLock(out_dir) if out_dir is not None else contextlib.nullcontext():
        if out_dir is not None and not force:
            check_writable(out_dir)
        return _train_icl(out_dir, config, train_config, task, progress, curve_every, callback)


def _train_icl(
    out_dir: str | Path | None,
    config: GPTConfig,
    train_config: TrainConfig,
    task: ICLTask,
    progress: bool,
    curve_every: int,
    callback: Callable[[EpisodeTrainer, dict[str, Any]], Any] | None,
) -> EpisodeTrainer:
    n_train = train_config.max_iters * train_config.batch_size // 2 + 1000
    train_ids, val_ids = make_splits(task, n_train, 1000, train_config.seed)
    meta = {"task": {**task.__dict__, "ways": list(task.ways)}, "curve": []}
    tok = task.tokenizer()
    trainer = EpisodeTrainer(config, train_config, tok, train_ids, val_ids, None, False, meta)
    t0 = time.perf_counter()

    def record(tr: EpisodeTrainer, ev: Any) -> None:
        if tr.step % curve_every and tr.step != train_config.max_iters:
            return
        tr.model.eval()
        point = {"step": tr.step}
        for n in (2, 4):
            acc = shot_accuracy(tr.model, task, n, episodes=200, seed=99)
            point[f"{n}-way"] = [round(float(acc.ranked[1]), 4), round(float(acc.ranked[-1]), 4)]
        tr.model.train()
        tr.meta["curve"].append(point)
        if callback is not None:
            callback(tr, point)

    trainer.run(progress=progress, callback=record)
    trainer.meta["train_seconds"] = round(time.perf_counter() - t0, 1)
    if out_dir is not None:
        trainer.save(out_dir, inference_only=True)
    return trainer
