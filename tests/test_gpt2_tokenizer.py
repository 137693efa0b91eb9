"""GPT-2's conventions: byte table, pre-tokeniser, merge-rank encoding, vocab/merges files.

Oracles: the `regex` module runs GPT-2's pattern itself; transformers' GPT2Tokenizer, loaded
from files that minigen's trainer wrote, must give minigen's ids.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from minigen.text import ByteBPETokenizer, stdlib_corpus
from minigen.text.hf.gpt2_tokenizer import (
    EOT,
    GPT2_PATTERN,
    bytes_to_unicode,
    pretokenize,
)
from tests.strategies import assigned_texts, texts


@pytest.fixture(scope="module")
def bpe() -> ByteBPETokenizer:
    extra = "Ça va? Très bien, merci! Größe, straße. 日本語のテキスト. Ωμέγα 😀😀 it's 2024.\n"
    return ByteBPETokenizer.train(stdlib_corpus()[:30_000] + extra * 20, 400)


# ----------------------------------------------------------------------------- byte table
def test_byte_table_is_a_printable_bijection() -> None:
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    # every byte is one printable, non-whitespace character: tokens never contain a space
    assert all(len(c) == 1 and c.isprintable() and not c.isspace() for c in table.values())
    # printable Latin-1 bytes stand for themselves, the others come after 255, in byte order
    latin1 = [b for b in range(256) if chr(b).isprintable() and not chr(b).isspace()]
    assert all(table[b] == chr(b) for b in latin1 if b != 0xAD)
    others = [b for b in range(256) if ord(table[b]) >= 256]
    assert [ord(table[b]) for b in others] == list(range(256, 256 + len(others)))


# ----------------------------------------------------------------------------- pre-tokeniser
@given(texts())
def test_pretokenize_covers_the_text(text: str) -> None:
    words = pretokenize(text)
    assert "".join(words) == text
    assert all(words)


@given(assigned_texts(specials=(EOT,)))
def test_pretokenize_matches_regex_module(text: str) -> None:
    assert pretokenize(text) == regex.findall(GPT2_PATTERN, text)


# GPT-2's pattern, typed out here as GPT-2's encoder.py has it (the oracle does not import ours)
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EVERY = "".join(map(chr, range(sys.maxunicode + 1)))  # lone surrogates included
# code points that this Python's unicodedata does not know (Cn) but the regex module's newer
# Unicode does: letters of CJK extension H, Kawi, ... (Unicode 15 and later)
NEWER = regex.findall(r"\P{Cn}", "".join(c for c in EVERY if unicodedata.category(c) == "Cn"))


def test_the_regex_module_knows_a_newer_unicode_than_unicodedata() -> None:
    """Else the tests below would not reach the code points that matter."""
    assert len(NEWER) > 1000 and "\U00031350" in NEWER  # U+31350: CJK Ext. H (Unicode 15)
    assert unicodedata.category("\U00031350") == "Cn" and regex.match(r"\p{L}", "\U00031350")


def test_a_newer_letter_before_a_contraction_is_a_word() -> None:
    """The issue's case: U+31350 is a letter, so "'s" is a contraction, as in GPT-2."""
    assert pretokenize("\U00031350's") == ["\U00031350", "'s"]
    assert pretokenize(" \U00031350\U00031351 \U00031350's") == [
        " \U00031350\U00031351",
        " \U00031350",
        "'s",
    ]


def test_pretokenize_cuts_every_code_point_as_its_unicode_class_says() -> None:
    """Each code point c of the newest Unicode the regex module knows, written " c's": a letter
    or a number is a word and "'s" a contraction; other whitespace is a word of its own after
    the space; anything else takes the space and the quote, and "s" is a word. The classes come
    from the regex module's \\p{L}, \\p{N}, \\s, the expected cut from this rule."""
    letters = set(regex.findall(r"\p{L}", EVERY))
    numbers = set(regex.findall(r"\p{N}", EVERY))
    spaces = set(regex.findall(r"\s", EVERY))
    expected: list[str] = []
    for c in EVERY:
        if c in letters or c in numbers:
            expected += [" " + c, "'s"]
        elif c == " ":  # "  's": the first space, then the second with the quote
            expected += [" ", " '", "s"]
        elif c in spaces:
            expected += [" ", c, "'s"]
        else:
            expected += [" " + c + "'", "s"]
    assert pretokenize("".join(f" {c}'s" for c in EVERY)) == expected


