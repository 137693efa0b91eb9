"""Text corpora for the GPT of §7.1, and the files they come from.

- "stdlib" (the default): the running interpreter's standard-library Python sources, a
  deterministic selection (sorted paths, tests and site-packages left out, cut at about
  1.5 million characters). Present wherever Python is, no download; the same text on every
  run of one interpreter.
- "shakespeare": tiny Shakespeare (1.1 MB, Karpathy's char-rnn), downloaded on first use
  into the cache directory ($MINIGEN_CACHE, default ~/.cache/minigen) and checked by md5;
  or read from a local copy with `shakespeare_corpus(path)`.
- any UTF-8 text file, by its path.

A language model trained on blocks of `block_size` tokens predicts token t+1 from tokens
<= t, so a corpus needs at least block_size + 1 tokens (`check_corpus_length`).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence, Sized
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

__all__ = [
    "SHAKESPEARE_URL",
    "SHAKESPEARE_MD5",
    "CORPUS_NAMES",
    "load_corpus",
    "stdlib_corpus",
    "shakespeare_corpus",
    "read_text_file",
    "download",
    "cache_dir",
    "train_val_split",
    "check_corpus_length",
]

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_MD5 = "6fb458f1232090904fb40fe944165e91"
CORPUS_NAMES = ("stdlib", "shakespeare")

# directories of the standard library left out of the "stdlib" corpus
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}

T = TypeVar("T", bound=Sequence)


def cache_dir() -> Path:
    """Where downloads go: $MINIGEN_CACHE, or ~/.cache/minigen."""
    return Path(os.environ.get("MINIGEN_CACHE") or Path.home() / ".cache" / "minigen")


def download(url: str, dest: str | Path, md5: str) -> Path:
    """Fetch `url` (http(s):// or file://) into `dest`, atomically, checking its md5.

    The bytes go to a temporary file beside `dest`; a wrong md5 deletes it and raises
    ValueError naming both digests, and `dest` is only ever the complete, verified file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    while chunk := response.read(1 << 16):
                        f.write(chunk)
                        digest.update(chunk)
            except urllib.error.URLError as e:
                raise OSError(
                    f"could not download {url}: {e.reason}; fetch it by hand and give its path"
                ) from None
        if digest.hexdigest() != md5:
            raise ValueError(
                f"{url} downloaded with md5 {digest.hexdigest()}, expected {md5}; "
                "the partial file was deleted"
            )
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def read_text_file(path: str | Path) -> str:
    """The text of a UTF-8 file, bytes as they are (no newline translation).

    Raises FileNotFoundError for a missing file, ValueError for a directory, an empty file
    or bytes that are not UTF-8 (naming the file and the offset of the first bad byte).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if not path.is_file():
        raise ValueError(f"corpus path {path} is not a file")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"corpus file {path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"corpus file {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start}"
        ) from None


@lru_cache(maxsize=4)
def stdlib_corpus(max_chars: int = 1_500_000) -> str:
    """The standard library's .py sources, sorted by path, cut at `max_chars` characters.

    Each file is preceded by a line `# ---- <path relative to the stdlib> ----`; the last
    file is cut at a line end. Files that are not UTF-8 are skipped.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP]
        paths += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    paths.sort(key=lambda p: p.relative_to(root).as_posix())
    parts: list[str] = []
    size = 0
    for path in paths:
        try:
            source = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        part = f"# ---- {path.relative_to(root).as_posix()} ----\n{source}\n"
        if size + len(part) > max_chars:
            cut = part.rfind("\n", 0, max_chars - size)
            parts.append(part[: cut + 1])
            break
        parts.append(part)
        size += len(part)
    text = "".join(parts)
    if not text:
        raise ValueError(f"no standard-library source found under {root}")
    return text


def shakespeare_corpus(
    path: str | Path | None = None, *, url: str = SHAKESPEARE_URL, cache: str | Path | None = None
) -> str:
    """Tiny Shakespeare: from `path` if given, else from the cache, downloaded on first use.

    A cached copy whose md5 is not SHAKESPEARE_MD5 is deleted and fetched again.
    """
    if path is not None:
        return read_text_file(path)
    dest = Path(cache) if cache is not None else cache_dir()
    dest = dest / "tinyshakespeare.txt"
    if dest.is_file() and _md5_of(dest) != SHAKESPEARE_MD5:
        dest.unlink()
    if not dest.is_file():
        download(url, dest, SHAKESPEARE_MD5)
    return read_text_file(dest)


def load_corpus(name_or_path: str | Path = "stdlib") -> str:
    """The text of a named corpus ("stdlib", "shakespeare") or of a UTF-8 file.

    Names come first: a file called `stdlib` in the working directory is `./stdlib`.
    """
    if name_or_path == "stdlib":
        return stdlib_corpus()
    if name_or_path == "shakespeare":
        return shakespeare_corpus()
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"corpus {str(name_or_path)!r} is neither a name ({', '.join(CORPUS_NAMES)}) "
            "nor an existing file"
        )
    return read_text_file(path)


def train_val_split(data: T, train_fraction: float = 0.9) -> tuple[T, T]:
    """(data[:n], data[n:]) with n = floor(train_fraction * len(data)): the first 90% to
    train on, the rest to validate (a str, a list of token ids or a 1-D array)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n = int(train_fraction * len(data))
    if n == 0 or n == len(data):
        raise ValueError(
            f"cannot split {len(data)} items with train_fraction={train_fraction}: "
            "one of the parts would be empty"
        )
    return data[:n], data[n:]


def check_corpus_length(tokens: Sized | int, block_size: int, name: str = "corpus") -> None:
    """Raise ValueError unless `tokens` (a sequence, or its length) has >= block_size + 1
    tokens: a block of inputs x_1..x_T needs the targets x_2..x_{T+1}."""
    have = tokens if isinstance(tokens, int) else len(tokens)
    need = block_size + 1
    if have < need:
        raise ValueError(
            f"{name} has {have} tokens; block_size={block_size} needs at least {need} "
            "(inputs and their next-token targets)"
        )
