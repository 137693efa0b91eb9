"""The GPT of §7.1 (Radford et al. 2018, 2019): an attention-based, autoregressive model.

A sequence of token ids x_1..x_T becomes a sequence of vectors, then a distribution over the
next token at every position:

    h^0_t = E[x_t] + P[t]                                 token and position embeddings
    a^l   = h^{l-1} + Att(LN(h^{l-1}))                    causal multi-head self-attention
    h^l   = a^l + W_2 GELU(W_1 LN(a^l))                   a 4x MLP, both with residuals
    p(x_{t+1} | x_1..x_t) = softmax(LN(h^L_t) E^T)        the head, tied to the embedding E

with pre-layer-norm blocks (GPT-2) and, per head j of n_head, on queries, keys and values
Q_j = LN(h) W^Q_j, K_j = LN(h) W^K_j, V_j = LN(h) W^V_j of size d / n_head:

    Att(h) = concat_j( softmax(Q_j K_j^T / sqrt(d / n_head) + M) V_j ) W^O

where the causal mask M hides the future (`minigen.functional.causal_mask`).

Parameter names follow Hugging Face's GPT2Model, and Linear weights are stored (in, out) like
its Conv1D, so GPT-2 checkpoints load by name with no transpose:

    wte.weight (V, d)  wpe.weight (block_size, d)  ln_f.weight, ln_f.bias (d,)
    h.{i}.ln_1.{weight,bias}  h.{i}.attn.c_attn.{weight (d, 3d), bias}  (q, k, v side by side)
    h.{i}.attn.c_proj.{weight (d, d), bias}  h.{i}.ln_2.{weight,bias}
    h.{i}.mlp.c_fc.{weight (d, 4d), bias}  h.{i}.mlp.c_proj.{weight (4d, d), bias}

Sizes are counted from the config alone (`GPTConfig.num_params`, `flops_per_token`), so the
175-billion-parameter GPT-3 of the chapter can be counted without allocating it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from minigen import backend, checks, nn, rng
from minigen import functional as F
from minigen.tensor import Tensor, is_grad_enabled, no_grad
from minigen.text.gpt_ops import (
    KVCache,
    attention_weights,
    causal_self_attention,
    embed_tokens,
    tied_lm_head,
)

__all__ = ["GPTConfig", "PRESETS", "preset", "param_shapes", "flops_per_token", "GPT", "KVCache"]


@dataclass(frozen=True)
class GPTConfig(checks.DictConfig):
    """The shape of a GPT. The MLP's hidden layer has 4 n_embd units."""

    vocab_size: int = 65
    block_size: int = 64  # the longest context the model is trained on
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # on embeddings, attention weights and both residual branches
    bias: bool = True  # biases in the linear layers and the layer norms (GPT-2 has them)

    def __post_init__(self) -> None:
        for f in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise ValueError(
                    f"GPTConfig: {f} must be a positive integer, got {getattr(self, f)!r}"
                )
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig: n_embd={self.n_embd} does not split into n_head={self.n_head} heads"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must lie in [0, 1), got {self.dropout}")

    def num_params(self, non_embedding: bool = False) -> int:
        """The number of parameters, from the shapes alone (the head is tied: counted once).

        `non_embedding=True` leaves out the token and position embeddings (Kaplan et al.).
        """
        shapes = param_shapes(self)
        if non_embedding:
            shapes = {k: s for k, s in shapes.items() if k not in ("wte.weight", "wpe.weight")}
        return sum(math.prod(s) for s in shapes.values())


PRESETS: dict[str, GPTConfig] = {
    # nanoGPT's CPU recipe for tiny Shakespeare by characters (vocabulary from the corpus)
    "small": GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
    "gpt2": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600),
    # GPT-3 (Brown et al. 2020) as the chapter quotes it: 96 blocks of 96 heads, tokens of
    # dimension 12,288, MLPs of 4 x 12,288 hidden units, a context of 2,048 tokens
    "gpt3-175b": GPTConfig(vocab_size=50257, block_size=2048, n_layer=96, n_head=96, n_embd=12288),
}


def preset(name: str, **changes: Any) -> GPTConfig:
    """A preset by name (see `PRESETS`), with fields changed by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown GPT preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes)


def param_shapes(c: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the model's order, without allocating anything."""
    d, b = c.n_embd, c.bias
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (c.vocab_size, d),
        "wpe.weight": (c.block_size, d),
    }

    def norm(name: str) -> None:
        shapes[f"{name}.weight"] = (d,)
        if b:
            shapes[f"{name}.bias"] = (d,)

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"] = (n_in, n_out)
        if b:
            shapes[f"{name}.bias"] = (n_out,)

    for i in range(c.n_layer):
        norm(f"h.{i}.ln_1")
        linear(f"h.{i}.attn.c_attn", d, 3 * d)
        linear(f"h.{i}.attn.c_proj", d, d)
        norm(f"h.{i}.ln_2")
        linear(f"h.{i}.mlp.c_fc", d, 4 * d)
        linear(f"h.{i}.mlp.c_proj", 4 * d, d)
    norm("ln_f")
    return shapes