_NEWER_PIECES = st.one_of(
    st.sampled_from(["'s", "'ll", "'d", "'", " ", "  ", "\n", "1", "a", "!", "\U00031350"]),
    st.text(st.sampled_from(NEWER), max_size=4),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=3),
)
newer_texts = st.lists(_NEWER_PIECES, max_size=30).map("".join)


@given(newer_texts)
def test_pretokenize_is_gpt2_pattern_on_newer_code_points(text: str) -> None:
    assert pretokenize(text) == regex.findall(PATTERN, text)


# ----------------------------------------------------------------------------- merge ranks
def _gpt2_bpe(token: str, bpe_ranks: dict[tuple[str, str], int]) -> list[str]:
    """`Encoder.bpe` of GPT-2's encoder.py (openai/gpt-2), on strings, as it was published."""
    word = tuple(token)
    pairs = set(zip(word, word[1:], strict=False))
    if not pairs:
        return [token]
    while True:
        bigram = min(pairs, key=lambda pair: bpe_ranks.get(pair, float("inf")))
        if bigram not in bpe_ranks:
            break
        first, second = bigram
        new_word: list[str] = []
        i = 0
        while i < len(word):
            try:
                j = word.index(first, i)
                new_word.extend(word[i:j])
                i = j
            except ValueError:
                new_word.extend(word[i:])
                break
            if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                new_word.append(first + second)
                i += 2
            else:
                new_word.append(word[i])
                i += 1
        word = tuple(new_word)
        if len(word) == 1:
            break
        pairs = set(zip(word, word[1:], strict=False))
    return list(word)


@given(assigned_texts())
def test_encoding_follows_gpt2_merge_ranks(bpe: ByteBPETokenizer, text: str) -> None:
    table = bytes_to_unicode()
    ranks = {m: r for r, m in enumerate(bpe.merges)}
    expected = [
        bpe.vocab[token]
        for word in pretokenize(text)
        for token in _gpt2_bpe("".join(table[b] for b in word.encode("utf-8")), ranks)
    ]
    assert bpe.encode(text) == expected


# ----------------------------------------------------------------------------- files
@given(assigned_texts(specials=(EOT,)))
def test_gpt2_files_round_trip(
    tmp_path_factory: pytest.TempPathFactory, bpe: ByteBPETokenizer, text: str
) -> None:
    directory = tmp_path_factory.mktemp("gpt2")
    vocab_path, merges_path = bpe.save_gpt2_files(directory)
    assert merges_path.read_text(encoding="utf-8").startswith("#version")
    loaded = ByteBPETokenizer.from_files(vocab_path, merges_path)
    assert loaded == bpe
    assert loaded.encode(text, allow_special=True) == bpe.encode(text, allow_special=True)


def _write_pair(
    directory: Path, vocab: dict[str, int] | str, merges: list[str]
) -> tuple[Path, Path]:
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    vocab_path.write_text(vocab if isinstance(vocab, str) else json.dumps(vocab), "utf-8")
    merges_path.write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), "utf-8")
    return vocab_path, merges_path


def _byte_vocab() -> dict[str, int]:
    return {c: i for i, c in enumerate(bytes_to_unicode().values())}


