"""CLIP (Radford et al. 2021), small and noise-aware as in GLIDE (Nichol et al. 2021).

Two encoders map an image and a caption into one space of unit vectors:

    z_img = f(x_t, t) / ||f(x_t, t)||,        z_txt = g(c) / ||g(c)||,

f a small convolutional network over (3, 16, 16) scenes that also reads the diffusion
timestep t (noise-aware: it is trained on x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with
t uniform, so it can still read a half-formed sample), g a small transformer over caption
tokens. The matching score of an image and a caption is the cosine z_img . z_txt.

Training (`contrastive_loss`) makes the true pairs of a batch of B pairs score highest: with a
learned log-temperature s (initialised at log(1 / 0.07), the scale e^s capped at 100),

    logits_ij = e^s z_img_i . z_txt_j                                      (B, B)
    L = 1/2 [ CE(logits, targets) + CE(logits^T, targets^T) ],

a cross-entropy over captions for each image and over images for each caption. With
identical captions in a batch (frequent with this small grammar: "a red circle" describes many
scenes) the target of image i is spread evenly over every caption that means the same as its
own (`positives`): "multi-positive" targets. Without duplicates they are the identity.

The guidance gradient that uses this model is in `guidance.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from minigen import functional as F
from minigen import nn
from minigen.synthesis.captions import (
    BOS,
    EOS,
    MAX_LEN,
    VOCAB,
    Exists,
    Relation,
    encode_batch,
    parse_caption,
)
from minigen.tensor import Tensor

__all__ = [
    "CLIPConfig",
    "CLIP",
    "TextEncoder",
    "ImageEncoder",
    "timestep_embedding",
    "contrastive_loss",
    "caption_key",
    "positives",
]


@dataclass(frozen=True)
class CLIPConfig:
    """Sizes of both encoders and the noise the image encoder is trained on (JSON-able)."""

    embed_dim: int = 64  # the shared space
    # text encoder: a transformer over caption tokens
    vocab_size: int = len(VOCAB)
    max_len: int = MAX_LEN
    width: int = 64
    heads: int = 4
    layers: int = 2
    causal: bool = True  # False: every token reads the whole caption (its padding masked)
    # image encoder: one 3x3 conv per stage (stride 1, then 2), then a 2-layer head
    image_size: int = 16
    channels: tuple[int, ...] = (16, 32, 64, 64)
    strides: tuple[int, ...] = (1, 2, 2, 1)
    groups: int = 8
    head_width: int = 128
    time_dim: int = 32  # sinusoidal embedding of t
    # the diffusion the image encoder is noise-aware for, and the pixel range of x_0
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    value_range: tuple[float, float] = (-1.0, 1.0)
    init_temperature: float = 0.07  # e^s starts at 1 / 0.07
    max_scale: float = 100.0  # e^s is capped here

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "value_range", tuple(float(v) for v in self.value_range))
        if len(self.channels) != len(self.strides) or not self.channels:
            raise ValueError(
                f"CLIPConfig: channels {self.channels} and strides {self.strides} need one "
                "entry per stage"
            )
        if self.width % self.heads:
            raise ValueError(
                f"CLIPConfig: width {self.width} does not split into {self.heads} heads"
            )
        if any(c % self.groups for c in self.channels):
            raise ValueError(
                f"CLIPConfig: channels {self.channels} do not split into {self.groups} groups"
            )
        if self.time_dim % 2:
            raise ValueError(f"CLIPConfig: time_dim must be even, got {self.time_dim}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"CLIPConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @property
    def feature_size(self) -> int:
        """Side of the last feature map: each stride-s conv (padding 1) maps n to ceil(n / s)."""
        n = self.image_size
        for s in self.strides:
            n = -(-n // s)
        return n


def _l2_normalize(z: Tensor, eps: float = 1e-12) -> Tensor:
    # z / ||z||, over the last axis
    return z / ((z * z).sum(axis=-1, keepdims=True) + eps).sqrt()  # (B, E)


# ----------------------------------------------------------------------------- text encoder


class Block(nn.Module):
    """A pre-LayerNorm transformer block with causal self-attention (as in CLIP's text tower):
    h <- h + Att(LN(h)),  h <- h + MLP(LN(h)).  (A GPT block of minigen.text may replace it.)
    With `causal` False every token attends to every token that `mask` (B, L) shows."""

    def __init__(self, width: int, heads: int, causal: bool = True) -> None:
        self.heads, self.causal = heads, causal
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, h: Tensor, mask: np.ndarray | None = None) -> Tensor:
        B, L, D = h.shape
        nh = self.heads
        qkv = self.qkv(self.ln1(h)).reshape(B, L, 3, nh, D // nh).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nh, L, D/nh) each
        # Att(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V, M masks the later tokens (causal)
        # or the padding (not causal)
        m = None if self.causal or mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, attn_mask=m)
        h = h + self.proj(a.transpose(0, 2, 1, 3).reshape(B, L, D))  # (B, L, D)
        return h + self.out(F.gelu(self.fc(self.ln2(h))))  # (B, L, D)


class TextEncoder(nn.Module):
    """Tokens (B, L) -> unit vectors (B, E): embeddings, causal blocks, the state at <eos>."""

    def __init__(self, cfg: CLIPConfig) -> None:
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Embedding(cfg.max_len, cfg.width)
        for emb in (self.tok, self.pos):  # CLIP's init: N(0, 0.02^2) and N(0, 0.01^2)
            emb.weight.data *= 0.02 if emb is self.tok else 0.01
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.causal) for _ in range(cfg.layers)
        )
        self.ln_f = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)

    def states(self, tokens: Any) -> tuple[Tensor, np.ndarray]:
        """Every token's final state (B, L', D), L' up to the batch's last <eos>, and the
        position of each row's <eos> (B,)."""
        ids, eos = check_tokens(tokens, self.cfg)  # (B, L), (B,)
        # tokens after the last <eos> reach no state of a real token (causal, or masked): drop them
        ids = ids[:, : int(eos.max()) + 1]
        visible = np.arange(ids.shape[1])[None, :] <= eos[:, None]  # (B, L'): <bos> .. <eos>
        h = self.tok(ids) + self.pos(np.arange(ids.shape[1]))  # (B, L', D)
        for block in self.blocks:
            h = block(h, visible)
        return self.ln_f(h), eos  # (B, L', D), (B,)

    def embed(self, h: Tensor, eos: np.ndarray) -> Tensor:
        """g(c) (B, E) from the states of `states`: the state at <eos>, projected, unit length."""
        pooled = h[np.arange(h.shape[0]), eos]  # (B, D): the state at <eos> has read it all
        return _l2_normalize(self.proj(pooled))  # (B, E)

    def forward(self, tokens: Any) -> Tensor:
        return self.embed(*self.states(tokens))  # (B, E)


