"""The GPT's fused ops: each one node of the graph, with its backward beside it.

- `embed_tokens`: h^0 = E[x_t] + P[start + t], one node for both embeddings;
- `causal_self_attention`: from the packed projections (q, k, v of every head side by side,
  the output of c_attn) to the heads' outputs merged back, attention batched over the heads
  (the math reads plainly in `minigen.functional.attention`; this runs its fused kernels,
  `attention_forward` / `attention_backward`); with a `KVCache`, the keys and values of
  earlier positions are reused, so a new token costs O(context) instead of O(context^2);
- `tied_lm_head`: logits = x E^T with the token embedding E (the head shares its weights).
"""

from __future__ import annotations

import math
from typing import Any

from minigen import backend, dispatch, rng
from minigen import functional as F
from minigen.tensor import Tensor, node

__all__ = [
    "KVCache", "embed_tokens", "split_heads", "attention_weights", "causal_self_attention",
    "tied_lm_head", "row_sum_by_id",
]  # fmt: skip


class KVCache:
    """Keys and values of the positions seen so far, per layer: (B, n_head, block_size, hs),
    filled up to `length`. The model appends to it at each forward call."""

    def __init__(
        self, n_layer: int, batch: int, n_head: int, block_size: int, head_size: int, dtype: Any
    ) -> None:
        xp = backend.xp
        shape = (batch, n_head, block_size, head_size)
        self.k = [xp.zeros(shape, dtype=dtype) for _ in range(n_layer)]
        self.v = [xp.zeros(shape, dtype=dtype) for _ in range(n_layer)]
        self.length = 0
        self.block_size = block_size

    def layer(self, i: int) -> tuple[KVCache, int]:
        return self, i

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0


def row_sum_by_id(ids: Any, g: Any, num: int) -> Any:
    """dE[i] = sum of g[n] over the positions n with ids[n] == i: (N,) ids, (N, D) -> (num, D).

    Sorting the ids groups equal ones, so one `add.reduceat` sums each group (faster than
    an unbuffered scatter-add, `add.at`).
    """
    xp = backend.array_module(g)
    out = xp.zeros((num, g.shape[1]), dtype=g.dtype)
    if not ids.size:
        return out
    order = xp.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = xp.flatnonzero(xp.concatenate([xp.ones(1, bool), sorted_ids[1:] != sorted_ids[:-1]]))
    out[sorted_ids[starts]] = xp.add.reduceat(g[order], starts, axis=0)
    return out


def embed_tokens(ids: Any, wte: Tensor, wpe: Tensor, start: int = 0) -> Tensor:
    """h_t = E[x_t] + P[start + t]: ids (B, T) -> (B, T, d)."""
    V, P = wte.shape[0], wpe.shape[0]
    if ids.dtype.kind not in "iu":
        raise ValueError(f"embed_tokens: ids must be integers, got dtype {ids.dtype}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
        raise ValueError(f"embed_tokens: ids must lie in [0, {V}), got [{ids.min()}, {ids.max()}]")
    B, T = ids.shape
    if start + T > P:
        raise ValueError(f"embed_tokens: positions up to {start + T} exceed the {P} of wpe")
    y = wte.data[ids]  # (B, T, d)
    y += wpe.data[start : start + T]

    def backward(g):  # g (B, T, d)
        d = g.shape[-1]
        dwte = row_sum_by_id(ids.reshape(-1), g.reshape(-1, d), V) if wte.requires_grad else None
        dwpe = None
        if wpe.requires_grad:
            dwpe = backend.array_module(g).zeros(wpe.shape, dtype=g.dtype)
            dwpe[start : start + T] = g.sum(axis=0)  # each position's gradient, summed over B
        return dwte, dwpe

    return node(y, (wte, wpe), backward)


def tied_lm_head(x: Tensor, wte: Tensor) -> Tensor:
    """logits = x E^T: x (..., d), E (V, d) -> (..., V)."""
    xd, w = x.data, wte.data
    x2 = xd.reshape(-1, xd.shape[-1])  # (N, d)
    y = (x2 @ w.T).reshape(*xd.shape[:-1], w.shape[0])  # (..., V)

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])  # (N, V)
        return (
            (g2 @ w).reshape(xd.shape) if x.requires_grad else None,  # dL/dx = g E
            g2.T @ x2 if wte.requires_grad else None,  # dL/dE = g^T x
        )

    return node(y, (x, wte), backward)