def test_gpt2_files_errors_name_the_file_and_the_entry(tmp_path: Path) -> None:
    base = {**_byte_vocab(), "ab": 256, "abc": 257}

    def load(vocab: dict[str, int] | str, merges: list[str]) -> None:
        ByteBPETokenizer.from_files(*_write_pair(tmp_path, vocab, merges))

    load(base, ["a b", "ab c"])  # the consistent pair loads
    with pytest.raises(ValueError, match=r"merges.txt: merge 2 'ab x': its result 'abx' is not"):
        load(base, ["a b", "ab x"])
    with pytest.raises(ValueError, match=r"merges.txt: merge 1 'b c': its result 'bc' is not"):
        load(base, ["b c"])
    with pytest.raises(ValueError, match=r"merges.txt: merge 1 'abx c': its part 'abx' is not"):
        load(base, ["abx c"])
    with pytest.raises(ValueError, match=r"merges.txt: merge 2 'a b' repeats merge 1"):
        load(base, ["a b", "a b"])
    with pytest.raises(ValueError, match=r"merges.txt line 3: expected two tokens"):
        load(base, ["a b", "ab  c"])
    with pytest.raises(ValueError, match=r"vocab.json: not valid JSON"):
        load("{'a': 1", ["a b"])
    with pytest.raises(ValueError, match=r"vocab.json: token 'ab' has id '256', not an integer"):
        load({**base, "ab": "256"}, [])
    with pytest.raises(ValueError, match=r"vocab.json: tokens .* share id 256"):
        load({**base, "ba": 256}, [])
    with pytest.raises(ValueError, match=r"vocab.json: token 'Ġ' \(byte 32\) is missing"):
        load({k: v for k, v in base.items() if k != "Ġ"}, [])
    with pytest.raises(ValueError, match=r"vocab.json: token 'a b' \(id 258\) has the character"):
        load({**base, "a b": 258}, [])
    with pytest.raises(FileNotFoundError, match=r"merges file not found: .*nope.txt"):
        ByteBPETokenizer.from_files(tmp_path / "vocab.json", tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match=r"vocab file not found: .*nope.json"):
        ByteBPETokenizer.from_files(tmp_path / "nope.json", tmp_path / "merges.txt")


# ----------------------------------------------------------------------------- oracle
@pytest.fixture(scope="module")
def hf_gpt2(bpe: ByteBPETokenizer, tmp_path_factory: pytest.TempPathFactory):
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("hf_gpt2")
    bpe.save_gpt2_files(directory)
    return transformers.GPT2Tokenizer.from_pretrained(str(directory))


@pytest.mark.oracle
@given(assigned_texts(specials=(EOT,)))
def test_transformers_gpt2_tokenizer_gives_the_same_ids(
    bpe: ByteBPETokenizer, hf_gpt2, text: str
) -> None:
    # GPT2Tokenizer reads <|endoftext|> in a text as the special token: allow_special=True
    ids = bpe.encode(text, allow_special=True)
    assert hf_gpt2.encode(text) == ids
    assert hf_gpt2.decode(ids) == text


@pytest.mark.oracle
@given(assigned_texts(max_pieces=60, specials=(EOT,)), assigned_texts(specials=(EOT,)))
def test_transformers_agrees_on_vocabularies_learned_from_drawn_text(
    tmp_path_factory: pytest.TempPathFactory, corpus: str, text: str
) -> None:
    """A vocabulary learned on the drawn text itself, so that its merges fire often."""
    transformers = pytest.importorskip("transformers")
    tok = ByteBPETokenizer.train(corpus, 300)
    directory = tmp_path_factory.mktemp("hf_small")
    tok.save_gpt2_files(directory)
    hf = transformers.GPT2Tokenizer.from_pretrained(str(directory))
    for s in (corpus, text + corpus):
        assert hf.encode(s) == tok.encode(s, allow_special=True)


@pytest.mark.oracle
@given(newer_texts)
def test_transformers_gpt2_tokenizer_agrees_on_newer_code_points(
    bpe: ByteBPETokenizer, hf_gpt2, text: str
) -> None:
    """transformers' GPT2Tokenizer pre-tokenises with the regex module: the same words."""
    assert hf_gpt2.encode(text) == bpe.encode(text, allow_special=True)


@pytest.fixture(scope="module")
def real_gpt2():
    """GPT-2's own vocab.json and merges.txt, where the Hugging Face cache holds them."""
    hub = pytest.importorskip("huggingface_hub")
    transformers = pytest.importorskip("transformers")
    for repo in ("openai-community/gpt2", "gpt2"):
        files = [hub.try_to_load_from_cache(repo, name) for name in ("vocab.json", "merges.txt")]
        if all(isinstance(f, str) for f in files):
            ours = ByteBPETokenizer.from_files(*files, special_tokens=[EOT])
            return ours, transformers.GPT2Tokenizer(*files)
    pytest.skip("GPT-2's vocab.json / merges.txt are not in the Hugging Face cache")


@pytest.mark.oracle
@given(newer_texts)
def test_gpt2s_own_tokenizer_gives_the_same_ids_on_newer_code_points(real_gpt2, text: str):
    ours, theirs = real_gpt2
    assert ours.encode(text, allow_special=True) == theirs.encode(text)
