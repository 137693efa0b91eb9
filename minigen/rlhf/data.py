"""Prompts and responses as padded token batches, with the mask of the tokens a loss counts.

A sequence is s = prompt + response, L tokens. The model reads s (right-padded to the
batch's longest, T tokens; causal attention keeps padding from reaching real positions),
and position t predicts s_{t+1}:

    ids[b, t]     = s_t                (t < L, padding after)
    targets[b, t] = s_{t+1}            (t < L - 1), IGNORE elsewhere
    mask[b, t]    = 1 where targets[b, t] is a token the loss counts

With `loss_on="response"` (supervised fine-tuning, and every log-probability of a response)
the mask covers the response's tokens only: log pi(y | x) = sum_t mask_t log p(s_{t+1} | s_<=t),
and the prompt's tokens are left out. With `loss_on="all"` (pretraining) it covers every
token after the first. `last[b] = L - 1` is where the reward model reads the sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minigen import functional as F
from minigen.tensor import Tensor

__all__ = ["IGNORE", "Batch", "encode", "token_logprobs", "sequence_logprob"]

IGNORE = -100  # a target the cross-entropy skips (minigen.functional.cross_entropy)


@dataclass
class Batch:
    ids: np.ndarray  # (B, T) int64 tokens, right-padded
    targets: np.ndarray  # (B, T) int64 next tokens, IGNORE where not counted
    mask: np.ndarray  # (B, T) float32, 1 where a target is counted
    last: np.ndarray  # (B,) the position of each sequence's last token
    prompt_len: np.ndarray  # (B,) tokens of each prompt

    def __len__(self) -> int:
        return len(self.ids)


def encode(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    block_size: int,
    loss_on: str = "response",
) -> Batch:
    """Tokenize prompt + response pairs into one padded batch (see the module docstring).

    Raises a ValueError when a sequence is longer than `block_size` (naming it), when the
    lists differ in length or are empty, or when a response is empty.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("no sequences to encode: the batch is empty")
    if loss_on not in ("response", "all"):
        raise ValueError(f"loss_on must be 'response' or 'all', got {loss_on!r}")
    seqs, plens = [], []
    for p, r in zip(prompts, responses, strict=True):
        pi, ri = tokenizer.encode(p), tokenizer.encode(r)
        if not pi or not ri:
            raise ValueError(f"an empty {'prompt' if not pi else 'response'}: {p!r} -> {r!r}")
        if len(pi) + len(ri) > block_size:
            raise ValueError(
                f"prompt + response is {len(pi) + len(ri)} tokens, longer than the model's "
                f"context (block_size={block_size}): {p!r} -> {r[:40]!r}..."
            )
        seqs.append(pi + ri)
        plens.append(len(pi))
    B, T = len(seqs), max(len(s) for s in seqs)
    ids = np.zeros((B, T), dtype=np.int64)
    targets = np.full((B, T), IGNORE, dtype=np.int64)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = s
        targets[b, : len(s) - 1] = s[1:]
    lengths = np.array([len(s) for s in seqs])
    plen = np.array(plens)
    pos = np.arange(T)[None, :]  # (1, T)
    # counted targets: s_{t+1} for t in [first, L - 2], first = P - 1 (response) or 0 (all)
    first = plen[:, None] - 1 if loss_on == "response" else np.zeros((B, 1), dtype=np.int64)
    counted = (pos >= first) & (pos < lengths[:, None] - 1)  # (B, T)
    targets = np.where(counted, targets, IGNORE)
    return Batch(ids, targets, counted.astype(np.float32), lengths - 1, plen)


def token_logprobs(logits: Tensor, targets: np.ndarray) -> Tensor:
    """log p(target_t) at every position, (B, T, V) -> (B, T); 0 where the target is IGNORE."""
    # log p(s_{t+1} | s_<=t) = -cross-entropy of one position
    return -F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")


def sequence_logprob(logits: Tensor, batch: Batch) -> Tensor:
    """log pi(y | x) = sum over the counted tokens of log p(y_t | x, y_<t): (B,)."""
    return token_logprobs(logits, batch.targets).sum(axis=1)  # (B,)
