"""The caption-conditioned denoiser of classifier-free guidance: a U-Net reading a caption (§7.2).

`CaptionUNet` joins the caption encoder (a small transformer of CLIP's design, its own weights)
and the cross-attention U-Net of `xunet.py`: the encoder's pooled vector and token states, the
learned null caption that stands for a dropped one, and, optionally, the cell map, where the
encoder says which cell of the grid each mentioned object is in. `text2im.py` trains it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minigen import backend, nn
from minigen import functional as F
from minigen.diffusion import PREDICTIONS, NoiseSchedule
from minigen.shape_ops import concatenate
from minigen.synthesis.captions import encode, parse_caption
from minigen.synthesis.cells import place_jointly
from minigen.synthesis.clip import CLIPConfig, TextEncoder
from minigen.synthesis.scenes import GRID
from minigen.synthesis.xunet import Caption, CrossAttnUNet
from minigen.tensor import Tensor, no_grad

__all__ = ["CELL_DIM", "CaptionUNet"]

CELL_DIM = 16  # M: the size of a cell's entry in the cell map


class CaptionUNet(nn.Module):
    """eps_theta(x_t, t, c): the U-Net of `xunet.py` reading a caption through its text encoder.

    `embed(tokens, drop)` gives the `Caption` the U-Net reads: g(c) and the token states of
    each caption, or the null caption where `drop` is True (or for every row when tokens is
    None): the pooled null vector, and the null token alone visible to the cross-attention.

    With `prediction` "v" the U-Net predicts v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
    (Salimans & Ho 2022; `raw` gives it, trained by the v loss of
    `minigen.diffusion.denoising_loss`) and `forward` turns it into the eps the samplers and
    classifier-free guidance read; `schedule` gives abar_t.

    With `cells` the caption encoder (bidirectional: the subject of "left of" reads the relation
    word after it) also says where each token's object is, a distribution P_j over the GRID^2
    cells and NOWHERE from the token's state h_j, and the U-Net reads a map of the grid
    (`xunet.py`) that holds in each cell the words of the object placed there:

        P_j = softmax(W_p h_j)   (GRID^2 + 1)
        map[c] = sum_j [cell_j = c] v(w_j)          v: a learned vector per word (M)

    so a cell holds v(colour) + v(shape), whatever the words around them: a blue cross is
    v(blue) + v(cross) though no training caption pairs them. Training fits P_j to where the
    scene has the object that token j names (`cell_loss`, cross-entropy against
    `cells.token_cells`) and places each object in its own cell; sampling draws the cells
    from P_j (`place`). A dropped caption's map is empty.
    """

    kind = "caption_unet"

    def __init__(
        self,
        unet: dict[str, Any],
        text: dict[str, Any],
        p_uncond: float = 0.1,
        prediction: str = "eps",
        schedule: dict[str, Any] | None = None,
        cells: bool = False,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"CaptionUNet: unknown prediction {prediction!r}; one of {PREDICTIONS}"
            )
        if prediction == "v" and schedule is None:
            raise ValueError("CaptionUNet: a v-prediction model needs its noise schedule")
        self.prediction = prediction
        self._abar = None
        if prediction == "v":
            sched = NoiseSchedule.make(schedule["name"], int(schedule["num_train_timesteps"]))
            self._abar = np.asarray(sched.alphas_cumprod)  # (T,)
        self.text_config = CLIPConfig.from_dict(text)
        E, D = self.text_config.embed_dim, self.text_config.width
        drop_keys = ("cond_dim", "text_dim", "cell_channels")
        unet = {k: v for k, v in unet.items() if k not in drop_keys}
        kind = unet.pop("kind", CrossAttnUNet.kind)
        if kind != CrossAttnUNet.kind:
            raise ValueError(
                f"CaptionUNet: a U-Net of kind {kind!r} (the caption as one pooled vector, "
                f"text2im format 1); this version builds {CrossAttnUNet.kind!r} (cross-attention)"
            )
        self.text = TextEncoder(self.text_config)
        dt = self.text.proj.weight.dtype
        self.null = nn.Parameter(np.zeros(E, dtype=dt))  # (E,) the pooled null caption
        gen = np.random.default_rng(0)
        self.null_token = nn.Parameter(0.02 * gen.standard_normal(D).astype(dt))  # (D,)
        if cells and self.text_config.causal:
            raise ValueError("CaptionUNet: a cell map needs a bidirectional caption encoder "
                             "(text config causal=False)")  # fmt: skip
        self.unet = CrossAttnUNet(**unet, cond_dim=E, text_dim=D,
                                  cell_channels=CELL_DIM if cells else 0)  # fmt: skip
        self.cell_where = nn.Linear(D, GRID * GRID + 1) if cells else None  # W_p
        self.cell_what = nn.Embedding(self.text_config.vocab_size, CELL_DIM) if cells else None
        self.config = {"kind": self.kind, "unet": dict(self.unet.config),
                       "text": self.text_config.to_dict(), "p_uncond": float(p_uncond),
                       "prediction": prediction}  # fmt: skip
        if cells:  # written only when used: older checkpoints have no such key
            self.config["cells"] = True

    def embed(self, tokens: Any, drop: Any = None, cells: Any = None) -> Caption:
        """The Caption of token ids (B, L), the null caption where drop (B,) is True; with
        tokens None, `drop` is a number n of rows, all null. A model with a cell map needs the
        cell of each token's object, (B, L) ints as `cells.token_cells` gives them (the
        training scene's) or as `place` draws them (sampling)."""
        D, dt = self.text_config.width, self.null.dtype
        if tokens is None:  # the null caption for a batch of `drop` (an int) rows
            n = int(drop)
            pooled = self.null.reshape(1, -1) * np.ones((n, 1), dtype=dt)  # (n, E)
            states = self.null_token.reshape(1, 1, D) * np.ones((n, 1, 1), dtype=dt)  # (n, 1, D)
            empty = None
            if self.cell_where is not None:  # the null caption's map: nothing anywhere
                empty = Tensor(np.zeros((n, GRID * GRID, CELL_DIM), dtype=dt))  # (n, G^2, M)
            return Caption(pooled, states, np.ones((n, 1), dtype=bool), empty)
        h, eos = self.text.states(tokens)  # (B, L', D), (B,)
        B, L = h.shape[:2]
        g = self.text.embed(h, eos)  # (B, E) g(c), CLIP's text embedding
        visible = np.arange(L)[None, :] <= eos[:, None]  # (B, L'): <bos> .. <eos>, not <pad>
        keep = np.ones(B, dtype=bool) if drop is None else ~np.asarray(drop, dtype=bool)  # (B,)
        k = keep.astype(dt)[:, None]  # (B, 1)
        if drop is not None:
            visible = visible & keep[:, None]
            # e = g(c) where kept, null where dropped
            g = g * k + self.null.reshape(1, -1) * (1.0 - k)  # (B, E)
        null_tok = self.null_token.reshape(1, 1, D) * np.ones((B, 1, 1), dtype=dt)  # (B, 1, D)
        states = concatenate([null_tok, h], axis=1)  # (B, 1 + L', D)
        mask = np.concatenate([np.ones((B, 1), dtype=bool), visible], axis=1)  # (B, 1 + L')
        if self.cell_where is None:
            return Caption(g, states, mask)
        if cells is None:
            raise ValueError(
                "CaptionUNet.embed: a model with a cell map needs the cell of each token's "
                "object: cells.token_cells (training) or CaptionUNet.place (sampling)"
            )
        cells = np.asarray(cells)
        if cells.shape != np.shape(tokens):
            raise ValueError(
                f"CaptionUNet.embed: cells {cells.shape} for tokens {np.shape(tokens)}"
            )
        c = cells[:, :L]  # (B, L')
        # one-hot of each token's cell; NOWHERE, <pad> and dropped captions put nothing anywhere
        onehot = (c[:, :, None] == np.arange(GRID * GRID)) & visible[:, :, None]  # (B, L', G^2)
        v = self.cell_what(np.asarray(tokens)[:, :L])  # (B, L', M) v(w_j), one per word
        # map[c] = sum_j [cell_j = c] v(w_j)
        m = Tensor(onehot.astype(dt).transpose(0, 2, 1)) @ v  # (B, G^2, M)
        return Caption(g, states, mask, m, self.cell_where(h))  # logits (B, L', G^2 + 1)

    def place(self, tokens: Any, generator: np.random.Generator) -> np.ndarray:
        """Draw where each mentioned object goes, (B, L) ints for `embed`: the cells of all the
        "<colour> <shape>"s of a caption at once, from the product of their colour words' P_j
        (the learned distributions: "left of" makes the subject's a left one) restricted to
        distinct cells where the caption's relations hold (`cells.place_jointly`); both words
        of a mention get its cell. Other tokens: NOWHERE."""
        tokens = np.asarray(tokens)
        z, eos = self._cell_logits(tokens)  # (B, L', G^2 + 1) W_p h_j; NOWHERE is no place
        return place_jointly(z, tokens, eos, generator)

    def where(self, caption: str) -> tuple[list[str], np.ndarray]:
        """The words of `caption` and where the cell map puts each word's object: P_j over the
        grid's cells, (n_words, GRID, GRID); a word that names no object puts its mass on
        NOWHERE (left out), so its row sums to about 0."""
        if self.cell_where is None:
            raise ValueError("CaptionUNet.where: this model has no cell map (trained without one)")
        parse_caption(caption)  # unknown words, empty captions: a clear error
        words = caption.split()
        z = self._cell_logits(encode(caption)[None])[0][0]  # (L', GRID^2 + 1)
        z = z[1 : len(words) + 1]  # the words, not <bos> and <eos>
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)  # P_j
        return words, p[:, : GRID * GRID].reshape(len(words), GRID, GRID)

    def _cell_logits(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """W_p h_j for every token, (B, L', GRID^2 + 1) as NumPy, and each row's <eos>."""
        with no_grad():
            h, eos = self.text.states(tokens)  # (B, L', D)
            return backend.to_numpy(self.cell_where(h).data), eos

    def cell_loss(self, e: Caption, target: np.ndarray) -> Tensor:
        """Cross-entropy of where `embed`'s tokens put their objects (P_j) against where they
        are, (B, L) from `cells.token_cells` (IGNORE: no target), over the tokens that have one."""
        L = e.cell_logits.shape[1]
        # -log P_j[cell of token j's object], averaged over tokens
        return F.cross_entropy(e.cell_logits, np.asarray(target)[:, :L])

    def raw(self, x: Any, t: Any, e: Caption) -> Tensor:
        """The U-Net's own output: eps_theta, or v_theta for a v-prediction model."""
        return self.unet(x, t, e)  # (B, 3, H, W)

    def forward(self, x: Any, t: Any, e: Caption) -> Tensor:
        """eps_theta(x_t, t, e), whatever the U-Net predicts (the samplers read eps)."""
        out = self.raw(x, t, e)  # (B, 3, H, W)
        if self.prediction == "eps":
            return out
        x = x if isinstance(x, Tensor) else Tensor(x)
        t = np.asarray(t)
        abar = np.broadcast_to(self._abar[t], (x.shape[0],)).astype(x.dtype)  # (B,)
        abar = abar.reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        # eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t
        return out * np.sqrt(abar) + x * np.sqrt(1 - abar)  # (B, 3, H, W)
