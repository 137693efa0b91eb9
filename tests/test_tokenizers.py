"""Character and byte-level BPE tokenizers: round trips, training, files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen.text import (
    ByteBPETokenizer,
    CharTokenizer,
    load_tokenizer,
    stdlib_corpus,
    tokenizer_from_dict,
    train_bpe,
)
from minigen.text.hf.gpt2_tokenizer import EOT, bytes_to_unicode, pretokenize
from tests.strategies import assigned_texts, texts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bpe() -> ByteBPETokenizer:
    """A small vocabulary learned on Python sources, with words from many languages added."""
    extra = "Ça va? Très bien, merci! Größe, straße. 日本語のテキスト. Ωμέγα 😀😀 it's 2024.\n"
    return ByteBPETokenizer.train(stdlib_corpus()[:30_000] + extra * 20, 400)


# ----------------------------------------------------------------------------- characters
@given(texts())
def test_char_round_trip_and_alphabet(text: str) -> None:
    tok = CharTokenizer.from_text(text + "x")
    assert tok.chars == sorted(set(text + "x"))
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@given(texts(), st.integers(0, 10**6))
def test_char_unseen_character_names_it_and_its_position(text: str, where: int) -> None:
    tok = CharTokenizer.from_text(text + "a")
    unseen = next(chr(c) for c in range(0x41, 0x110000) if chr(c) not in tok.chars)
    pos = where % (len(text) + 1)
    with pytest.raises(ValueError) as err:
        tok.encode(text[:pos] + unseen + text[pos:])
    assert repr(unseen) in str(err.value) and f"position {pos}" in str(err.value)


def test_char_decode_rejects_unknown_ids() -> None:
    tok = CharTokenizer.from_text("abc")
    for bad in (3, -1):
        with pytest.raises(ValueError, match=f"token id {bad} at position 1"):
            tok.decode([0, bad])


def test_char_alphabet_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="'a' appears twice"):
        CharTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])


@given(texts())
def test_char_save_load_round_trip(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    tok = CharTokenizer.from_text(text + "x")
    path = tmp_path_factory.mktemp("char") / "tok.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert loaded == tok and isinstance(loaded, CharTokenizer)
    assert loaded.encode(text) == tok.encode(text)


# ----------------------------------------------------------------------------- byte-level BPE
@given(texts())
def test_bpe_round_trip_any_string(bpe: ByteBPETokenizer, text: str) -> None:
    for allow_special in (False, True):
        ids = bpe.encode(text, allow_special=allow_special)
        assert all(0 <= i < bpe.vocab_size for i in ids)
        assert bpe.decode(ids) == text


@given(texts())
def test_bpe_encodes_word_by_word(bpe: ByteBPETokenizer, text: str) -> None:
    """Merges never cross the pre-tokeniser's words (and the word cache changes nothing)."""
    by_word = [i for word in pretokenize(text) for i in bpe.encode(word)]
    assert bpe.encode(text) == by_word
    assert bpe.encode(text) == by_word
    assert len(by_word) <= len(text.encode("utf-8", "surrogatepass"))


@given(texts(max_pieces=8), texts(max_pieces=8))
def test_bpe_special_tokens_only_when_allowed(bpe: ByteBPETokenizer, a: str, b: str) -> None:
    eot = bpe.eot_id
    text = a + EOT + b
    assert eot not in bpe.encode(text)
    expected = bpe.encode(a, allow_special=True) + [eot] + bpe.encode(b, allow_special=True)
    assert bpe.encode(text, allow_special=True) == expected


def _reference_merges(text: str, vocab_size: int) -> list[tuple[bytes, bytes]]:
    """BPE training without shortcuts: recount every pair of every word at every step."""
    words = [[bytes([b]) for b in w.encode("utf-8", "surrogatepass")] for w in pretokenize(text)]
    tokens = {bytes([b]) for b in range(256)}
    merges = []
    while len(tokens) < vocab_size - 1:
        counts = Counter(pair for w in words for pair in zip(w, w[1:], strict=False))
        if not counts:
            break
        # the most frequent pair; ties to the smallest (bytes of a, bytes of b)
        a, b = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append((a, b))
        tokens.add(a + b)
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges


