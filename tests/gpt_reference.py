"""A PyTorch GPT equal to minigen's, layer for layer and name for name (a test oracle and
the benchmark's peer; minigen never imports it).

Linear layers are Hugging Face's Conv1D: weight (in, out), y = x W + b, so a minigen state
dict copies in by name. Attention is PyTorch's fused `scaled_dot_product_attention` (what
nanoGPT uses), GELU its tanh approximation, as in GPT-2 and minigen.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Conv1D(nn.Module):
    def __init__(self, n_in: int, n_out: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.weight.shape[1])
        x2 = x.reshape(-1, x.shape[-1])
        y = x2 @ self.weight if self.bias is None else torch.addmm(self.bias, x2, self.weight)
        return y.view(shape)


class Attention(nn.Module):
    def __init__(self, d: int, n_head: int, bias: bool) -> None:
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = Conv1D(d, 3 * d, bias), Conv1D(d, d, bias), n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, d: int, bias: bool) -> None:
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(d, 4 * d, bias), Conv1D(4 * d, d, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, bias: bool) -> None:
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d, bias=bias), Attention(d, n_head, bias)
        self.ln_2, self.mlp = nn.LayerNorm(d, bias=bias), MLP(d, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TorchGPT(nn.Module):
    """The same model as minigen.text.GPT (dropout 0), from a GPTConfig."""

    def __init__(self, config) -> None:
        super().__init__()
        c = self.config = config
        self.wte, self.wpe = (
            nn.Embedding(c.vocab_size, c.n_embd),
            nn.Embedding(c.block_size, c.n_embd),
        )
        self.h = nn.ModuleList(Block(c.n_embd, c.n_head, c.bias) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))
            elif name.startswith("w"):
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1])
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # the head tied to the embedding

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    def load_numpy(self, state: dict[str, np.ndarray]) -> None:
        """Copy a minigen state dict in (names and shapes are the same)."""
        own = dict(self.named_parameters())
        assert set(own) == set(state), set(own) ^ set(state)
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(torch.from_numpy(np.asarray(state[k])))


def adamw(model: TorchGPT, lr: float, betas: tuple[float, float], weight_decay: float):
    """nanoGPT's optimizer: weight decay on matrices and embeddings, not on biases and norms."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
