"""GPT-2's byte-level BPE: the byte table, the pre-tokeniser, the merge-rank encoding,
training, and the vocab.json / merges.txt files.

A text is cut into *words* by GPT-2's pattern

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

(contractions, an optional space then letters, digits or other symbols, whitespace runs);
each word is turned into its UTF-8 bytes, and the bytes into token ids. A learned list of
*merges* (pairs of tokens, in rank order) is then applied to each word on its own:

    while some adjacent pair (a, b) of the word is a merge:
        take the pair of lowest rank; replace every occurrence, left to right, by ab

(Sennrich et al. 2016; Radford et al. 2019). Merges never cross word boundaries, so
encoding a text is encoding its words, and a word's tokens can be cached.

Training learns the merges greedily: starting from the 256 byte tokens, it appends the
merge of the most frequent adjacent pair,

    (a, b) = argmax_{(a, b)} sum_{words w} freq(w) * #{i : w_i = a, w_{i+1} = b},

applies it to every word, and repeats until the vocabulary is full.

GPT-2 writes each byte as a printable unicode character (`bytes_to_unicode`: the space
0x20 becomes 'Ġ', the newline 'Ċ'), so that tokens are strings without whitespace: this is
the alphabet of vocab.json (token -> id) and merges.txt (one merge "a b" a line).
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import regex
from tqdm.auto import tqdm

from minigen.checkpoint import atomic_write

__all__ = [
    "EOT",
    "GPT2_PATTERN",
    "bytes_to_unicode",
    "bytes_to_gpt2_str",
    "pretokenize",
    "bpe_merge",
    "merge_pair",
    "train_bpe",
    "read_gpt2_files",
    "write_gpt2_files",
]

EOT = "<|endoftext|>"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte -> printable character; its order gives the byte tokens' ids.

    Bytes that are printable Latin-1 characters stand for themselves; the 68 others
    (controls, the space, 0x7F-0xA0, the soft hyphen 0xAD) take the characters 256, 257, ...
    in byte order. The i-th byte of `list(table)` is token i of GPT-2's vocabulary.
    """
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += range(ord("®"), ord("ÿ") + 1)
    chars = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, chars), strict=True))


def bytes_to_gpt2_str(data: bytes) -> str:
    """A token's bytes as GPT-2 writes them (b" the" -> "Ġthe")."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


# ----------------------------------------------------------------------------- pre-tokeniser
# Python's `re` has no \p{L} (letter) or \p{N} (number); the `regex` module, which GPT-2's own
# encoder.py used, has them, from its own Unicode tables (newer than `unicodedata`'s: a code
# point that a later Unicode made a letter is a letter here, as in GPT-2's tokenizer).
_PATTERN = regex.compile(GPT2_PATTERN)


def pretokenize(text: str) -> list[str]:
    """Cut `text` into GPT-2's words (the matches of GPT2_PATTERN); "".join(words) == text."""
    return _PATTERN.findall(text)


