"""Tokenizers of a fixed vocabulary: one token per character, or per piece (§7.1).

- CharTokenizer: one token per character of a fixed alphabet (the characters of the training
  text, sorted). Small V, long sequences.
- PieceTokenizer: a fixed vocabulary of strings ("pieces"), a text cut greedily into the
  longest piece at each position (a word-level vocabulary, for synthetic corpora).

`read_json` and `bad_id` serve the byte-level BPE (`bpe.py`) too.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from minigen.checkpoint import atomic_write

__all__ = ["CharTokenizer", "PieceTokenizer", "read_json", "bad_id"]


def read_json(path: str | Path) -> Any:
    """A tokenizer's JSON file, or an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file: {e}") from None


def bad_id(ids: Sequence[int], vocab_size: int, known: Any) -> ValueError:
    """The error for the first id of `ids` not in `known`, naming it and its position."""
    pos, i = next((p, i) for p, i in enumerate(ids) if int(i) not in known)
    return ValueError(
        f"token id {i} at position {pos} is not in the vocabulary (size {vocab_size})"
    )


_V = TypeVar("_V", bound="_Vocabulary")


class _Vocabulary:
    """What both tokenizers do with their list of tokens (the list named by `KEY`: `chars`
    or `pieces`): its size, decoding, JSON I/O, equality. Each subclass encodes its own way."""

    KEY: str

    def _table(self) -> list[str]:
        return getattr(self, self.KEY)

    @property
    def vocab_size(self) -> int:
        return len(self._table())

    def decode(self, ids: Iterable[int]) -> str:
        table, ids = self._table(), list(ids)
        if not all(0 <= i < len(table) for i in ids):
            raise bad_id(ids, self.vocab_size, range(self.vocab_size))
        return "".join([table[i] for i in ids])

    def to_dict(self) -> dict[str, Any]:
        return {"format": f"minigen.{type(self).__name__}", self.KEY: self._table()}

    @classmethod
    def from_dict(cls: type[_V], d: dict[str, Any], source: str = "<dict>") -> _V:
        if not isinstance(d.get(cls.KEY), list):
            raise ValueError(f"{source}: a {cls.__name__} needs a list '{cls.KEY}'")
        return cls(d[cls.KEY])

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (non-ASCII characters escaped), atomically."""
        atomic_write(path, json.dumps(self.to_dict()).encode("ascii"))

    @classmethod
    def load(cls: type[_V], path: str | Path) -> _V:
        return cls.from_dict(read_json(path), str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and self._table() == other._table()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------- characters
class CharTokenizer(_Vocabulary):
    """One id per character: `chars[i]` is token i."""

    KEY = "chars"

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

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            pos, c = next((p, c) for p, c in enumerate(text) if c not in self._ids)
            raise ValueError(
                f"character {c!r} at position {pos} is not in this CharTokenizer's alphabet "
                f"of {self.vocab_size} characters"
            ) from None


# ----------------------------------------------------------------------------- pieces
class PieceTokenizer(_Vocabulary):
    """A vocabulary of strings, `pieces[i]` token i; encoding takes, at each position, the
    longest piece the text starts with there (so "I: a, O:" is one token if it is a piece)."""

    KEY = "pieces"

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

    def encode(self, text: str) -> list[int]:
        ids, pos = [], 0
        while pos < len(text):
            m = self._re.match(text, pos)
            if m is None:
                raise ValueError(
                    f"text at position {pos} ({text[pos : pos + 12]!r}) starts with none of "
                    f"this PieceTokenizer's {self.vocab_size} pieces; {self._hint(text[pos:])}"
                )
            ids.append(self._ids[m.group()])
            pos = m.end()
        return ids

    def _hint(self, rest: str) -> str:
        """The pieces nearest `rest` (the longest common start), and a few of the others."""

        def common(piece: str) -> int:
            n = 0
            while n < min(len(piece), len(rest)) and piece[n] == rest[n]:
                n += 1
            return n

        best = max(map(common, self.pieces))
        near = [p for p in self.pieces if best and common(p) == best][:3]
        some = self.pieces[:3] + ["..."] + self.pieces[-2:] if self.vocab_size > 6 else self.pieces
        listed = ", ".join(p if p == "..." else repr(p) for p in some)
        if near:
            return f"did you mean {' or '.join(map(repr, near))}? The pieces: {listed}"
        return f"the pieces: {listed}"
