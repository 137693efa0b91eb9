"""The denoiser of §7.2 for images: a small U-Net (Ronneberger et al., 2015; Ho et al., 2020).

eps_theta(x_t, t) maps a noisy image (B, C, H, W) and its timestep to the noise in
it, an image of the same shape. The network goes down in resolution (to see the
whole digit), then back up, and *skip connections* hand each level's features
straight across to the way up (so fine detail need not squeeze through the
bottleneck):

    8x8:  in-conv -> ResBlock ------------------------------ concat -> ResBlock -> out-conv
                       | down (stride-2 conv)                   ^ up (nearest x2)
    4x4:             ResBlock ----------------- concat -> ResBlock
                       | down                     ^ up
    2x2:             ResBlock -> ResBlock (middle)

(drawn with three levels; the default for the 8x8 digits has two, 8x8 and 4x4). The
way up doubles the resolution by copying each pixel into a 2x2 block; the block
after the concatenation mixes the copies with the skip's detail. Every residual
block reads the time embedding of `denoisers.TimeEmbedding`:

    h = Conv(SiLU(GroupNorm(x))) + tau(SiLU(temb))      tau: Linear, broadcast over pixels
    ResBlock(x, t) = skip(x) + Conv(SiLU(GroupNorm(h)))  skip: identity or a 1x1 conv

GroupNorm normalises groups of channels per image (no dependence on the batch),
SiLU(x) = x sigmoid(x).

Conditioning (GLIDE, Nichol et al. 2021): with `cond_dim` > 0 the network also reads a
vector c (B, cond_dim), e.g. a caption's embedding, projected by a small MLP and added to
the time embedding, so every residual block sees both:

    temb = MLP_t(emb(t)) + MLP_c(c)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from minigen import functional as F
from minigen import nn
from minigen.diffusion.denoisers import TimeEmbedding, _timesteps
from minigen.shape_ops import concatenate
from minigen.tensor import Tensor

__all__ = ["ResBlock", "UNet"]


def _norm_silu(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """SiLU(GroupNorm(x)) as one op: on "numba" one fused kernel (its dispatch row), on
    "numpy" the same arithmetic as `F.silu(norm(x))`."""
    return F.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


class ResBlock(nn.Module):
    """(B, c_in, H, W), temb (B, temb_dim) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int) -> None:
        self.norm1 = nn.GroupNorm.for_channels(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(temb_dim, c_out)
        self.norm2 = nn.GroupNorm.for_channels(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        B, c_out = x.shape[0], self.time.weight.shape[1]
        h = self.conv1(_norm_silu(self.norm1, x))  # (B, c_out, H, W)
        # add the time: tau(SiLU(temb)), one value per channel, broadcast over the pixels
        h = h + self.time(F.silu(temb)).reshape(B, c_out, 1, 1)  # (B, c_out, H, W)
        h = self.conv2(_norm_silu(self.norm2, h))  # (B, c_out, H, W)
        # ResBlock(x, t) = skip(x) + h
        return (self.skip(x) if self.skip is not None else x) + h  # (B, c_out, H, W)


class _Down(nn.Module):
    """Halve the resolution: a 3x3 convolution with stride 2, (B, c, H, W) -> (B, c, H/2, W/2)."""

    def __init__(self, c: int) -> None:
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """eps_theta(x_t, t) for images: x (B, C, S, S), t (B,) ints -> eps_hat (B, C, S, S).

    Args:
        image_size: the side S of the (square) images it is trained on; other sizes are
            refused (the model never saw them).
        in_channels: C (1 for the grey digits).
        base_channels: the width of the first level.
        channel_mults: one width multiplier per level; each level after the first halves
            the resolution, so S must be divisible by 2^(levels - 1).
        temb_dim: the size of the sinusoidal embedding of t (its MLP outputs 4x that).
        cond_dim: the size of a conditioning vector c read with t (0: unconditional).
    """

    kind = "unet"

    def __init__(
        self,
        image_size: int = 8,
        in_channels: int = 1,
        base_channels: int = 16,
        channel_mults: Sequence[int] = (1, 2),
        temb_dim: int | None = None,
        cond_dim: int = 0,
    ) -> None:
        mults = [int(m) for m in channel_mults]
        if not mults or image_size % 2 ** (len(mults) - 1):
            raise ValueError(
                f"UNet: image size {image_size} cannot be halved {len(mults) - 1} times"
                f" (channel_mults={mults})"
            )
        temb_dim = temb_dim or base_channels
        self.config = {
            "kind": self.kind, "image_size": image_size, "in_channels": in_channels,
            "base_channels": base_channels, "channel_mults": mults, "temb_dim": temb_dim,
        }  # fmt: skip
        if cond_dim:
            self.config["cond_dim"] = int(cond_dim)
        widths = [base_channels * m for m in mults]  # channels of each level
        t_out = 4 * base_channels
        self.time_embed = TimeEmbedding(temb_dim, t_out)
        if cond_dim:  # MLP_c: Linear, SiLU, Linear
            self.cond_embed = nn.Sequential(
                nn.Linear(cond_dim, t_out), nn.SiLU(), nn.Linear(t_out, t_out)
            )
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        downs, downsamples, c = [], [], base_channels
        for i, w in enumerate(widths):
            downs.append(ResBlock(c, w, t_out))
            c = w
            if i < len(widths) - 1:
                downsamples.append(_Down(c))
        self.down = nn.ModuleList(downs)
        self.downsample = nn.ModuleList(downsamples)
        self.mid = ResBlock(c, c, t_out)
        ups = []
        for i in reversed(range(len(widths))):  # concat the level's skip, then a block
            ups.append(ResBlock(c + widths[i], widths[i], t_out))
            c = widths[i]
        self.up = nn.ModuleList(ups)
        self.out_norm = nn.GroupNorm.for_channels(c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)

    def forward(self, x: Any, t: Any, cond: Any = None) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(x)
        S, C = self.config["image_size"], self.config["in_channels"]
        if x.ndim != 4 or x.shape[1:] != (C, S, S):
            raise ValueError(
                f"UNet: trained on images of shape ({C}, {S}, {S}) (channels, height, width);"
                f" got a batch of shape {x.shape}"
            )
        temb = self.time_embed(_timesteps(t, x.shape[0]))  # (B, 4 base)
        D = self.config.get("cond_dim", 0)
        if (cond is None) != (D == 0):
            raise ValueError(
                f"UNet: built with cond_dim={D}, " + ("needs" if D else "takes no") + " cond"
            )
        if D:
            cond = cond if isinstance(cond, Tensor) else Tensor(cond)
            if cond.shape != (x.shape[0], D):
                raise ValueError(
                    f"UNet: cond must have shape ({x.shape[0]}, {D}), got {cond.shape}"
                )
            # temb = MLP_t(emb(t)) + MLP_c(c)
            temb = temb + self.cond_embed(cond)  # (B, 4 base)
        h = self.inp(x)  # (B, base, S, S)
        skips = []
        for i, block in enumerate(self.down):  # level i has resolution S / 2^i
            h = block(h, temb)  # (B, w_i, S_i, S_i)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, w_i, S_i / 2, S_i / 2)
        h = self.mid(h, temb)  # (B, w_last, S_last, S_last)
        for j, block in enumerate(self.up):  # back up: the skips in reverse order
            # skip connection: the features of the same level on the way down
            h = concatenate([h, skips.pop()], axis=1)  # (B, c + w_i, S_i, S_i)
            h = block(h, temb)  # (B, w_i, S_i, S_i)
            if j < len(self.up) - 1:  # up: nearest-neighbour, each pixel into a 2x2 block
                h = F.upsample_nearest2d(h, 2)  # (B, w_i, 2 S_i, 2 S_i)
        return self.out(_norm_silu(self.out_norm, h))  # (B, C, S, S)
