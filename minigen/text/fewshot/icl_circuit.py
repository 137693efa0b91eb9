"""How the in-context learner of `minigen.text.fewshot.icl` answers: where its query looks, and what
breaks when it may not look there (attention ablations).

The query is the question of pair 9 ("I: x, O:" at position 16 of a 9-pair episode) whose
letter x was seen in the 8 pairs before it. In every head of every block, its attention
weights a_{16, s} (the row of softmax(q k^T / sqrt(hs) + M)) split over the positions s < 16
into four groups:

    same-letter questions   "I: x, O:" earlier (a token equal to the query)
    same-letter answers     the answers right after them (what the model must output)
    other questions, other answers

An *ablation* re-runs the model with the query's weights on one group set to 0 in every
head of one block, the rest renormalised to sum to 1,

    a'_{16, s} = a_{16, s} [s not in G] / sum_{s'} a_{16, s'} [s' not in G]

(a head that looked at G only then looks at the query itself),

and measures the greedy accuracy again: a group the answer is read through is one the model
cannot do without. (Olsson et al. 2022's *induction head* would read the same-letter
answers in its last block; the ablations say whether this model does.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from minigen.tensor import Tensor, no_grad
from minigen.text.fewshot.icl import MAX_SHOTS, ICLTask, episode_ids, sample_episode
from minigen.text.gpt import GPT
from minigen.text.gpt_ops import attention_weights, embed_tokens, split_heads, tied_lm_head

__all__ = ["GROUPS", "forward_with_attention", "seen_queries", "query_attention", "ablation"]

GROUPS = ("same-letter questions", "same-letter answers", "other questions", "other answers")
QUERY = 2 * MAX_SHOTS  # the position of pair 9's question
Edit = Callable[[int, np.ndarray], np.ndarray]


def forward_with_attention(model: GPT, ids: np.ndarray, edit: Edit | None = None) -> np.ndarray:
    """Logits (B, T, V) of `model` on ids (B, T), block l's attention weights (B, nh, T, T)
    replaced by `edit(l, weights)` before they mix the values (None: the model as it is)."""
    c = model.config
    with no_grad():
        # h^0_t = E[x_t] + P[t]
        x = embed_tokens(ids, model.wte.weight, model.wpe.weight)  # (B, T, d)
        for i, block in enumerate(model.h):
            qkv = block.attn.c_attn(block.ln_1(x)).data  # (B, T, 3d)
            att = attention_weights(qkv, c.n_head)  # (B, nh, T, T)
            if edit is not None:
                att = edit(i, att)
            v = split_heads(qkv, c.n_head)[2]  # (B, nh, T, hs)
            y = (att @ v).transpose(0, 2, 1, 3).reshape(x.shape)  # (B, T, d), heads side by side
            x = x + block.attn.c_proj(Tensor(y))
            x = x + block.mlp(block.ln_2(x))
        # logits = LN(h^L) E^T, the head tied to the token embedding
        return tied_lm_head(model.ln_f(x), model.wte.weight).data  # (B, T, V)


def seen_queries(
    task: ICLTask, episodes: int, seed: int = 1, n_way: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """(ids (E, 18), groups (E, 4, 16) bool): n-way episodes of 9 pairs whose last question's
    letter was seen before, and which of the positions 0..15 fall in each of `GROUPS`."""
    gen = np.random.default_rng([seed, 13])
    eps = []
    while len(eps) < episodes:
        e = sample_episode(task, gen, n_way, MAX_SHOTS + 1)
        if e.order[-1] in e.order[:-1]:
            eps.append(e)
    same = np.array([e.order[:-1] == e.order[-1] for e in eps])  # (E, 8): pair j has x
    groups = np.zeros((len(eps), 4, QUERY), bool)
    groups[:, 0, 0::2], groups[:, 1, 1::2] = same, same
    groups[:, 2, 0::2], groups[:, 3, 1::2] = ~same, ~same
    return episode_ids(task.tokenizer(), eps), groups


def query_attention(model: GPT, task: ICLTask, episodes: int = 200, seed: int = 1) -> np.ndarray:
    """(n_layer, n_head, 4): the mean attention of the query to each of `GROUPS` (the rest,
    up to 1, is on the query itself)."""
    ids, groups = seen_queries(task, episodes, seed)
    maps = np.stack(
        [np.asarray(m) for m in model.attention_maps(ids[:, :-1])], 1
    )  # (E, L, H, T, T)
    row = maps[:, :, :, QUERY, :QUERY]  # (E, L, H, 16)
    return np.einsum("elhs,egs->lhg", row, groups) / len(ids)  # (L, H, 4)


def ablation(
    model: GPT, task: ICLTask, layer: int | None = None, group: int | None = None,
    episodes: int = 300, seed: int = 2,
) -> float:  # fmt: skip
    """Greedy accuracy on seen queries with the query's attention to GROUPS[group] removed in
    every head of block `layer` (None: nothing removed)."""
    ids, groups = seen_queries(task, episodes, seed)

    def edit(i: int, att: np.ndarray) -> np.ndarray:
        if i != layer or group is None:
            return att
        att = att.copy()
        # a'_{16, s} = a_{16, s} [s not in G] / sum_s' a_{16, s'} [s' not in G]
        kept = att[:, :, QUERY, :].copy()  # (E, H, T)
        kept[:, :, :QUERY] *= ~groups[:, None, group]
        kept[..., QUERY] += kept.sum(-1) == 0  # a head that looked at G only: at itself
        att[:, :, QUERY, :] = kept / kept.sum(-1, keepdims=True)
        return att

    logits = forward_with_attention(model, ids[:, :-1], edit)[:, QUERY]  # (E, V)
    return float((logits.argmax(-1) == ids[:, QUERY + 1]).mean())