def check_tokens(tokens: Any, cfg: CLIPConfig) -> tuple[np.ndarray, np.ndarray]:
    """Token ids as a (B, L) int array and the position of each row's first <eos>, checked."""
    ids = np.asarray(tokens.data if isinstance(tokens, Tensor) else tokens)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"CLIP: text tokens must have shape (B, L), got {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"CLIP: text tokens must be integer ids, got dtype {ids.dtype}")
    if ids.shape[1] > cfg.max_len:
        raise ValueError(
            f"CLIP: text tokens of length {ids.shape[1]} exceed the text encoder's "
            f"max_len={cfg.max_len} (it has no position embedding beyond)"
        )
    bad = (ids < 0) | (ids >= cfg.vocab_size)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"CLIP: token id {ids[i, j]} (row {i}, position {j}) was never seen by the text "
            f"encoder: its vocabulary has {cfg.vocab_size} ids"
        )
    has_eos = (ids == EOS).any(axis=1)
    if not has_eos.all():
        raise ValueError(f"CLIP: text row {int(np.argmin(has_eos))} has no <eos> token")
    eos = (ids == EOS).argmax(axis=1)  # (B,) the first <eos>
    if (eos < 2).any() or (ids[:, 0] != BOS).any():
        i = int(np.flatnonzero((eos < 2) | (ids[:, 0] != BOS))[0])
        raise ValueError(
            f"CLIP: text row {i} is an empty caption (tokens {ids[i, :3].tolist()}...): "
            "a caption is <bos>, at least one word, <eos>"
        )
    return ids, eos


# ----------------------------------------------------------------------------- image encoder


