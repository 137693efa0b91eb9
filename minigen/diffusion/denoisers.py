"""The denoiser of §7.2 for 2-D points: an MLP that predicts the noise in x_t.

Sampling by Eq. 7.1 needs a model f(x_t, t; w); following Ho et al. (2020) the
network predicts the noise eps that `add_noise` mixed into x_t,

    eps_hat = eps_theta(x_t, t),

from which the scheduler derives f (see `schedulers.py`). The same network serves
every timestep: t enters through a *sinusoidal embedding* (Vaswani et al., 2017,
used for t by Ho et al.), d/2 frequencies from 1 down to 1/10000,

    emb(t) = [sin(t w_0), ..., sin(t w_{d/2-1}), cos(t w_0), ..., cos(t w_{d/2-1})],
    w_i = 10000^(-i / (d/2)),

turned into a learned vector by a small MLP. The 2-D denoiser is a residual MLP:

    h_0 = x W_in,
    h_{k+1} = h_k + W_2 SiLU(W_1 SiLU(h_k + tau_k(emb(t)))),
    eps_hat = W_out SiLU(h_K),

each block k reading the time through its own projection tau_k. The U-Net for
images lives in `unet.py`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from minigen import backend, nn
from minigen import functional as F
from minigen.tensor import Tensor, get_default_dtype

__all__ = ["timestep_embedding", "TimeEmbedding", "MLPDenoiser"]


def timestep_embedding(t: Any, dim: int, max_period: float = 10000.0) -> np.ndarray:
    """Sinusoidal features of integer timesteps: t (B,) -> (B, dim), in the default dtype."""
    if dim < 2 or dim % 2:
        raise ValueError(f"the timestep embedding needs an even dim >= 2, got {dim}")
    t = np.asarray(backend.to_numpy(t), dtype=np.float64).reshape(-1)  # (B,)
    half = dim // 2
    # w_i = max_period^(-i / half),  i = 0 .. half-1
    freqs = np.exp(-math.log(max_period) * np.arange(half) / half)  # (half,)
    angles = t[:, None] * freqs[None, :]  # (B, half)
    # emb(t) = [sin(t w), cos(t w)]
    emb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # (B, dim)
    return backend.xp.asarray(emb.astype(get_default_dtype()))


class TimeEmbedding(nn.Module):
    """t -> MLP(emb(t)): sinusoidal features, Linear, SiLU, Linear; (B,) -> (B, out_dim)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        self.dim = dim
        self.fc1 = nn.Linear(dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, t: Any) -> Tensor:
        e = Tensor(timestep_embedding(t, self.dim))  # (B, dim)
        return self.fc2(F.silu(self.fc1(e)))  # (B, out_dim)


class _ResidualBlock(nn.Module):
    """h + W_2 SiLU(W_1 SiLU(h + tau(temb)))."""

    def __init__(self, hidden: int, temb_dim: int) -> None:
        self.time = nn.Linear(temb_dim, hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        # the block sees the time through its own projection: h + tau_k(emb(t))
        u = h + self.time(temb)  # (B, H)
        # h_{k+1} = h_k + W_2 SiLU(W_1 SiLU(u))
        return h + self.fc2(F.silu(self.fc1(F.silu(u))))  # (B, H)


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) for points in R^dim: x (B, dim), t (B,) ints -> eps_hat (B, dim).

    Args:
        dim: the dimension of the data (2 for the toys).
        hidden: the width H of the residual MLP.
        depth: the number of residual blocks.
        temb_dim: the size of the sinusoidal embedding of t.
    """

    kind = "mlp"

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, temb_dim: int = 32):
        self.config = {"kind": self.kind, "dim": dim, "hidden": hidden, "depth": depth,
                       "temb_dim": temb_dim}  # fmt: skip
        self.time_embed = TimeEmbedding(temb_dim, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Any, t: Any) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(x)
        dim = self.config["dim"]
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"MLPDenoiser: expected points of shape (B, {dim}), got {x.shape}")
        t = _timesteps(t, x.shape[0])
        temb = self.time_embed(t)  # (B, H)
        h = self.inp(x)  # (B, H)
        for block in self.blocks:
            h = block(h, temb)  # (B, H)
        return self.out(F.silu(h))  # (B, dim)


def _timesteps(t: Any, batch: int) -> np.ndarray:
    """One integer timestep per sample, (B,): a scalar t is repeated over the batch."""
    arr = np.asarray(backend.to_numpy(t))
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"timesteps must be integers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        return np.full(batch, int(arr), dtype=np.int64)
    if arr.shape != (batch,):
        raise ValueError(
            f"timesteps must be a scalar or of shape ({batch},) for a batch of {batch},"
            f" got shape {arr.shape}"
        )
    return arr
