"""The gradient-descent stages of RLHF: pretraining, SFT, the reward model, and DPO.

1. **Pretraining**: next-token cross-entropy on forum exchanges, every token counted,
       L = -1/N sum_t log p(s_{t+1} | s_<=t).
2. **SFT**: the same on the rater's demonstrations, with the prompt's tokens left out,
       L = -1/N sum_{t in response} log p(y_t | x, y_<t).
3. **Reward model**: the Bradley-Terry loss on the rater's comparisons (`losses`),
   starting from the SFT model's trunk; then its scores are normalised.
5. **DPO**: the DPO loss on the same comparisons, starting from the SFT model, which is also
   the frozen reference.

(4, PPO, is in `minigen.rlhf.ppo`.) Every stage runs through `fit`, on the one training loop
(`minigen.training.Loop`): AdamW with weight decay on the matrices, warm-up then cosine decay
of the learning rate, gradients clipped to norm 1, batches drawn from minigen's generator (one
seed fixes a run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from minigen import optim, rng
from minigen.rlhf.config import RLHFConfig
from minigen.rlhf.data import Batch, encode, sequence_logprob
from minigen.rlhf.losses import bradley_terry_loss, dpo_loss
from minigen.rlhf.models import RewardModel, hidden_states, lm_logits, sample_responses
from minigen.rlhf.rater import Pair, demonstrate, ordered_pairs
from minigen.rlhf.task import forum_corpus, sample_requests
from minigen.tensor import Tensor, no_grad
from minigen.text import GPT, CharTokenizer, GPTConfig
from minigen.training import Loop, Schedule

__all__ = [
    "make_tokenizer", "gpt_config", "copy_gpt", "take", "fit", "pretrain", "sft",
    "train_reward_model", "comparison_groups", "pair_batch", "sampled_pairs", "reward_accuracy", "reward_scores",
    "sequence_logprobs", "dpo", "logits_of", "by_length", "window",
]  # fmt: skip


def make_tokenizer() -> CharTokenizer:
    """The character tokenizer of the task's alphabet (every stage shares it)."""
    from minigen.rlhf.task import alphabet

    return CharTokenizer(alphabet())


def gpt_config(cfg: RLHFConfig, tokenizer: Any) -> GPTConfig:
    return GPTConfig(vocab_size=tokenizer.vocab_size, **cfg.model_shape())


def copy_gpt(model: GPT) -> GPT:
    """An independent copy of a GPT (a frozen reference, or a new policy to train)."""
    twin = GPT(model.config)
    twin.load_state_dict(model.state_dict())
    return twin


def take(batch: Batch, idx: Any) -> Batch:
    """The rows `idx` of a batch, cut to their longest sequence (no wasted padding)."""
    idx = np.asarray(idx)
    T = int(batch.last[idx].max()) + 1
    return Batch(
        batch.ids[idx, :T], batch.targets[idx, :T], batch.mask[idx, :T], batch.last[idx],
        batch.prompt_len[idx],
    )  # fmt: skip


def logits_of(model: GPT, ids: np.ndarray) -> Tensor:
    """The next-token logits (B, T, V)."""
    return lm_logits(model, hidden_states(model, ids))


