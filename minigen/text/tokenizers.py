"""Tokenizers: a text as a sequence of integer ids, the input of the GPT of §7.1.

An autoregressive model learns P(x_t | x_1, ..., x_{t-1}) over a finite vocabulary, so a
text must first become tokens x_1, ..., x_T in {0, ..., V-1}; decode(encode(s)) == s.

- CharTokenizer: one token per character of a fixed alphabet (the characters of the training
  text, sorted). Small V, long sequences.
- PieceTokenizer: a fixed vocabulary of strings ("pieces"), a text cut greedily into the
  longest piece at each position (a word-level vocabulary, for synthetic corpora).
- ByteBPETokenizer: GPT-2's byte-level byte-pair encoding. The 256 bytes are the first
  tokens, so every string can be encoded; training then adds, one at a time, the token ab
  for the most frequent adjacent pair (a, b) of tokens in the corpus's words, until the
  vocabulary has V tokens (the last id is the special token <|endoftext|>). The GPT-2
  conventions (byte table, pre-tokeniser, merge-rank encoding, files) are in gpt2_tokenizer.

CharTokenizer and PieceTokenizer are in `char_tokenizers.py`, ByteBPETokenizer in `bpe.py`.
All save to and load from JSON (`save`, `load`, `to_dict`); `load_tokenizer` (here) reads any
of them, by the "format" its file names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minigen.text.bpe import ByteBPETokenizer
from minigen.text.char_tokenizers import CharTokenizer, PieceTokenizer, read_json

__all__ = [
    "CharTokenizer",
    "ByteBPETokenizer",
    "PieceTokenizer",
    "load_tokenizer",
    "tokenizer_from_dict",
]

_FORMATS = {
    "minigen.CharTokenizer": CharTokenizer,
    "minigen.ByteBPETokenizer": ByteBPETokenizer,
    "minigen.PieceTokenizer": PieceTokenizer,
}


def tokenizer_from_dict(
    d: dict[str, Any], source: str = "<dict>"
) -> CharTokenizer | ByteBPETokenizer | PieceTokenizer:
    """A tokenizer from its `to_dict()` (e.g. kept in a checkpoint's metadata)."""
    kind = d.get("format") if isinstance(d, dict) else None
    if kind not in _FORMATS:
        raise ValueError(
            f"{source}: unknown tokenizer format {kind!r}; expected one of {list(_FORMATS)}"
        )
    return _FORMATS[kind].from_dict(d, source)


def load_tokenizer(path: str | Path) -> CharTokenizer | ByteBPETokenizer | PieceTokenizer:
    """Load a tokenizer saved by either class's `save`."""
    return tokenizer_from_dict(read_json(path), str(path))
