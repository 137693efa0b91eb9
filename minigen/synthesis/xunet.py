"""The caption-conditioned U-Net of classifier-free guidance: cross-attention and FiLM (§7.2).

A caption reaches the denoiser eps_theta(x_t, t, c) two ways (GLIDE, Nichol et al. 2021;
Imagen; Stable Diffusion):

- **pooled**, through FiLM: the caption's vector g(c) (the text encoder's state at <eos>) is
  added to the time embedding, and every residual block scales and shifts its normalised
  features by it (the adaptive group norm of Dhariwal & Nichol 2021):

      temb = MLP_t(emb(t)) + MLP_c(g(c))
      h = conv1(SiLU(GN(x)))
      h = GN(h) (1 + gamma(temb)) + beta(temb)          gamma, beta: one per channel
      ResBlock(x) = skip(x) + conv2(SiLU(h))

- **per token**, through cross-attention: at the coarse levels (8x8, 4x4 and the middle) each
  pixel's features query the caption's token states s_1 .. s_L (keys and values projected from
  them), so a pixel can read "red" where it draws the circle and "above" where it places it:

      Q = GN(h) W_q   (HW, C),    K = S W_k,  V = S W_v   (L, C)
      h <- h + W_o softmax(Q K^T / sqrt(d) + M) V        (per head, d = C / heads)

  M is the padding mask: 0 on the caption's tokens, -inf on the <pad> after <eos>, so padded
  positions never change the output. W_o starts at zero: each block starts as the identity.

- **where**, through a cell map (optional, `cell_channels` > 0): the caption encoder also
  says what the caption puts in each cell of the scenes' 3 x 3 grid, a vector per cell
  (`caption_unet.CaptionUNet`), and the map (B, 9, M) is painted over its cells' pixels and added to
  the first features:

      h = conv_in(x_t) + U(map W_cell)          U: a cell's value on each of its pixels

  A convolution sees only a few pixels around it and cannot tell on its own whether it stands
  left or right of the image's middle; the map tells it what the caption puts there.

The token states come from `caption_unet.CaptionUNet.embed` as a `Caption`: they begin with one
learned *null* token, always visible, so the dropped caption of classifier-free guidance is
"attend to the null token only" (every caption token masked) and a pooled null vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minigen import functional as F
from minigen import nn
from minigen.diffusion import timestep_embedding
from minigen.shape_ops import concatenate
from minigen.synthesis.scenes import GRID, layout
from minigen.tensor import Tensor

__all__ = ["Caption", "FiLMResBlock", "CrossAttention", "CrossAttnUNet", "cell_painter"]


@dataclass
class Caption:
    """A batch of captions as the denoiser reads them.

    pooled: (B, E) g(c) per caption (the null vector for a dropped one);
    states: (B, L, D) token states, position 0 the null token;
    mask:   (B, L) bool, True where a pixel may attend (the null token and the real tokens).
    cells:  (B, GRID * GRID, M) what the caption puts in each cell (zero for a dropped
            caption), or None for a U-Net without a cell map;
    cell_logits: (B, L', GRID * GRID + 1) each token's scores of where its object is (the
            encoder's training reads them), or None.
    """

    pooled: Tensor
    states: Tensor
    mask: np.ndarray
    cells: Tensor | None = None
    cell_logits: Tensor | None = None

    def __len__(self) -> int:
        return self.pooled.shape[0]

    @staticmethod
    def concat(parts: Sequence[Caption]) -> Caption:
        """Stack captions along the batch (their token lengths must agree)."""
        lengths = {p.states.shape[1] for p in parts}
        if len(lengths) != 1:
            raise ValueError(f"Caption.concat: token states of different lengths {lengths}")
        has_cells = {p.cells is not None for p in parts}
        if len(has_cells) != 1:
            raise ValueError("Caption.concat: some captions have a cell map and some do not")
        cells = None
        if has_cells.pop():
            cells = concatenate([p.cells for p in parts], axis=0)  # (sum B, GRID^2, M)
        return Caption(
            concatenate([p.pooled for p in parts], axis=0),  # (sum B, E)
            concatenate([p.states for p in parts], axis=0),  # (sum B, L, D)
            np.concatenate([p.mask for p in parts]),  # (sum B, L)
            cells,
        )


def cell_painter(size: int) -> np.ndarray:
    """U (GRID * GRID, size * size): U[c, p] = 1 where pixel p lies in grid cell c (row-major,
    `scenes.layout`); the margin outside the grid belongs to no cell."""
    lay = layout(size)
    idx = np.arange(size)
    cell_of = (idx - lay.origin) // lay.cell  # (size,) the row (or column) of cell
    cell_of[(idx < lay.origin) | (cell_of >= GRID)] = -1
    r, k = np.meshgrid(cell_of, cell_of, indexing="ij")  # (size, size) each
    inside = (r >= 0) & (k >= 0)
    U = np.zeros((GRID * GRID, size * size), dtype=np.float32)
    U[(r * GRID + k)[inside], np.flatnonzero(inside)] = 1.0
    return U


# diffusion's ResBlock with FiLM in place of the added time, written out whole so that the two
# read side by side (their weight names are the shipped checkpoints'): alike on purpose
class FiLMResBlock(nn.Module):
    """(B, c_in, H, W), temb (B, temb_dim) -> (B, c_out, H, W), FiLM by temb after GN."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int) -> None:
        self.norm1 = nn.GroupNorm.for_channels(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(temb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm.for_channels(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        B, c_out = x.shape[0], self.conv1.weight.shape[0]
        n1 = self.norm1  # SiLU(GroupNorm(x)) as one op (a fused kernel on "numba")
        a = F.group_norm_silu(x, n1.num_groups, n1.weight, n1.bias, n1.eps)  # (B, c_in, H, W)
        h = self.conv1(a)  # (B, c_out, H, W)
        gb = self.film(F.silu(temb)).reshape(B, 2, c_out, 1, 1)  # (B, 2, c_out, 1, 1)
        # FiLM: GN(h) (1 + gamma) + beta, one gamma and beta per channel
        h = self.norm2(h) * (gb[:, 0] + 1.0) + gb[:, 1]  # (B, c_out, H, W)
        h = self.conv2(F.silu(h))  # (B, c_out, H, W)
        # ResBlock(x) = skip(x) + h
        return (self.skip(x) if self.skip is not None else x) + h  # (B, c_out, H, W)


class CrossAttention(nn.Module):
    """h (B, C, H, W) reads token states (B, L, D) under a mask (B, L): h + W_o Att(Q, K, V)."""

    def __init__(self, channels: int, text_dim: int, heads: int) -> None:
        if channels % heads:
            raise ValueError(f"CrossAttention: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm.for_channels(channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(text_dim, 2 * channels)
        self.out = nn.Linear(channels, channels)
        self.out.weight.data[:] = 0.0  # W_o = 0: the block starts as the identity
        self.out.bias.data[:] = 0.0

    def forward(self, h: Tensor, states: Tensor, mask: np.ndarray) -> Tensor:
        B, C, H, W = h.shape
        L, nh = states.shape[1], self.heads
        x = self.norm(h).reshape(B, C, H * W).transpose(0, 2, 1)  # (B, HW, C)
        q = self.q(x).reshape(B, H * W, nh, C // nh).transpose(0, 2, 1, 3)  # (B, nh, HW, d)
        kv = self.kv(states).reshape(B, L, 2, nh, C // nh).transpose(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]  # (B, nh, L, d) each
        # Att = softmax(Q K^T / sqrt(d) + M) V, M = -inf on the masked (padding) tokens
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        a = a.transpose(0, 2, 1, 3).reshape(B, H * W, C)  # (B, HW, C)
        # h + W_o Att, back to an image
        return h + self.out(a).transpose(0, 2, 1).reshape(B, C, H, W)  # (B, C, H, W)


class CrossAttnUNet(nn.Module):
    """eps_theta(x_t, t, c): x (B, C, S, S), t (B,) ints, c a `Caption` -> (B, C, S, S).

    Args:
        image_size, in_channels, base_channels, channel_mults: as `minigen.diffusion.UNet`.
        cond_dim: E, the size of the pooled caption vector.
        text_dim: D, the size of a token state.
        heads: attention heads of every cross-attention block.
        attn_levels: the levels (0 = full resolution) whose blocks are followed by a
            cross-attention block; the middle block always is.
        cell_channels: M, the size of a cell's entry in the caption's cell map (0: no map).
    """

    kind = "xattn_unet"

    def __init__(
        self,
        image_size: int = 16,
        in_channels: int = 3,
        base_channels: int = 16,
        channel_mults: Sequence[int] = (1, 2, 2),
        cond_dim: int = 64,
        text_dim: int = 64,
        heads: int = 4,
        attn_levels: Sequence[int] = (1, 2),
        cell_channels: int = 0,
    ) -> None:
        mults = [int(m) for m in channel_mults]
        if not mults or image_size % 2 ** (len(mults) - 1):
            raise ValueError(
                f"CrossAttnUNet: image size {image_size} cannot be halved {len(mults) - 1} times"
                f" (channel_mults={mults})"
            )
        levels = sorted({int(a) for a in attn_levels})
        self.config = {
            "kind": self.kind, "image_size": image_size, "in_channels": in_channels,
            "base_channels": base_channels, "channel_mults": mults, "cond_dim": cond_dim,
            "text_dim": text_dim, "heads": heads, "attn_levels": levels,
        }  # fmt: skip
        if cell_channels:  # written only when used: older checkpoints have no such key
            self.config["cell_channels"] = int(cell_channels)
        widths = [base_channels * m for m in mults]
        t_out = 4 * base_channels
        # MLP_t is the function of diffusion's TimeEmbedding (Linear, SiLU, Linear), written out on
        # purpose: a TimeEmbedding would name its weights time.fc1.* and time.fc2.*, not the
        # time_fc1.* and time_fc2.* the shipped conditional checkpoint holds (same values)
        self.time_fc1, self.time_fc2 = nn.Linear(base_channels, t_out), nn.Linear(t_out, t_out)
        self.cond_fc1, self.cond_fc2 = nn.Linear(cond_dim, t_out), nn.Linear(t_out, t_out)
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.cell_in = nn.Linear(cell_channels, base_channels) if cell_channels else None
        self._painter = cell_painter(image_size) if cell_channels else None

        def attn(level: int, c: int) -> CrossAttention | None:
            return CrossAttention(c, text_dim, heads) if level in levels else None

        c = base_channels
        downs, down_attn, downsample, up, up_attn = [], [], [], [], []
        for i, w in enumerate(widths):
            downs.append(FiLMResBlock(c, w, t_out))
            down_attn.append(attn(i, w))
            c = w
            if i < len(widths) - 1:  # halve: a 3x3 convolution with stride 2
                downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = FiLMResBlock(c, c, t_out)
        self.mid_attn = CrossAttention(c, text_dim, heads)
        for i in reversed(range(len(widths))):
            up.append(FiLMResBlock(c + widths[i], widths[i], t_out))
            up_attn.append(attn(i, widths[i]))
            c = widths[i]
        self.down, self.up, self.downsample = (nn.ModuleList(m) for m in (downs, up, downsample))
        # ModuleList holds modules only: the levels without attention are left out
        self.down_attn = nn.ModuleList(a for a in down_attn if a is not None)
        self.up_attn = nn.ModuleList(a for a in up_attn if a is not None)
        self._down_has = [a is not None for a in down_attn]
        self._up_has = [a is not None for a in up_attn]
        self.out_norm = nn.GroupNorm.for_channels(c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)

    def forward(self, x: Any, t: Any, cond: Caption) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(x)
        cfg = self.config
        S, C = cfg["image_size"], cfg["in_channels"]
        if x.ndim != 4 or x.shape[1:] != (C, S, S):
            raise ValueError(
                f"CrossAttnUNet: trained on images of shape ({C}, {S}, {S}); got {x.shape}"
            )
        B = x.shape[0]
        if not isinstance(cond, Caption):
            raise TypeError(f"CrossAttnUNet: cond must be a Caption, got {type(cond).__name__}")
        M = cfg.get("cell_channels", 0)
        if M and (cond.cells is None or cond.cells.shape != (B, GRID * GRID, M)):
            got = None if cond.cells is None else cond.cells.shape
            raise ValueError(f"CrossAttnUNet: needs a cell map (B, {GRID * GRID}, {M}), got {got}")
        want = (B, cfg["cond_dim"]), (B, cfg["text_dim"]), (B,)
        got = cond.pooled.shape, (cond.states.shape[0], cond.states.shape[2]), cond.mask.shape[:1]
        if got != want or cond.mask.shape != cond.states.shape[:2]:
            raise ValueError(
                f"CrossAttnUNet: a batch of {B} images needs pooled (B, {cfg['cond_dim']}), "
                f"states (B, L, {cfg['text_dim']}), mask (B, L); got pooled "
                f"{cond.pooled.shape}, states {cond.states.shape}, mask {cond.mask.shape}"
            )
        t = np.asarray(t)
        t = np.full(B, int(t)) if t.ndim == 0 else t  # (B,)
        e = Tensor(timestep_embedding(t, cfg["base_channels"]))  # (B, base)
        # temb = MLP_t(emb(t)) + MLP_c(g(c))
        temb = self.time_fc2(F.silu(self.time_fc1(e)))  # (B, 4 base)
        temb = temb + self.cond_fc2(F.silu(self.cond_fc1(cond.pooled)))  # (B, 4 base)
        s, m = cond.states, cond.mask
        down_attn, up_attn = iter(self.down_attn), iter(self.up_attn)
        h = self.inp(x)  # (B, base, S, S)
        if self.cell_in is not None:
            c = self.cell_in(cond.cells).transpose(0, 2, 1)  # (B, base, GRID^2)
            # h = conv_in(x_t) + U(map W_cell): each cell's vector on each of its pixels
            h = h + (c @ self._painter).reshape(B, -1, S, S)  # (B, base, S, S)
        skips = []
        for i, block in enumerate(self.down):  # level i has resolution S / 2^i
            h = block(h, temb)  # (B, w_i, S_i, S_i)
            if self._down_has[i]:
                h = next(down_attn)(h, s, m)  # (B, w_i, S_i, S_i)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, w_i, S_i / 2, S_i / 2)
        h = self.mid_attn(self.mid(h, temb), s, m)  # (B, w_last, S_last, S_last)
        for j, block in enumerate(self.up):
            # skip connection: the features of the same level on the way down
            h = block(concatenate([h, skips.pop()], axis=1), temb)  # (B, w_i, S_i, S_i)
            if self._up_has[j]:
                h = next(up_attn)(h, s, m)  # (B, w_i, S_i, S_i)
            if j < len(self.up) - 1:  # up: nearest-neighbour, each pixel into a 2x2 block
                h = F.upsample_nearest2d(h, 2)  # (B, w_i, 2 S_i, 2 S_i)
        n = self.out_norm  # SiLU(GroupNorm(h)) as one op
        return self.out(F.group_norm_silu(h, n.num_groups, n.weight, n.bias, n.eps))  # (B, C, S, S)