@given(texts(max_pieces=40), st.integers(257, 300))
def test_bpe_training_matches_reference(text: str, vocab_size: int) -> None:
    vocab, merges = train_bpe(text, vocab_size)
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    as_bytes = [tuple(bytes(decoder[c] for c in part) for part in m) for m in merges]
    assert as_bytes == _reference_merges(text, vocab_size)


@given(texts(max_pieces=40), st.integers(257, 320))
def test_bpe_vocabulary_layout(text: str, vocab_size: int) -> None:
    tok = ByteBPETokenizer.train(text, vocab_size)
    # at most vocab_size ids, 0..n-1 without gaps, <|endoftext|> last
    assert len(tok.vocab) <= vocab_size
    assert sorted(tok.vocab.values()) == list(range(len(tok.vocab)))
    assert tok.eot_id == len(tok.vocab) - 1
    # ids 0..255 are the bytes in GPT-2's order
    assert [tok.token_bytes(i) for i in range(256)] == [bytes([b]) for b in bytes_to_unicode()]
    assert tok.decode(tok.encode(text)) == text


def test_bpe_training_stops_when_every_word_is_one_token() -> None:
    tok = ByteBPETokenizer.train("ab ab ab", 1000)
    assert tok.encode("ab ab") == [tok.vocab["ab"], tok.vocab["Ġab"]]
    assert len(tok.vocab) == 256 + 2 + 1


def test_bpe_training_is_independent_of_hash_seed() -> None:
    code = (
        "import json; from minigen.text import stdlib_corpus, train_bpe;"
        "print(json.dumps(train_bpe(stdlib_corpus()[:20000], 320)[1]))"
    )
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout))
    assert runs[0] == runs[1] == [list(m) for m in train_bpe(stdlib_corpus()[:20000], 320)[1]]


def test_bpe_training_errors() -> None:
    with pytest.raises(ValueError, match="vocab_size=256 is too small"):
        train_bpe("abc", 256)
    with pytest.raises(ValueError, match="distinct"):
        train_bpe("abc", 300, special_tokens=("<a>", "<a>"))


def test_bpe_decode_rejects_unknown_ids(bpe: ByteBPETokenizer) -> None:
    for bad in (bpe.vocab_size, -1):
        with pytest.raises(ValueError, match=f"token id {bad} at position 2"):
            bpe.decode([0, 1, bad])


@given(assigned_texts(max_pieces=10))
def test_bpe_decode_of_a_cut_character_is_a_replacement_mark(
    bpe: ByteBPETokenizer, text: str
) -> None:
    """Ids that end inside a character decode with U+FFFD there, as GPT-2 does."""
    ids = bpe.encode(text) + [bpe.vocab[bytes_to_unicode()[0xC3]]]  # é is c3 a9 in UTF-8
    assert bpe.decode_bytes(ids) == text.encode("utf-8") + b"\xc3"
    assert bpe.decode(ids) == text + "\ufffd"


@given(texts(max_pieces=10))
def test_bpe_save_load_round_trip(
    tmp_path_factory: pytest.TempPathFactory, bpe: ByteBPETokenizer, text: str
) -> None:
    path = tmp_path_factory.mktemp("bpe") / "tok.json"
    bpe.save(path)
    loaded = load_tokenizer(path)
    assert loaded == bpe and isinstance(loaded, ByteBPETokenizer)
    assert loaded.encode(text, allow_special=True) == bpe.encode(text, allow_special=True)
    # the dict form is plain JSON, for a checkpoint's metadata
    assert tokenizer_from_dict(json.loads(json.dumps(bpe.to_dict()))) == bpe


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a valid JSON"):
        load_tokenizer(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "sentencepiece"}))
    with pytest.raises(ValueError, match="other.json: unknown tokenizer format 'sentencepiece'"):
        load_tokenizer(other)
