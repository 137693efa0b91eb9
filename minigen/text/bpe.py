"""GPT-2's byte-level BPE tokenizer (§7.1): every string encodes, the vocabulary is learned.

The 256 bytes are the first tokens, so every string can be encoded; training then adds, one at
a time, the token ab for the most frequent adjacent pair (a, b) of tokens in the corpus's
words, until the vocabulary has V tokens (the last id is the special token <|endoftext|>).
The GPT-2 conventions (byte table, pre-tokeniser, merge-rank encoding, training, files) are in
`minigen.text.hf.gpt2_tokenizer`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from minigen.checkpoint import atomic_write
from minigen.text.char_tokenizers import bad_id, read_json
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

__all__ = ["ByteBPETokenizer"]


def _decode_utf8(data: bytes) -> str:
    # surrogatepass brings back lone surrogates that encode let through; a sequence of ids
    # that cuts a character in two decodes with U+FFFD in its place, as GPT-2 does
    try:
        return data.decode("utf-8", errors="surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


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
            raise bad_id(ids, self.vocab_size, self._bytes) from None

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
        return cls.from_dict(read_json(path), str(path))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ByteBPETokenizer)
            and self.vocab == other.vocab
            and self.merges == other.merges
            and self.special_tokens == other.special_tokens
        )

    def __repr__(self) -> str:
        return f"ByteBPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"
