"""Corpora: the stdlib default, tiny Shakespeare (download, md5, cache), user files, splits."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen.text.corpus import (
    SHAKESPEARE_MD5,
    cache_dir,
    check_corpus_length,
    download,
    load_corpus,
    read_text_file,
    shakespeare_corpus,
    stdlib_corpus,
    train_val_split,
)
from tests.strategies import texts

REPO = Path(__file__).resolve().parents[1]
# the real file, in the shared/ folder beside the repository (a worktree looks further up)
SHAKESPEARE = next(
    (p for p in (d / "shared/data/tinyshakespeare.txt" for d in REPO.parents) if p.is_file()),
    None,
)
needs_shakespeare = pytest.mark.skipif(
    SHAKESPEARE is None, reason="no ../shared/data/tinyshakespeare.txt beside the repository"
)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# ----------------------------------------------------------------------------- files
@given(texts())
def test_read_text_file_keeps_the_text_as_it_is(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    text = "\r\n" + text.encode("utf-8", "replace").decode("utf-8")  # no newline translation
    path = tmp_path_factory.mktemp("read") / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    assert read_text_file(path) == text
    assert load_corpus(path) == load_corpus(str(path)) == text


def test_read_text_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_text_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        read_text_file(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("abc café".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8 text: byte 0xe9 at offset 7"):
        read_text_file(tmp_path / "latin1.txt")
    with pytest.raises(ValueError, match="is not a file"):
        read_text_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a name .*stdlib, shakespeare"):
        load_corpus("shakespear")


# ----------------------------------------------------------------------------- stdlib
def test_stdlib_corpus_is_deterministic_and_capped() -> None:
    text = stdlib_corpus()
    stdlib_corpus.cache_clear()
    assert stdlib_corpus() == text == load_corpus() == load_corpus("stdlib")
    assert 0 < len(text) <= 1_500_000
    assert text.startswith("# ---- ") and text.endswith("\n")
    # a smaller cap cuts the same sequence of files earlier
    small = stdlib_corpus(100_000)
    assert len(small) <= 100_000 and text.startswith(small)


# ----------------------------------------------------------------------------- download
def _file_url(path: Path) -> str:
    return path.resolve().as_uri()


def test_download_verifies_md5_and_writes_atomically(tmp_path: Path) -> None:
    source = tmp_path / "source.txt"
    source.write_bytes(b"To be, or not to be\n" * 1000)
    dest = tmp_path / "cache" / "copy.txt"
    assert download(_file_url(source), dest, _md5(source.read_bytes())) == dest
    assert dest.read_bytes() == source.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["copy.txt"]


def test_download_with_wrong_md5_deletes_the_partial_file(tmp_path: Path) -> None:
    source = tmp_path / "corrupted.txt"
    source.write_bytes(b"First Citizen:\nBefore we proceed any further, hear me speak\n")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as err:
        shakespeare_corpus(url=_file_url(source), cache=cache)
    assert SHAKESPEARE_MD5 in str(err.value) and _md5(source.read_bytes()) in str(err.value)
    assert list(cache.iterdir()) == []


def test_download_of_a_missing_url_says_which(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="could not download file:.*nowhere.txt"):
        download(_file_url(tmp_path / "nowhere.txt"), tmp_path / "cache" / "x.txt", "0" * 32)
    assert list((tmp_path / "cache").iterdir()) == []


@needs_shakespeare
def test_shakespeare_is_downloaded_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIGEN_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    text = shakespeare_corpus(url=_file_url(SHAKESPEARE))
    assert text == SHAKESPEARE.read_bytes().decode("utf-8")
    assert _md5((tmp_path / "cache" / "tinyshakespeare.txt").read_bytes()) == SHAKESPEARE_MD5
    # now cached: no address is read again
    assert shakespeare_corpus(url=_file_url(tmp_path / "nowhere.txt")) == text
    assert load_corpus("shakespeare") == text
    # a damaged cached copy is fetched again
    (tmp_path / "cache" / "tinyshakespeare.txt").write_bytes(b"damaged")
    assert shakespeare_corpus(url=_file_url(SHAKESPEARE)) == text
    assert shakespeare_corpus(SHAKESPEARE) == text


@needs_shakespeare
def test_a_corrupted_copy_of_shakespeare_is_refused(tmp_path: Path) -> None:
    corrupted = tmp_path / "input.txt"
    shutil.copy(SHAKESPEARE, corrupted)
    with corrupted.open("r+b") as f:
        f.seek(1000)
        f.write(b"X")
    with pytest.raises(ValueError, match=SHAKESPEARE_MD5):
        shakespeare_corpus(url=_file_url(corrupted), cache=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_dir_defaults_to_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINIGEN_CACHE", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "minigen"


# ----------------------------------------------------------------------------- splits
@given(st.lists(st.integers(0, 50), min_size=2, max_size=200), st.floats(0.05, 0.95))
def test_train_val_split_cuts_once(ids: list[int], fraction: float) -> None:
    n = int(fraction * len(ids))
    if n in (0, len(ids)):
        with pytest.raises(ValueError, match=f"cannot split {len(ids)} items"):
            train_val_split(ids, fraction)
        return
    for data in (ids, np.array(ids), "".join(map(chr, np.array(ids) + 65))):
        train, val = train_val_split(data, fraction)
        assert len(train) == n and len(val) == len(ids) - n
        assert list(train) + list(val) == list(data)


def test_train_val_split_default_is_ninety_percent() -> None:
    train, val = train_val_split(list(range(1000)))
    assert (len(train), len(val)) == (900, 100)
    with pytest.raises(ValueError, match="train_fraction"):
        train_val_split([1, 2, 3], 1.0)


@given(st.integers(0, 300), st.integers(1, 300))
def test_check_corpus_length(n: int, block_size: int) -> None:
    if n >= block_size + 1:
        check_corpus_length(list(range(n)), block_size)
        check_corpus_length(n, block_size)
        return
    with pytest.raises(ValueError) as err:
        check_corpus_length(np.zeros(n, dtype=np.int64), block_size, name="validation split")
    message = str(err.value)
    assert f"has {n} tokens" in message and f"at least {block_size + 1}" in message
    assert message.startswith("validation split")
