"""The networks of RLHF, all built on the GPT of §7.1, and sampling responses from a policy.

- the **policy** is a GPT: pi(y | x) = prod_t p(y_t | x, y_<t);
- the **reward model** is the GPT's trunk with a scalar head read at the response's last
  token (Ouyang et al. 2022):  r(x, y) = w^T LN(h^L_last) + b;
- the **value head** of PPO reads the policy's own trunk at every position:
  V(s_t) = w^T LN(h^L_t) + b, the expected return from the state x, y_<t.

The trunk is the GPT's forward pass without its head, written with the GPT's own modules
(embeddings, blocks, final layer norm), so that both heads see the same features the language
model head sees:  logits_t = LN(h^L_t) E^T.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minigen import nn
from minigen.tensor import Tensor
from minigen.text import GPT, GPTConfig, generate_ids

__all__ = ["hidden_states", "lm_logits", "RewardModel", "PolicyWithValue", "sample_responses"]


def hidden_states(gpt: GPT, ids: Any) -> Tensor:
    """LN(h^L): the trunk's features, ids (B, T) -> (B, T, d)."""
    ids = np.asarray(ids)
    B, T = ids.shape
    if T > gpt.config.block_size:
        raise ValueError(
            f"a sequence of {T} tokens is longer than the model's context "
            f"(block_size={gpt.config.block_size})"
        )
    # h^0_t = E[x_t] + P[t]
    x = gpt.wte(ids) + gpt.wpe(np.arange(T))  # (B, T, d)
    for block in gpt.h:
        x = block(x)  # (B, T, d)
    return gpt.ln_f(x)  # (B, T, d)


def lm_logits(gpt: GPT, h: Tensor) -> Tensor:
    """logits = LN(h^L) E^T, the head tied to the token embedding: (B, T, d) -> (B, T, V)."""
    return h @ gpt.wte.weight.T  # (B, T, V)


class RewardModel(nn.Module):
    """r(x, y): a GPT trunk and a linear head on the last token's features.

    The raw output is shifted and scaled by (mean, std), fixed after training, so that the
    rewards PPO sees are about zero-mean and of unit spread on the rater's comparisons.
    """

    def __init__(self, config: GPTConfig) -> None:
        self.gpt = GPT(config)
        self.head = nn.Linear(config.n_embd, 1)
        self.mean, self.std = 0.0, 1.0

    @property
    def config(self) -> GPTConfig:
        return self.gpt.config

    @classmethod
    def from_policy(cls, policy: GPT) -> RewardModel:
        """A reward model whose trunk starts as a copy of a trained GPT (InstructGPT starts
        its reward model from the SFT model); the head starts at zero."""
        rm = cls(policy.config)
        rm.gpt.load_state_dict(policy.state_dict())
        rm.head.weight.data[...] = 0.0
        rm.head.bias.data[...] = 0.0
        return rm

    def forward(self, ids: Any, last: Any) -> Tensor:
        """Raw rewards (B,) of sequences ids (B, T), read at positions `last` (B,)."""
        h = hidden_states(self.gpt, ids)  # (B, T, d)
        rows = np.arange(h.shape[0])
        # r(x, y) = w^T LN(h^L_last) + b
        return self.head(h[rows, np.asarray(last)])[:, 0]  # (B,)

    def score(self, ids: Any, last: Any) -> Tensor:
        """Normalised rewards (r - mean) / std, (B,)."""
        return (self(ids, last) - self.mean) / self.std


class PolicyWithValue(nn.Module):
    """The PPO agent: a GPT policy and a value head sharing its trunk."""

    def __init__(self, gpt: GPT) -> None:
        self.gpt = gpt
        self.v_head = nn.Linear(gpt.config.n_embd, 1)
        self.v_head.weight.data[...] = 0.0  # V = 0 at the start
        self.v_head.bias.data[...] = 0.0

    def forward(self, ids: Any) -> tuple[Tensor, Tensor]:
        """(logits (B, T, V), values (B, T)) in one pass of the trunk."""
        h = hidden_states(self.gpt, ids)  # (B, T, d)
        return lm_logits(self.gpt, h), self.v_head(h)[..., 0]


def sample_responses(
    model: GPT,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    gen: np.random.Generator | None = None,
    stop: str = "\n",
) -> list[str]:
    """One sampled response per prompt, ending with `stop` if the model ended it within
    `max_new_tokens` tokens (and cut there), unfinished otherwise.

    Prompts of equal token length are sampled together, as one batch with the KV cache.
    """
    if not prompts:
        return []
    encoded = [tokenizer.encode(p) for p in prompts]
    longest = max(len(e) for e in encoded)
    if longest + max_new_tokens > model.config.block_size:
        raise ValueError(
            f"a prompt of {longest} tokens and a response of up to {max_new_tokens} exceed the "
            f"model's context (block_size={model.config.block_size}); ask for fewer new tokens"
        )
    (stop_id,) = tokenizer.encode(stop)
    gen = gen if gen is not None else np.random.default_rng(0)
    out: list[str] = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, e in enumerate(encoded):
        by_length.setdefault(len(e), []).append(i)
    for _, rows in sorted(by_length.items()):
        ctx = np.array([encoded[i] for i in rows], dtype=np.int64)  # (b, T)
        new = np.zeros((len(rows), 0), dtype=np.int64)
        done = np.zeros(len(rows), dtype=bool)
        steps = generate_ids(model, ctx, max_new_tokens, temperature, gen=gen)
        for tok in steps:  # (b,)
            new = np.concatenate([new, tok[:, None]], axis=1)
            done |= tok == stop_id
            if done.all():
                break
        steps.close()
        for r, i in enumerate(rows):
            ids = new[r].tolist()
            if stop_id in ids:
                ids = ids[: ids.index(stop_id) + 1]
            out[i] = tokenizer.decode(ids)
    return out