def split_heads(qkv: Any, n_head: int) -> tuple[Any, Any, Any]:
    """Packed projections (B, T, 3d) -> queries, keys, values, views of shape (B, nh, T, hs)."""
    B, T, C3 = qkv.shape
    if C3 % (3 * n_head):
        raise ValueError(f"attention: last axis {C3} is not 3 x n_embd with n_head={n_head}")
    # (B, T, 3, nh, hs) -> three views (B, nh, T, hs)
    q, k, v = qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)
    return q, k, v


def attention_weights(qkv: Any, n_head: int) -> Any:
    """The causal attention weights of every head, (B, nh, T, T), from packed projections."""
    q, k, v = split_heads(qkv, n_head)
    return F.attention_forward(q, k, v, 1 / math.sqrt(q.shape[-1]), True)[1]


def causal_self_attention(
    qkv: Tensor,
    n_head: int,
    dropout: float = 0.0,
    cache: tuple[KVCache, int] | None = None,
    gen: Any = None,
) -> Tensor:
    """Multi-head causal self-attention from packed projections: (B, T, 3d) -> (B, T, d).

    The heads split d into n_head slices of hs = d / n_head; each head attends with
    softmax(q k^T / sqrt(hs) + M) v, the plain `F.attention` with M = `F.causal_mask`, all
    heads in one batched matmul, and the heads' outputs are concatenated back into d.
    `dropout` zeroes attention weights (scaled by 1 / (1 - dropout)), drawn from `gen` or
    minigen's generator. With `cache = (KVCache, layer)` the new keys and values are appended
    to the layer's cache and the queries attend to every cached position.
    """
    a = qkv.data
    B, T, C3 = a.shape
    q, k, v = split_heads(a, n_head)  # (B, nh, T, hs) each
    hs = q.shape[-1]
    scale = 1 / math.sqrt(hs)
    if cache is not None:
        kv, i = cache
        lo, hi = kv.length, kv.length + T
        kv.k[i][:, :, lo:hi], kv.v[i][:, :, lo:hi] = k, v
        k, v = kv.k[i][:, :, :hi], kv.v[i][:, :, :hi]  # (B, nh, S, hs)
    keep = None
    if dropout > 0:
        S = k.shape[2]
        keep = (rng.rand(B, n_head, T, S, dtype=a.dtype, gen=gen) >= dropout) * (1 / (1 - dropout))
        keep = keep.astype(a.dtype)
    # softmax(q k^T / sqrt(hs) + M) v: read it plainly in F.attention; here its fused form,
    # giving y and the weights att, on the selected backend (minigen/dispatch.py)
    y, att = dispatch.pick(F.attention_forward)(q, k, v, scale, True, keep=keep)  # (B, nh, T, hs)
    out = y.transpose(0, 2, 1, 3).reshape(B, T, C3 // 3)  # (B, T, d)
    attention_backward = dispatch.pick(F.attention_backward)

    def backward(g):  # g (B, T, d)
        gy = g.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        dq, dk, dv = attention_backward(gy, q, k, v, att, scale, keep=keep)
        dqkv = backend.array_module(g).empty((B, T, 3, n_head, hs), dtype=g.dtype)
        for j, d in enumerate((dq, dk, dv)):
            dqkv[:, :, j] = d.transpose(0, 2, 1, 3)  # (B, T, nh, hs)
        return (dqkv.reshape(B, T, C3),)

    return node(out, (qkv,), backward)
