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

Both save to and load from JSON (`save`, `load`, `to_dict`); `load_tokenizer` reads either.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from minigen.checkpoint import atomic_write
from minigen.text.hf.gpt2_tokenizer import (
    EOT,
    bpe_merge,
    bytes_to_unicode,
    check_vocab,
    parse_merges,
    pretokenize,
    read_gpt2_files,
    train_bpe,
    write_gpt2_files,
)

__all__ = [
    "CharTokenizer",
    "ByteBPETokenizer",
    "PieceTokenizer",
    "train_bpe",
    "load_tokenizer",
    "tokenizer_from_dict",
    "EOT",
]


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file: {e}") from None


def _decode_utf8(data: bytes) -> str:
    # surrogatepass brings back lone surrogates that encode let through; a sequence of ids
    # that cuts a character in two decodes with U+FFFD in its place, as GPT-2 does
    try:
        return data.decode("utf-8", errors="surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


def _bad_id(ids: Sequence[int], vocab_size: int, known: Any) -> ValueError:
    pos, i = next((p, i) for p, i in enumerate(ids) if int(i) not in known)
    return ValueError(
        f"token id {i} at position {pos} is not in the vocabulary (size {vocab_size})"
    )


# ----------------------------------------------------------------------------- characters
class CharTokenizer:
    """One id per character: `chars[i]` is token i."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = list(chars)
        for c in self.chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"a CharTokenizer's alphabet holds single characters, got {c!r}")
        self._ids = {c: i for i, c in enumerate(self.chars)}
        if len(self._ids) != len(self.chars):
            dup = next(c for c, n in Counter(self.chars).items() if n > 1)
            raise ValueError(f"character {dup!r} appears twice in the alphabet")

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The alphabet of `text`: its distinct characters in code-point order."""
        if not text:
            raise ValueError("cannot build a CharTokenizer from an empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            pos, c = next((p, c) for p, c in enumerate(text) if c not in self._ids)
            raise ValueError(
                f"character {c!r} at position {pos} is not in this CharTokenizer's alphabet "
                f"of {self.vocab_size} characters"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if not all(0 <= i < len(self.chars) for i in ids):
            raise _bad_id(ids, self.vocab_size, range(self.vocab_size))
        return "".join([self.chars[i] for i in ids])

    def to_dict(self) -> dict[str, Any]:
        return {"format": "minigen.CharTokenizer", "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> CharTokenizer:
        if not isinstance(d.get("chars"), list):
            raise ValueError(f"{source}: a CharTokenizer needs a list 'chars'")
        return cls(d["chars"])

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (non-ASCII characters escaped), atomically."""
        atomic_write(path, json.dumps(self.to_dict()).encode("ascii"))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        return cls.from_dict(_read_json(path), str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------- pieces
class PieceTokenizer:
    """A vocabulary of strings, `pieces[i]` token i; encoding takes, at each position, the
    longest piece the text starts with there (so "I: a, O:" is one token if it is a piece)."""

    def __init__(self, pieces: Iterable[str]) -> None:
        self.pieces = list(pieces)
        if not all(isinstance(p, str) and p for p in self.pieces):
            raise ValueError("a PieceTokenizer's pieces are non-empty strings")
        self._ids = {p: i for i, p in enumerate(self.pieces)}
        if len(self._ids) != len(self.pieces):
            dup = next(p for p, n in Counter(self.pieces).items() if n > 1)
            raise ValueError(f"piece {dup!r} appears twice in the vocabulary")
        # an alternation tries its branches in order: longest first makes the match greedy
        longest_first = sorted(self.pieces, key=len, reverse=True)
        self._re = re.compile("|".join(map(re.escape, longest_first)))

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> list[int]:
        ids, pos = [], 0
        while pos < len(text):
            m = self._re.match(text, pos)
            if m is None:
                raise ValueError(
                    f"text at position {pos} ({text[pos : pos + 12]!r}) starts with none of "
                    f"this PieceTokenizer's {self.vocab_size} pieces"
                )
            ids.append(self._ids[m.group()])
            pos = m.end()
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if not all(0 <= i < len(self.pieces) for i in ids):
            raise _bad_id(ids, self.vocab_size, range(self.vocab_size))
        return "".join([self.pieces[i] for i in ids])

    def to_dict(self) -> dict[str, Any]:
        return {"format": "minigen.PieceTokenizer", "pieces": self.pieces}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> PieceTokenizer:
        if not isinstance(d.get("pieces"), list):
            raise ValueError(f"{source}: a PieceTokenizer needs a list 'pieces'")
        return cls(d["pieces"])

    def save(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_dict()).encode("ascii"))

    @classmethod
    def load(cls, path: str | Path) -> PieceTokenizer:
        return cls.from_dict(_read_json(path), str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PieceTokenizer) and self.pieces == other.pieces

    def __repr__(self) -> str:
        return f"PieceTokenizer(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------- byte-level BPE
class ByteBPETokenizer:
    """GPT-2's byte-level BPE tokenizer: `vocab` token -> id, `merges` in rank order.

    Tokens are written in GPT-2's byte alphabet (`bytes_to_unicode`); `special_tokens`
    (default: <|endoftext|> when the vocabulary has it) stand for their own text. `encode`
    reads special tokens in a text as plain text unless `allow_special=True`.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        special_tokens: Iterable[str] | None = None,
        *,
        vocab_source: str = "vocab",
        merges_source: str = "merges",
    ) -> None:
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        if special_tokens is None:
            special_tokens = [EOT] if EOT in self.vocab else []
        self.special_tokens = {s: self._id(s, vocab_source) for s in special_tokens}
        decoder = {b: i for i, b in bytes_to_unicode().items()}  # GPT-2 character -> byte
        self._bytes: dict[int, bytes] = {}  # id -> bytes
        for token, i in self.vocab.items():
            if i in self._bytes:
                other = next(t for t, j in self.vocab.items() if j == i)
                raise ValueError(f"{vocab_source}: tokens {other!r} and {token!r} share id {i}")
            if token in self.special_tokens:
                self._bytes[i] = token.encode("utf-8")
                continue
            bad = [c for c in token if c not in decoder]
            if bad:
                raise ValueError(
                    f"{vocab_source}: token {token!r} (id {i}) has the character {bad[0]!r}, "
                    "which is not in GPT-2's byte alphabet"
                )
            self._bytes[i] = bytes(decoder[c] for c in token)
        # byte value -> id of its one-byte token
        table = bytes_to_unicode()
        self._byte_ids = [self._id(table[b], vocab_source, f" (byte {b})") for b in range(256)]
        # (id a, id b) -> (rank, id of ab)
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            where = f"{merges_source}: merge {rank + 1} {a + ' ' + b!r}"
            for part in (a, b, a + b):
                if part not in self.vocab:
                    role = "its result" if part == a + b else "its part"
                    raise ValueError(f"{where}: {role} {part!r} is not in {vocab_source}")
            pair = (self.vocab[a], self.vocab[b])
            if pair in self._ranks:
                raise ValueError(f"{where} repeats merge {self._ranks[pair][0] + 1}")
            self._ranks[pair] = (rank, self.vocab[a + b])
        if self.special_tokens:
            alternatives = sorted(self.special_tokens, key=len, reverse=True)
            self._special_re = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        self._cache: dict[str, list[int]] = {}  # word -> its ids

    def _id(self, token: str, source: str, detail: str = "") -> int:
        if token not in self.vocab:
            raise ValueError(f"{source}: token {token!r}{detail} is missing")
        return self.vocab[token]

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Sequence[str] = (EOT,),
        progress: bool = False,
    ) -> ByteBPETokenizer:
        """Learn a vocabulary of at most `vocab_size` tokens on `text` (see `train_bpe`)."""
        vocab, merges = train_bpe(text, vocab_size, special_tokens, progress)
        return cls(vocab, merges, special_tokens)

    @property
    def vocab_size(self) -> int:
        """1 + the largest id (the rows of an embedding table for this vocabulary)."""
        return max(self.vocab.values()) + 1

    @property
    def eot_id(self) -> int | None:
        """The id of <|endoftext|>, or None."""
        return self.special_tokens.get(EOT)

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. With `allow_special`, special tokens in the text become their
        ids (as transformers' GPT2Tokenizer does); otherwise they are ordinary text."""
        if not (allow_special and self.special_tokens):
            return self._encode_ordinary(text)
        ids: list[int] = []
        for k, piece in enumerate(self._special_re.split(text)):
            # split with a group: the odd pieces are the special tokens
            ids += [self.special_tokens[piece]] if k % 2 else self._encode_ordinary(piece)
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in pretokenize(text):
            word_ids = self._cache.get(word)
            if word_ids is None:
                data = word.encode("utf-8", "surrogatepass")
                word_ids = bpe_merge([self._byte_ids[b] for b in data], self._ranks)
                if len(self._cache) >= 100_000:
                    self._cache.clear()
                self._cache[word] = word_ids
            ids += word_ids
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = list(ids)
        try:
            return b"".join([self._bytes[int(i)] for i in ids])
        except KeyError:
            raise _bad_id(ids, self.vocab_size, self._bytes) from None

    def decode(self, ids: Iterable[int]) -> str:
        return _decode_utf8(self.decode_bytes(ids))

    def token_bytes(self, i: int) -> bytes:
        """The bytes token `i` stands for."""
        return self.decode_bytes([i])

    # ------------------------------------------------------------------------- files
    @classmethod
    def from_files(
        cls,
        vocab_file: str | Path,
        merges_file: str | Path,
        special_tokens: Iterable[str] | None = None,
    ) -> ByteBPETokenizer:
        """GPT-2's format: vocab.json (token -> id) and merges.txt (one merge 'a b' a line)."""
        vocab, merges = read_gpt2_files(vocab_file, merges_file)
        sources = {"vocab_source": str(vocab_file), "merges_source": str(merges_file)}
        return cls(vocab, merges, special_tokens, **sources)

    def save_gpt2_files(self, directory: str | Path) -> tuple[Path, Path]:
        """Write vocab.json and merges.txt into `directory`; returns their paths."""
        return write_gpt2_files(directory, self.vocab, self.merges)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "minigen.ByteBPETokenizer",
            "vocab": self.vocab,
            "merges": [f"{a} {b}" for a, b in self.merges],
            "special_tokens": list(self.special_tokens),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> ByteBPETokenizer:
        if not isinstance(d.get("merges"), list) or not isinstance(d.get("special_tokens"), list):
            raise ValueError(f"{source}: a ByteBPETokenizer needs lists 'merges', 'special_tokens'")
        vocab = check_vocab(d.get("vocab"), f"{source} (vocab)")
        if not all(isinstance(m, str) for m in d["merges"]):
            raise ValueError(f"{source}: 'merges' must be strings 'a b'")
        merges = parse_merges("\n".join(d["merges"]), f"{source} (merges)")
        return cls(vocab, merges, d["special_tokens"], vocab_source=source, merges_source=source)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as one JSON file, atomically."""
        atomic_write(path, json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> ByteBPETokenizer:
        return cls.from_dict(_read_json(path), str(path))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ByteBPETokenizer)
            and self.vocab == other.vocab
            and self.merges == other.merges
            and self.special_tokens == other.special_tokens
        )

    def __repr__(self) -> str:
        return f"ByteBPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"


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
    return tokenizer_from_dict(_read_json(path), str(path))