def flops_per_token(c: GPTConfig, context: int | None = None, training: bool = True) -> int:
    """Floating-point operations per token (a multiply-add counts 2), matmuls only.

    Forward, per block: 2 (3 d^2) for Q, K, V; 2 d^2 for W^O; 2 (8 d^2) for the MLP; and
    2 S d for Q K^T plus 2 S d for the weighted sum of V, with S the context (every key
    counted, as in Kaplan et al. 2020). The head adds 2 d V. Backward costs twice the
    forward, so training is 3x.
    """
    d, S = c.n_embd, c.block_size if context is None else context
    forward = c.n_layer * (24 * d * d + 4 * S * d) + 2 * d * c.vocab_size
    return 3 * forward if training else forward


# ----------------------------------------------------------------------------- the model


class CausalSelfAttention(nn.Module):
    """Att(h) = concat_j(softmax(Q_j K_j^T / sqrt(d / n_head) + M) V_j) W^O: per head, the plain
    `minigen.functional.attention` with M = `causal_mask`; run fused by `causal_self_attention`."""

    def __init__(self, c: GPTConfig) -> None:
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.n_head, self.dropout = c.n_head, c.dropout

    def forward(self, x: Tensor, cache: Any = None) -> Tensor:
        qkv = self.c_attn(x)  # (B, T, 3d): queries, keys and values of every head
        p = self.dropout if self.training else 0.0
        # each head: softmax(Q K^T / sqrt(hs) + M) V (F.attention), fused over the heads
        y = causal_self_attention(qkv, self.n_head, dropout=p, cache=cache)  # (B, T, d)
        return F.dropout(self.c_proj(y), p, self.training)


class MLP(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)
        self.dropout = c.dropout

    def forward(self, x: Tensor) -> Tensor:
        # W_2 GELU(W_1 x), GPT-2's tanh approximation of GELU
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4d)
        return F.dropout(self.c_proj(h), self.dropout, self.training)  # (B, T, d)


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = MLP(c)

    def forward(self, x: Tensor, cache: Any = None) -> Tensor:
        # a = h + Att(LN(h));  h' = a + MLP(LN(a))
        x = x + self.attn(self.ln_1(x), cache)  # (B, T, d)
        return x + self.mlp(self.ln_2(x))  # (B, T, d)


class GPT(nn.Module):
    """A GPT with GPT-2's initialisation: every weight N(0, 0.02), except the projections
    back into the residual stream (attn.c_proj, mlp.c_proj), N(0, 0.02 / sqrt(2 n_layer)),
    so the residual stream's variance does not grow with depth; biases 0, norms 1."""

    def __init__(self, config: GPTConfig) -> None:
        c = self.config = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation, drawn from the library's generator in parameter order."""
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # into the residual stream
                p.data[...] = rng.randn(*p.shape, dtype=p.dtype) * proj_std
            elif name.startswith("w") or name.endswith(("c_attn.weight", "c_fc.weight")):
                p.data[...] = rng.randn(*p.shape, dtype=p.dtype) * 0.02
            elif ".ln_" in name or name.startswith("ln_"):
                p.data[...] = 1.0 if name.endswith("weight") else 0.0
            else:  # the biases of the linear layers
                p.data[...] = 0.0

    def forward(self, idx: Any, cache: KVCache | None = None, last_only: bool = False) -> Tensor:
        """Logits of the next token: idx (B, T) integer ids -> (B, T, V), or (B, 1, V) with
        `last_only` (all that sampling needs). With a `cache` (inference only), idx holds the
        new tokens, placed after the cache's contents."""
        ids = backend.array_module(self.wte.weight.data).asarray(idx)
        if ids.ndim != 2:
            raise ValueError(f"GPT: ids must have shape (B, T), got shape {ids.shape}")
        start = 0 if cache is None else cache.length
        T, bs = ids.shape[1], self.config.block_size
        if start + T > bs:
            raise ValueError(
                f"GPT: positions {start}..{start + T - 1} exceed block_size={bs}; crop the context"
            )
        if cache is not None and is_grad_enabled():
            raise ValueError("GPT: the KV cache is for inference; call the model under no_grad()")
        # h^0_t = E[x_t] + P[t]
        x = embed_tokens(ids, self.wte.weight, self.wpe.weight, start)  # (B, T, d)
        x = F.dropout(x, self.config.dropout, self.training)
        for i, block in enumerate(self.h):
            x = block(x, None if cache is None else cache.layer(i))  # (B, T, d)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]  # (B, 1, d)
        # logits = LN(h^L) E^T, the head tied to the token embedding
        return tied_lm_head(self.ln_f(x), self.wte.weight)  # (B, T, V)

    def loss(self, idx: Any, targets: Any) -> Tensor:
        """The mean cross-entropy -log p(x_{t+1} | x_1..x_t) over every position."""
        logits = self(idx)  # (B, T, V)
        return F.cross_entropy(logits, targets)

    def attention_maps(self, idx: Any) -> list[Any]:
        """Every block's attention weights for ids (B, T): a list of (B, n_head, T, T) arrays
        (row t: how much position t attends to each position <= t)."""
        ids = backend.array_module(self.wte.weight.data).asarray(idx)
        maps = []
        with no_grad():
            x = embed_tokens(ids, self.wte.weight, self.wpe.weight)  # (B, T, d)
            for block in self.h:
                qkv = block.attn.c_attn(block.ln_1(x))  # (B, T, 3d)
                maps.append(attention_weights(qkv.data, self.config.n_head))
                x = block(x)
        return maps

    def new_cache(self, batch_size: int = 1) -> KVCache:
        c = self.config
        dtype = self.wte.weight.dtype
        return KVCache(c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head, dtype)

    def num_params(self, non_embedding: bool = False) -> int:
        return self.config.num_params(non_embedding)