def timestep_embedding(t: Any, dim: int) -> np.ndarray:
    """Sinusoidal embedding of timesteps (B,) -> (B, dim), float64:
    emb(t) = [sin(t w_0), ..., sin(t w_{d/2-1}), cos(t w_0), ...],  w_i = 10000^(-2i/d)."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)  # (B,)
    half = dim // 2
    # w_i = 10000^(-i / half)
    w = np.exp(-math.log(10000.0) * np.arange(half) / half)  # (dim/2,)
    arg = t[:, None] * w[None, :]  # (B, dim/2)
    return np.concatenate([np.sin(arg), np.cos(arg)], axis=1)  # (B, dim)


class ImageEncoder(nn.Module):
    """Images (B, 3, H, W) and timesteps (B,) -> unit vectors (B, E).

    Each stage: h <- SiLU(GN(conv(h)) (1 + gamma(t)) + beta(t)), FiLM by the embedded
    timestep (the adaptive group norm of Dhariwal & Nichol 2021), then the last feature map is
    flattened (positions matter: "left of", "above") into a two-layer head."""

    def __init__(self, cfg: CLIPConfig) -> None:
        self.cfg = cfg
        td = 2 * cfg.time_dim
        self.time1, self.time2 = nn.Linear(cfg.time_dim, td), nn.Linear(td, td)
        convs, norms, films, c_in = [], [], [], 3
        for c, s in zip(cfg.channels, cfg.strides, strict=True):
            convs.append(nn.Conv2d(c_in, c, 3, stride=s, padding=1))
            norms.append(nn.GroupNorm(cfg.groups, c))
            films.append(nn.Linear(td, 2 * c))
            c_in = c
        self.convs, self.norms, self.films = (nn.ModuleList(m) for m in (convs, norms, films))
        n = cfg.feature_size
        self.fc1 = nn.Linear(c_in * n * n, cfg.head_width)
        self.fc2 = nn.Linear(cfg.head_width, cfg.embed_dim)

    def forward(self, x: Any, t: Any) -> Tensor:
        x, t = check_images(x, t, self.cfg)  # (B, 3, H, W), (B,)
        dt = self.fc1.weight.dtype
        temb = Tensor(timestep_embedding(t, self.cfg.time_dim), dtype=dt)  # (B, time_dim)
        temb = F.silu(self.time2(F.silu(self.time1(temb))))  # (B, 2 time_dim)
        h = x
        for conv, norm, film in zip(self.convs, self.norms, self.films, strict=True):
            h = norm(conv(h))  # (B, C, H', W')
            C = h.shape[1]
            gb = film(temb).reshape(-1, 2, C, 1, 1)  # (B, 2, C, 1, 1)
            # FiLM: h (1 + gamma(t)) + beta(t)
            h = F.silu(h * (gb[:, 0] + 1.0) + gb[:, 1])  # (B, C, H', W')
        h = h.reshape(h.shape[0], -1)  # (B, C n n)
        return _l2_normalize(self.fc2(F.silu(self.fc1(h))))  # (B, E)


def check_images(x: Any, t: Any, cfg: CLIPConfig) -> tuple[Tensor, np.ndarray]:
    """Images as a (B, 3, S, S) tensor of the size the model was trained for, and t as (B,)."""
    if not isinstance(x, Tensor):
        x = Tensor(np.asarray(x))
    S = cfg.image_size
    if x.ndim == 3:
        x = x.reshape(1, *x.shape)
    if x.ndim != 4 or x.shape[1:] != (3, S, S):
        raise ValueError(
            f"CLIP: the image encoder was trained on images of shape (B, 3, {S}, {S}), "
            f"got {x.shape}"
        )
    tt = np.asarray(t.data if isinstance(t, Tensor) else t)
    if tt.dtype.kind not in "iu":
        raise ValueError(f"CLIP: timesteps must be integers, got dtype {tt.dtype}")
    if tt.ndim == 0:
        tt = np.full(x.shape[0], int(tt))
    if tt.shape != (x.shape[0],):
        raise ValueError(
            f"CLIP: timesteps of shape {tt.shape} do not fit images of shape {x.shape} "
            f"(need one int, or shape ({x.shape[0]},))"
        )
    T = cfg.num_train_timesteps
    if tt.size and (tt.min() < 0 or tt.max() >= T):
        raise ValueError(f"CLIP: timesteps must lie in 0 .. {T - 1}, got {tt.min()} .. {tt.max()}")
    return x, tt


# ----------------------------------------------------------------------------- CLIP


class CLIP(nn.Module):
    """The two encoders and the learned log-temperature s (a scalar parameter)."""

    def __init__(self, cfg: CLIPConfig | None = None) -> None:
        self.config = cfg = cfg or CLIPConfig()
        self.text = TextEncoder(cfg)
        self.image = ImageEncoder(cfg)
        dt = self.text.proj.weight.dtype
        # s_0 = log(1 / 0.07); shape (1,), not (): safetensors files keep 1-D arrays exactly
        self.log_scale = nn.Parameter(np.full(1, math.log(1 / cfg.init_temperature), dtype=dt))

    def encode_text(self, captions: Any) -> Tensor:
        """Captions (a str, a list of str, or token ids (B, L)) -> (B, E) unit vectors."""
        if isinstance(captions, str):
            captions = [captions]
        if isinstance(captions, list | tuple) and captions and isinstance(captions[0], str):
            captions = encode_batch(captions, self.config.max_len)
        return self.text(captions)

    def encode_image(self, x: Any, t: Any = 0) -> Tensor:
        """Images x_t (B, 3, H, W) at timesteps t (int or (B,)) -> (B, E) unit vectors."""
        return self.image(x, t)

    def scale(self) -> Tensor:
        # e^s, capped: min(e^s, 100)
        return self.log_scale.clip(hi=math.log(self.config.max_scale)).exp()

    def forward(self, x: Any, t: Any, captions: Any) -> tuple[Tensor, Tensor]:
        return self.encode_image(x, t), self.encode_text(captions)


# ----------------------------------------------------------------------------- the loss


def _canonical(p: Exists | Relation) -> Exists | Relation:
    """'b right of a' is 'a left of b', 'b below a' is 'a above b'."""
    if isinstance(p, Relation) and p.relation in ("right of", "below"):
        return Relation(p.b, "left of" if p.relation == "right of" else "above", p.a)
    return p


def caption_key(caption: str) -> frozenset:
    """What a caption means, whatever its word order: its set of properties, with relations in
    one direction. Two captions with one key are true of exactly the same images."""
    return frozenset(_canonical(p) for p in parse_caption(caption))


def positives(captions: Sequence[str]) -> np.ndarray:
    """(B, B) bool: P_ij = caption i means the same as caption j (an equivalence, so P = P^T)."""
    keys = [caption_key(c) for c in captions]
    return np.array([[a == b for b in keys] for a in keys], dtype=bool)


def contrastive_loss(
    z_img: Tensor, z_txt: Tensor, log_scale: Tensor, positive: Any = None, max_scale: float = 100.0
) -> Tensor:
    """Symmetric cross-entropy over the (B, B) similarity matrix, multi-positive targets.

    z_img, z_txt: (B, E) unit vectors; log_scale: s, shape () or (1,); positive: (B, B) bool
    (default: the identity), P_ij = caption j is a right caption for image i.
    """
    B = z_img.shape[0]
    if z_txt.shape != z_img.shape or z_img.ndim != 2:
        raise ValueError(
            f"contrastive_loss: z_img {z_img.shape} and z_txt {z_txt.shape} must both be (B, E)"
        )
    P = np.eye(B, dtype=bool) if positive is None else np.asarray(positive, dtype=bool)
    if P.shape != (B, B) or not P.diagonal().all():
        raise ValueError(
            f"contrastive_loss: positive must be ({B}, {B}) with a true diagonal, got {P.shape}"
        )
    dt = z_img.dtype
    # targets: image i spreads its mass over its positive captions, caption j over its images
    q_img = (P / P.sum(axis=1, keepdims=True)).astype(dt)  # (B, B), rows sum to 1
    q_txt = (P.T / P.T.sum(axis=1, keepdims=True)).astype(dt)  # (B, B)
    # logits_ij = min(e^s, 100) z_img_i . z_txt_j
    scale = log_scale.clip(hi=math.log(max_scale)).exp()
    logits = (z_img @ z_txt.T) * scale  # (B, B)
    # CE = -(1/B) sum_i sum_j q_ij log softmax(logits_i)_j, for images (rows) and texts (columns)
    ce_img = -(F.log_softmax(logits, axis=1) * q_img).sum() / B
    ce_txt = -(F.log_softmax(logits.T, axis=1) * q_txt).sum() / B
    return (ce_img + ce_txt) * 0.5
