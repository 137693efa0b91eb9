"""Sampling from a GPT: one token at a time, each drawn from p(x_{t+1} | x_1..x_t).

Given the logits z of the next token (z = the model's output at the last position):

- greedy:       x_{t+1} = argmax_i z_i                          (temperature 0)
- temperature:  p_i = softmax(z / tau)_i; tau < 1 sharpens, tau > 1 flattens
- top-k:        keep the k largest z_i, renormalise over them
- top-p:        keep the smallest set of most likely tokens whose probabilities sum to
                at least p (the nucleus, Holtzman et al. 2020), renormalise over it

The context is the last `block_size` tokens, as in training. With the KV cache each new
token runs the model on one position, attending to the cached keys and values; once the
context is longer than block_size the window slides, every position shifts, and the cache
is rebuilt for the new window (the same tokens as without the cache, at its cost).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from minigen import backend, rng
from minigen.functional import softmax_forward
from minigen.tensor import no_grad

__all__ = ["next_token_probs", "sample_next", "generate_ids", "stream_text", "generate"]


def next_token_probs(
    logits: Any, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """The distribution sampled from: logits (..., V) -> probabilities (..., V), in float64.

    temperature 0 puts all the mass on the argmax (greedy decoding).
    """
    z = np.asarray(backend.to_numpy(logits), dtype=np.float64)
    V = z.shape[-1]
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if temperature == 0:  # greedy: all the mass on the first argmax
        p = np.zeros_like(z)
        np.put_along_axis(p, z.argmax(axis=-1)[..., None], 1.0, axis=-1)
        return p
    if top_k is not None and top_k < V:
        kth = np.sort(z, axis=-1)[..., V - top_k, None]  # the k-th largest logit
        z = np.where(z < kth, -np.inf, z)
    # p = softmax(z / tau)
    p = softmax_forward(z / temperature)
    if top_p is not None and top_p < 1:
        order = np.argsort(-p, axis=-1, kind="stable")  # most likely first
        sorted_p = np.take_along_axis(p, order, axis=-1)
        # keep a token when the mass before it is < top_p (so the top token always stays)
        keep_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def sample_next(
    logits: Any,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    gen: np.random.Generator | None = None,
) -> np.ndarray:
    """One token id per row of logits (B, V) -> (B,), drawn by inverting the CDF."""
    if temperature == 0:  # greedy
        return np.asarray(backend.to_numpy(logits)).argmax(axis=-1)
    p = next_token_probs(logits, temperature, top_k, top_p)  # (B, V)
    u = (gen or rng.generator()).random(p.shape[:-1])  # (B,)
    cdf = np.cumsum(p, axis=-1)
    # the first i with cdf_i > u (clipped: rounding can leave cdf_V a hair below 1)
    return np.minimum((cdf <= u[..., None]).sum(axis=-1), p.shape[-1] - 1)


def generate_ids(
    model: Any,
    ids: Any,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    gen: np.random.Generator | None = None,
) -> Iterator[np.ndarray]:
    """Yield the next token of each sequence, (B,), `max_new_tokens` times.

    ids: the prompt, (T,) or (B, T) token ids with T >= 1.
    """
    ctx = np.array(ids, dtype=np.int64, ndmin=2)
    if ctx.shape[-1] == 0:
        raise ValueError("generate: the prompt has no tokens; give at least one")
    bs = model.config.block_size
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            cache = model.new_cache(ctx.shape[0]) if use_cache else None
            logits = model(ctx[:, -bs:], cache=cache, last_only=True)  # (B, 1, V)
            for _ in range(max_new_tokens):
                nxt = sample_next(logits.data[:, -1], temperature, top_k, top_p, gen)  # (B,)
                yield nxt
                ctx = np.concatenate([ctx, nxt[:, None]], axis=1)
                if cache is None:
                    logits = model(ctx[:, -bs:], last_only=True)
                elif cache.length < bs:  # one new position, attending to the cache
                    logits = model(ctx[:, -1:], cache=cache, last_only=True)
                else:  # the window slid: positions shifted, rebuild the cache
                    cache.reset()
                    logits = model(ctx[:, -bs:], cache=cache, last_only=True)
    finally:
        model.train(was_training)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` might start a stop string (or be half a
    character still being decoded, U+FFFD), so are not shown yet."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    if text.endswith("\ufffd"):
        hold = max(hold, 1)
    return hold


# (its column of parameters is alike in shape only to other signatures of the package)
def stream_text(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Iterable[str] = (),
    use_cache: bool = True,
    gen: np.random.Generator | None = None,
) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece as it is sampled (for streaming),
    ending before the first stop string, if one appears."""
    stops = [s for s in stop if s]
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("generate: the prompt is empty; give at least one character")
    new: list[int] = []
    shown = 0
    text = ""
    for tok in generate_ids(model, ids, max_new_tokens, temperature, top_k, top_p, use_cache, gen):
        new.append(int(tok[0]))
        text = tokenizer.decode(new)
        hits = [i for i in (text.find(s, shown) for s in stops) if i >= 0]
        if hits:
            yield text[shown : min(hits)]
            return
        safe = len(text) - _held_back(text, stops)
        if safe > shown:
            yield text[shown:safe]
            shown = safe
    if len(text) > shown:
        yield text[shown:]


# stream_text's parameters spelled out again (not **kwargs), so that help() and the type hints
# show them: deliberate
def generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Iterable[str] = (),
    use_cache: bool = True,
    gen: np.random.Generator | None = None,
    on_text: Callable[[str], Any] | None = None,
) -> str:
    """The sampled continuation of `prompt` (without the prompt); `on_text` receives each
    piece as soon as it is known (e.g. `print(piece, end="", flush=True)`)."""
    pieces = []
    for piece in stream_text(
        model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, stop, use_cache, gen
    ):
        pieces.append(piece)
        if on_text is not None:
            on_text(piece)
    return "".join(pieces)
