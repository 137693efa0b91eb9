"""Where a training run writes: checkpoints as transactions, one writer per destination.

A checkpoint of several files must never be seen half-written. `transaction(dest)` gives a
staging folder beside `dest` (same file system); the caller writes every file of the
checkpoint into it; on leaving the block the files and the folder are flushed to disk and the
staging folder *becomes* `dest` in one atomic step:

    Linux        renameat2(RENAME_EXCHANGE) swaps the two folders in one system call;
    elsewhere    dest -> .dest.old, staging -> dest, then .dest.old removed: a crash between
                 the two renames leaves no `dest` but a complete `.dest.old`, which
                 `recover(dest)` (called by the next writer) puts back, and which a reader
                 finds at `previous(dest)` meanwhile.

So a reader sees the previous complete checkpoint or the new complete one, never a mix; an
exception (a full disk, a kill, Ctrl-C) inside the block leaves `dest` untouched, byte for byte.
Files in `dest` that the new checkpoint does not write (a user's notes, a sample) are carried
over (hard links: no copy, no loss).

`RunLock(dest)` makes a run the only writer of `dest`: a lock file `.NAME.lock` beside it holds
the owner's pid and is locked with flock(2), which the kernel releases when the process dies,
so a stale lock (a killed run) never blocks the next one. A second run into the same `--out`
stops at once with one line naming the owner.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

__all__ = [
    "RunLock", "RunLockedError", "transaction", "recover", "previous", "check_writable_dir",
    "refuse_overwrite",
]  # fmt: skip


class RunLockedError(RuntimeError):
    """Another run is writing into the same destination."""


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new names, renames) to disk; a no-op where folders can't be
    opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def previous(dest: str | os.PathLike) -> Path:
    """Where the previous checkpoint sits while a commit without an atomic swap is between its
    two renames (a reader that finds no `dest` reads this)."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}.old"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where the
    system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # a libc older than glibc 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover(dest: str | os.PathLike) -> None:
    """Finish or undo a commit that a crash cut between its two renames (see the module
    docstring). Call it while holding the destination's lock."""
    dest = Path(dest)
    old = previous(dest)
    if old.exists():
        if dest.exists():  # the new checkpoint is in place: the old one was being removed
            shutil.rmtree(old, ignore_errors=True)
        else:  # cut between the renames: put the previous complete checkpoint back
            os.replace(old, dest)
            _fsync_dir(dest.parent)


def _remove_staging(dest: Path) -> None:
    """Remove staging folders of `dest` left by killed runs (only the lock's holder may)."""
    for stale in dest.parent.glob(f".{dest.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _carry_over(dest: Path, staging: Path, owned: Collection[str]) -> None:
    """Hard-link (or copy) into `staging` what `dest` holds that the new checkpoint lacks,
    except the names of the checkpoint's own files (`owned`: a new one without them drops them)."""
    for entry in dest.iterdir():
        target = staging / entry.name
        if entry.name in owned or target.exists() or target.is_symlink():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _commit(staging: Path, dest: Path) -> None:
    """Make `staging` the folder `dest`, atomically (see the module docstring)."""
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a folder")
    if not dest.exists():
        os.rename(staging, dest)  # nothing to replace: one rename
    elif _exchange(staging, dest):
        shutil.rmtree(staging)  # `staging` now holds the previous checkpoint
    else:
        os.rename(dest, previous(dest))
        os.rename(staging, dest)  # a crash between the two renames: `recover` undoes it
        shutil.rmtree(previous(dest))
    _fsync_dir(dest.parent)


@contextlib.contextmanager
def transaction(dest: str | os.PathLike, owned: Collection[str] = ()) -> Iterator[Path]:
    """Write a checkpoint folder as one transaction: yields the staging folder to write into;
    on a normal exit it replaces `dest` atomically, on an exception it is removed and `dest`
    is left as it was. Files of `dest` are carried into the new folder unless the new one
    writes them or their name is in `owned` (the checkpoint format's own files)."""
    from minigen.checkpoint import _write

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
        yield staging
        if dest.is_dir():
            _carry_over(dest, staging, set(owned))
        for f in staging.rglob("*"):  # every file on disk before the folder is made current
            if f.is_file() and not f.is_symlink():
                with open(f, "rb+") as fh:
                    _write(fh, b"")  # flush + fsync (and a point where the fault tests fail)
        _fsync_dir(staging)
        _commit(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_writable_dir(folder: str | os.PathLike) -> None:
    """Raise an OSError naming `folder` unless files can be created in it (made if missing)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".minigen-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(
            e.errno, f"cannot write into {folder} ({e.strerror or e}); choose another --out"
        ) from None


def refuse_overwrite(
    paths: str | os.PathLike | Iterable[str | os.PathLike | None], force: bool
) -> None:
    """Raise FileExistsError naming the first of `paths` that exists, unless `force` (--force).

    Every command that writes a named output calls this before any work, so a finished run's
    files are never replaced by accident. None entries (an output not asked for) are skipped.
    """
    for path in [paths] if isinstance(paths, str | os.PathLike) else paths:
        if path is not None and os.path.exists(path) and not force:
            raise FileExistsError(f"{path} already exists; pass --force to overwrite it")


class RunLock:
    """The lock that makes one run the only writer of `dest` (a file or a folder).

    Use as a context manager, or `acquire()` / `release()`. Raises RunLockedError in one line
    when another live process holds it. Acquiring it also checks that `dest`'s folder is
    writable, before any training step.
    """

    _held: dict[str, list] = {}  # this process's locks: path -> [fd, count] (re-entrant)

    def __init__(self, dest: str | os.PathLike) -> None:
        self.dest = Path(dest)
        self.path = self.dest.parent / f".{self.dest.name}.lock"
        self._fd: int | None = None

    @property
    def _key(self) -> str:
        return os.path.abspath(self.path)

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"RunLock({self.dest}) acquired twice through one object")
        held = RunLock._held.get(self._key)
        if held is not None:  # this process holds it already (a trainer's save inside its run)
            held[1] += 1
            self._fd = held[0]
            return self
        check_writable_dir(self.path.parent)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                owner = _read_owner(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.dest} is being written by another minigen run ({owner}); wait for it "
                    f"to end or choose another --out (lock file {self.path})"
                )
            # the file may have been unlinked by its previous owner between open and lock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        RunLock._held[self._key] = [fd, 1]
        recover(self.dest)  # a crash of the previous owner mid-commit is undone here
        _remove_staging(self.dest)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        held = RunLock._held[self._key]
        self._fd = None
        held[1] -= 1
        if held[1]:
            return
        del RunLock._held[self._key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(held[0])  # closing releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: the lock file's pid, checked by hand
        return _try_lock_by_pid(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _try_lock_by_pid(fd: int) -> bool:  # pragma: no cover - Windows only
    text = _read_owner(fd)
    parts = text.split()
    if len(parts) >= 2 and parts[0] == "pid" and parts[1].isdigit():
        try:
            os.kill(int(parts[1]), 0)
        except OSError:
            return True  # its owner is gone: a stale lock
        return int(parts[1]) == os.getpid()
    return True


def _read_owner(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode("utf-8", "replace").strip()
    return text or "owner unknown"
