"""Sampling: the filtered distributions, stop strings, streaming, and bad prompts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigen
from minigen import Tensor
from minigen.text import CharTokenizer
from minigen.text.gpt import GPT, GPTConfig
from minigen.text.sampling import generate, next_token_probs, sample_next, stream_text
from tests import strategies as S

logit_rows = S.arrays(st.tuples(st.integers(1, 3), st.integers(2, 12)), lo=-5, hi=5)


@given(z=logit_rows, tau=st.floats(0.05, 5.0))
def test_probabilities_sum_to_one_and_temperature_orders_them(z, tau):
    p = next_token_probs(z, temperature=tau)
    np.testing.assert_allclose(p.sum(-1), 1.0)
    # p_i / p_j = exp((z_i - z_j) / tau): the same order as the logits
    i, j = z[0].argmax(), z[0].argmin()
    assert p[0, i] >= p[0, j]
    assert np.log(p[0, i] / p[0, j]) == pytest.approx((z[0, i] - z[0, j]) / tau, rel=1e-6, abs=1e-9)


@given(z=logit_rows)
def test_temperature_zero_is_the_argmax(z):
    p = next_token_probs(z, temperature=0)
    np.testing.assert_array_equal(p.argmax(-1), z.argmax(-1))
    np.testing.assert_array_equal(p.max(-1), 1.0)
    np.testing.assert_array_equal(sample_next(z, temperature=0), z.argmax(-1))


@given(z=S.separated_arrays((2, 9)), k=st.integers(1, 9))
def test_top_k_keeps_the_k_most_likely(z, k):
    p = next_token_probs(z, top_k=k)
    kept = p > 0
    assert (kept.sum(-1) == k).all()
    # every kept logit is above every dropped one
    for row, keep in zip(z, kept, strict=True):
        assert row[keep].min() > row[~keep].max(initial=-np.inf)
    np.testing.assert_allclose(p.sum(-1), 1.0)


@given(z=S.separated_arrays((2, 9)), top_p=st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_nucleus(z, top_p):
    full = next_token_probs(z)
    p = next_token_probs(z, top_p=top_p)
    for f, q in zip(full, p, strict=True):
        kept = q > 0
        assert f[kept].sum() >= top_p - 1e-12  # enough mass...
        assert f[kept].sum() - f[kept].min() < top_p  # ...and not one token more
        assert f[kept].min() >= f[~kept].max(initial=0)  # the most likely ones
        np.testing.assert_allclose(q[kept], f[kept] / f[kept].sum())


def test_samples_follow_the_distribution():
    z = np.log(np.array([[0.5, 0.3, 0.2, 0.0 + 1e-12]]))
    gen = np.random.default_rng(0)
    draws = np.concatenate([sample_next(z, gen=gen) for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2, 0.0], atol=0.03)


def test_bad_settings_are_named():
    z = np.zeros((1, 4))
    for kw, msg in [
        ({"temperature": -1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
    ]:
        with pytest.raises(ValueError, match=msg):
            next_token_probs(z, **kw)


# ----------------------------------------------------------------------------- text


class Scripted:
    """A stand-in model whose greedy continuation is a fixed script, one token per call."""

    def __init__(self, tokenizer: CharTokenizer, script: str) -> None:
        self.ids = tokenizer.encode(script)
        self.V = tokenizer.vocab_size
        self.config = GPTConfig(vocab_size=self.V, block_size=1000, n_layer=1, n_head=1, n_embd=4)
        self.training, self.calls = True, 0

    def eval(self):
        self.training = False
        return self

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def new_cache(self, batch: int = 1):
        return None

    def __call__(self, ids, cache=None, last_only=False):
        logits = np.zeros((ids.shape[0], 1, self.V))
        logits[:, 0, self.ids[self.calls % len(self.ids)]] = 1.0
        self.calls += 1
        return Tensor(logits)


TOK = CharTokenizer.from_text("abcdefgh STOP.\n")


@pytest.mark.parametrize(
    ("script", "stop", "want"),
    [
        ("abc STOP. def", ["STOP"], "abc "),
        ("abc STOP. def", ["ST0P", "P. d"], "abc STO"),
        ("abcdefgh", ["h"], "abcdefg"),
        ("abcdefgh", ["x"], "abcdefgh"),
        ("aaaa", ["aaa"], ""),
    ],
)
def test_stop_strings_end_the_text_before_them(script, stop, want):
    out = generate(Scripted(TOK, script), TOK, "a", len(script), temperature=0, stop=stop)
    assert out == want


@given(script=st.text("abc S", min_size=1, max_size=20), stop=st.text("abc S", max_size=3))
def test_streamed_pieces_join_into_the_text_and_never_show_a_stop(script, stop):
    pieces = list(stream_text(Scripted(TOK, script), TOK, "a", len(script), 0, stop=[stop]))
    text = "".join(pieces)
    want = script if not stop or stop not in script else script[: script.index(stop)]
    assert text == want
    assert all(pieces[:-1])  # no empty piece before the end


def test_a_real_model_streams_what_generate_returns():
    minigen.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8))
    seen = []
    out = generate(model, TOK, "ab", 30, gen=np.random.default_rng(1), on_text=seen.append)
    assert "".join(seen) == out and len(out) == 30
    again = generate(model, TOK, "ab", 30, gen=np.random.default_rng(1))
    assert again == out  # one seed, one sample
    assert model.training  # the mode is restored


def test_bad_prompts_are_named():
    model = Scripted(TOK, "abc")
    with pytest.raises(ValueError, match="character 'z' at position 1"):
        generate(model, TOK, "az", 5)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, TOK, "", 5)