# ----------------------------------------------------------------------------- merges
def merge_pair(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids`, left to right, by `new`."""
    a, b = pair
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bpe_merge(ids: list[int], ranks: dict[tuple[int, int], tuple[int, int]]) -> list[int]:
    """GPT-2's merge loop on one word: `ranks[(a, b)] = (rank, id of ab)`."""
    ids = list(ids)
    while len(ids) >= 2:
        # the adjacent pair of lowest rank (min keeps the first; equal ranks mean equal pairs)
        best = min(pairwise(ids), key=lambda pair: ranks.get(pair, (float("inf"),))[0])
        if best not in ranks:
            break
        ids = merge_pair(ids, best, ranks[best][1])
    return ids


# ----------------------------------------------------------------------------- training
def train_bpe(
    text: str,
    vocab_size: int,
    special_tokens: Sequence[str] = (EOT,),
    progress: bool = False,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn GPT-2-style merges on `text`; returns (vocab token -> id, merges in rank order).

    Ids 0..255 are the bytes in GPT-2's order (`bytes_to_unicode`), merges take the next
    ids, the special tokens the last ones. Training stops at `vocab_size` tokens, or earlier
    when no pair is left (every word a single token).

    Each step merges the most frequent pair; among equally frequent pairs, the one whose
    (bytes of a, bytes of b) is lexicographically smallest. Words are counted once, and each
    merge updates the pair counts of only the words that hold the pair.
    """
    if len(set(special_tokens)) != len(special_tokens) or "" in special_tokens:
        raise ValueError(f"special tokens must be distinct non-empty strings: {special_tokens!r}")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the 256 bytes and {len(special_tokens)} "
            "special tokens need that many ids"
        )
    table = bytes_to_unicode()
    token_bytes = [bytes([b]) for b in table]  # id -> its bytes
    id_of = {tb: i for i, tb in enumerate(token_bytes)}  # bytes -> id
    # the corpus as distinct words (as byte-token ids) and how often each occurs
    counts = Counter(pretokenize(text))
    words = [[id_of[bytes([b])] for b in w.encode("utf-8", "surrogatepass")] for w in counts]
    freqs = list(counts.values())
    # count(a, b) = sum over words w of freq(w) * (number of adjacent (a, b) in w)
    stats: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that hold it
    for w, word in enumerate(words):
        for pair in pairwise(word):
            stats[pair] += freqs[w]
            where[pair].add(w)
    # max-heap on (count, then smallest bytes); stale entries are skipped when popped
    heap = [(-c, token_bytes[a], token_bytes[b], a, b) for (a, b), c in stats.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    target = vocab_size - len(special_tokens)
    bar = tqdm(total=target - len(token_bytes), disable=not progress, desc="BPE merges")
    while len(token_bytes) < target and heap:
        negc, _, _, a, b = heapq.heappop(heap)
        if stats.get((a, b)) != -negc:
            continue
        # the new token ab (an existing id if another merge already made these bytes)
        new = id_of.setdefault(token_bytes[a] + token_bytes[b], len(token_bytes))
        if new == len(token_bytes):
            token_bytes.append(token_bytes[a] + token_bytes[b])
            bar.update()
        merges.append((a, b))
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for w in where.pop((a, b)):
            word, f = words[w], freqs[w]
            merged = merge_pair(word, (a, b), new)
            for pair in pairwise(word):
                delta[pair] -= f
            for pair in pairwise(merged):
                delta[pair] += f
                if new in pair:
                    where[pair].add(w)
            words[w] = merged
        for pair, d in delta.items():
            if d:
                stats[pair] += d
                if stats[pair] > 0:
                    heapq.heappush(heap, (-stats[pair], *map(token_bytes.__getitem__, pair), *pair))
                else:
                    del stats[pair]
    bar.close()
    names = [bytes_to_gpt2_str(tb) for tb in token_bytes]
    vocab = {name: i for i, name in enumerate(names)}
    for s in special_tokens:
        if s in vocab:
            raise ValueError(f"special token {s!r} is also an ordinary token")
        vocab[s] = len(vocab)
    return vocab, [(names[a], names[b]) for a, b in merges]


# ----------------------------------------------------------------------------- files
def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} file {path} is not UTF-8: {e}") from None


def check_vocab(vocab: object, source: str) -> dict[str, int]:
    """`vocab` if it is a dict token -> id (an int >= 0); errors name `source` and the entry."""
    if not isinstance(vocab, dict):
        kind = type(vocab).__name__
        raise ValueError(f"{source}: expected a JSON object token -> id, got {kind}")
    for token, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"{source}: token {token!r} has id {i!r}, not an integer >= 0")
    return vocab


def parse_vocab(text: str, source: str) -> dict[str, int]:
    """vocab.json's text -> {token: id}."""
    try:
        return check_vocab(json.loads(text), source)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not valid JSON: {e}") from None


def parse_merges(text: str, source: str) -> list[tuple[str, str]]:
    """merges.txt's text -> [(a, b), ...] in rank order (a '#version' first line is skipped)."""
    merges = []
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{source} line {n}: expected two tokens 'a b', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def read_gpt2_files(
    vocab_file: str | Path, merges_file: str | Path
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read GPT-2's vocab.json and merges.txt (the entries are checked by the tokenizer)."""
    vocab_file, merges_file = Path(vocab_file), Path(merges_file)
    vocab = parse_vocab(_read_text(vocab_file, "vocab"), str(vocab_file))
    merges = parse_merges(_read_text(merges_file, "merges"), str(merges_file))
    return vocab, merges


def write_gpt2_files(
    directory: str | Path, vocab: dict[str, int], merges: Iterable[tuple[str, str]]
) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt into `directory` (atomically); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ordered = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    vocab_text = json.dumps(ordered, ensure_ascii=False)
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    atomic_write(vocab_path, vocab_text.encode("utf-8"))
    atomic_write(merges_path, merges_text.encode("utf-8"))
    return vocab_path, merges_path