def fit(
    model: Any,
    loss_at: Callable[[int], Tensor],
    steps: int,
    lr: float,
    desc: str,
    progress: bool = True,
    weight_decay: float = 0.1,
) -> list[float]:
    """`steps` AdamW steps on `loss_at(step)` through the one training loop
    (`minigen.training.Loop`); returns the loss of every step. A non-finite loss or gradient
    stops the run before its update with `TrainingDiverged`, the weights those of the step
    before."""
    params = model.parameters()
    opt = optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.99),
    )
    # warm-up over a twentieth of the run, then cosine decay to lr / 10; gradients clipped to 1
    schedule = Schedule(lr, max(1, steps // 20), steps, lr / 10)
    loop = Loop(model, opt, steps, schedule, grad_clip=1.0, desc=desc, progress=progress,
                leave=False)  # fmt: skip
    model.train()
    try:
        losses = loop.run(loss_at)
    finally:
        model.eval()
    return losses


def by_length(data: Batch, gen: np.random.Generator) -> np.ndarray:
    """The rows sorted by length (ties in random order), for batches of similar lengths."""
    return np.lexsort((gen.random(len(data)), data.last))


def window(order: np.ndarray, batch: int, gen: np.random.Generator) -> np.ndarray:
    """`batch` consecutive rows of `order` from a random start (wrapping around): rows of
    similar length, so little padding, and every row equally likely."""
    return order[(gen.integers(len(order)) + np.arange(batch)) % len(order)]


def _lm_fit(model: GPT, data: Batch, steps: int, batch: int, lr: float, desc: str, progress: bool):
    from minigen import functional as F

    order = by_length(data, rng.generator())

    def loss_at(step: int) -> Tensor:
        b = take(data, window(order, batch, rng.generator()))
        # mean cross-entropy over the counted tokens (IGNORE elsewhere)
        return F.cross_entropy(logits_of(model, b.ids), b.targets, ignore_index=-100)

    return fit(model, loss_at, steps, lr, desc, progress)


def pretrain(cfg: RLHFConfig, tokenizer: Any, progress: bool = True) -> tuple[GPT, list[float]]:
    """A GPT trained from scratch on the forum corpus (loss on every token)."""
    rng.manual_seed(cfg.seed)
    exchanges = forum_corpus(cfg.corpus_size, cfg.seed)
    prompts = [e[: e.index("\nA:") + 3] for e in exchanges]
    data = encode(
        tokenizer, prompts, [e[len(p) :] for e, p in zip(exchanges, prompts, strict=True)],
        cfg.block_size, loss_on="all",
    )  # fmt: skip
    model = GPT(gpt_config(cfg, tokenizer))
    losses = _lm_fit(model, data, cfg.pretrain_steps, cfg.pretrain_batch, cfg.pretrain_lr,
                     "pretrain", progress)  # fmt: skip
    return model, losses


def sft(
    cfg: RLHFConfig, pretrained: GPT, tokenizer: Any, progress: bool = True
) -> tuple[GPT, list[float]]:
    """The pretrained GPT fine-tuned on the rater's demonstrations (response tokens only)."""
    rng.manual_seed(cfg.seed + 1)
    prompts = [r.prompt for r in sample_requests(cfg.sft_size, cfg.seed + 1)]
    data = encode(tokenizer, prompts, [demonstrate(p) for p in prompts], cfg.block_size)
    model = copy_gpt(pretrained)
    losses = _lm_fit(model, data, cfg.sft_steps, cfg.sft_batch, cfg.sft_lr, "sft", progress)
    return model, losses


def sampled_pairs(
    model: GPT, tokenizer: Any, requests: Sequence[Any], max_new_tokens: int, seed: int,
    k: int = 2,
) -> list[Pair]:  # fmt: skip
    """Comparisons of the model's own responses (InstructGPT's labelers rank samples of the
    model): `k` samples per prompt, every two of them ordered by the rater; ties (and two
    equal samples) are dropped."""
    if k < 2:
        raise ValueError(f"sampled_pairs: k must be at least 2 samples per prompt, got {k}")
    prompts = [r.prompt for r in requests]
    gen = np.random.default_rng([seed, 13])
    samples = [sample_responses(model, tokenizer, prompts, max_new_tokens, 1.0, gen)
               for _ in range(k)]  # fmt: skip
    return [pair for i, p in enumerate(prompts)
            for pair in ordered_pairs(p, [s[i] for s in samples])]  # fmt: skip


def pair_batch(tokenizer: Any, pairs: Sequence[Pair], block_size: int) -> Batch:
    """The 2B sequences of B comparisons: chosen responses first, then the rejected ones."""
    if not pairs:
        raise ValueError("no preference pairs: the rater's comparisons are empty")
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return encode(tokenizer, prompts, responses, block_size)


def _pair_rows(n_pairs: int, idx: np.ndarray) -> np.ndarray:
    return np.concatenate([idx, idx + n_pairs])  # chosen rows, then their rejected rows


def comparison_groups(pairs: Sequence[Pair]) -> tuple[list[str], list[str], list[np.ndarray]]:
    """The comparisons of one prompt together: consecutive pairs of the same prompt are one
    group (the rater's ranking of K responses), each distinct response one row.

    Returns (prompts, responses) of the rows and, per group, a (n, 2) array of (chosen row,
    rejected row) of its comparisons."""
    prompts: list[str] = []
    responses: list[str] = []
    groups: list[np.ndarray] = []
    for i, pair in enumerate(pairs):
        if i == 0 or pair.prompt != pairs[i - 1].prompt:
            rows: dict[str, int] = {}
            groups.append(np.zeros((0, 2), dtype=np.int64))
        for text in (pair.chosen, pair.rejected):
            if text not in rows:
                rows[text] = len(responses)
                prompts.append(pair.prompt)
                responses.append(text)
        groups[-1] = np.vstack([groups[-1], [[rows[pair.chosen], rows[pair.rejected]]]])
    return prompts, responses, groups


def train_reward_model(
    cfg: RLHFConfig, sft_model: GPT, tokenizer: Any, pairs: Sequence[Pair], progress: bool = True
) -> tuple[RewardModel, list[float]]:
    """A reward model trained on comparisons by the Bradley-Terry loss, then normalised so
    its scores on the comparisons' responses have mean 0 and standard deviation 1.

    A batch is `cfg.rm_batch` prompts with all the comparisons the rater made of their
    responses (InstructGPT: the K (K - 1) / 2 comparisons of one ranking are one batch element,
    each response read once), the loss their mean. The prompts of a batch are neighbours in
    length, as in the language-model stages, so that little of it is padding."""
    if not pairs:
        raise ValueError("no preference pairs: the rater's comparisons are empty")
    rng.manual_seed(cfg.seed + 2)
    prompts, responses, groups = comparison_groups(pairs)
    data = encode(tokenizer, prompts, responses, cfg.block_size)
    rm = RewardModel.from_policy(sft_model)
    # the groups by their longest sequence: a batch of neighbours pads little (see `window`)
    longest = np.array([data.last[g].max() for g in groups])
    order = np.lexsort((rng.generator().random(len(groups)), longest))

    def loss_at(step: int) -> Tensor:
        picked = [groups[g] for g in window(order, cfg.rm_batch, rng.generator())]
        rows, inverse = np.unique(np.concatenate([g.ravel() for g in picked]), return_inverse=True)
        b = take(data, rows)
        r = rm(b.ids, b.last)  # (rows,)
        chosen, rejected = inverse.reshape(-1, 2).T  # (n,) positions of each comparison's rows
        return bradley_terry_loss(r[chosen], r[rejected])

    losses = fit(rm, loss_at, cfg.rm_steps, cfg.rm_lr, "reward model", progress)
    raw = reward_scores(rm, data, normalised=False)
    rm.mean, rm.std = float(raw.mean()), float(raw.std() + 1e-6)
    return rm, losses


def reward_scores(rm: RewardModel, data: Batch, normalised: bool = True, chunk: int = 256):
    """The reward model's scores of every sequence of a batch, (B,) NumPy."""
    out = []
    with no_grad():
        for i in range(0, len(data), chunk):
            b = take(data, np.arange(i, min(i + chunk, len(data))))
            out.append((rm.score if normalised else rm)(b.ids, b.last).numpy())
    return np.concatenate(out).astype(np.float64)


def reward_accuracy(rm: RewardModel, tokenizer: Any, pairs: Sequence[Pair]) -> float:
    """The fraction of comparisons where the reward model agrees with the rater."""
    s = reward_scores(rm, pair_batch(tokenizer, pairs, rm.config.block_size))
    n = len(pairs)
    return float(np.mean(s[:n] > s[n:]))


def sequence_logprobs(model: GPT, data: Batch, chunk: int = 256) -> np.ndarray:
    """log pi(y | x) of every sequence of a batch, without gradients: (B,) NumPy."""
    out = []
    with no_grad():
        for i in range(0, len(data), chunk):
            b = take(data, np.arange(i, min(i + chunk, len(data))))
            out.append(sequence_logprob(logits_of(model, b.ids), b).numpy())
    return np.concatenate(out)


def dpo(
    cfg: RLHFConfig, sft_model: GPT, tokenizer: Any, pairs: Sequence[Pair], progress: bool = True
) -> tuple[GPT, list[float]]:
    """A policy trained by DPO on comparisons, from (and against) the SFT model."""
    rng.manual_seed(cfg.seed + 4)
    data = pair_batch(tokenizer, pairs, cfg.block_size)
    n = len(pairs)
    # log pi_ref of a response, once, when a batch first draws it (not of all of them up front:
    # rankings of K responses per prompt give more comparisons than DPO's steps draw)
    ref = np.full(len(data), np.nan)
    policy = copy_gpt(sft_model)

    def loss_at(step: int) -> Tensor:
        rows = _pair_rows(n, rng.generator().integers(0, n, cfg.dpo_batch))
        new = np.unique(rows[np.isnan(ref[rows])])
        if len(new):
            ref[new] = sequence_logprobs(sft_model, take(data, new))
        b = take(data, rows)
        logp = sequence_logprob(logits_of(policy, b.ids), b)  # (2B,)
        k = len(b) // 2
        return dpo_loss(logp[:k], logp[k:], ref[rows[:k]], ref[rows[k:]], cfg.dpo_beta)

    losses = fit(policy, loss_at, cfg.dpo_steps, cfg.dpo_lr, "dpo", progress)
    return policy, losses
