"""Checkpoints: safetensors files written atomically, with the config in their metadata.

No pickle anywhere: a checkpoint holds named arrays and a JSON config, nothing that
runs code when loaded. Every file is written to a temporary name beside its
destination, flushed to disk, then renamed over it, so a crash mid-write never
leaves a truncated file where a good one was.

A checkpoint of several files (a GPT's folder: weights, optimizer, trainer state, config,
tokenizer) is one transaction (`minigen.runs.transaction`): written whole into a folder beside
it, then swapped in with one rename. One run writes into a destination at a time
(`minigen.runs.RunLock`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from minigen import backend

__all__ = [
    "CheckpointError", "atomic_write", "save", "load", "save_module", "load_module",
]  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def _file_mode(path: Path) -> int:
    """The mode of the file being replaced, or what the umask gives a new file."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write(f: Any, payload: bytes) -> None:
    """Every byte minigen writes to disk goes through here (the fault tests fail it)."""
    f.write(payload)
    f.flush()
    os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _file_mode(path))  # mkstemp makes files private (0600)
        with os.fdopen(fd, "wb") as f:
            _write(f, payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Save named arrays (NumPy or CuPy) and a JSON-able config to a safetensors file; `half`
    stores the float arrays as float16 (half the file; `load_state_dict` reads them back into
    the model's dtype, a relative rounding of at most 2^-11 per weight)."""
    from safetensors.numpy import save as st_save

    # ascontiguousarray turns a 0-d array into shape (1,): reshape keeps scalars scalars
    arrays = {
        k: np.ascontiguousarray(backend.to_numpy(v)).reshape(np.shape(v))
        for k, v in tensors.items()
    }
    if half:
        arrays = {k: a.astype(np.float16) if a.dtype.kind == "f" else a for k, a in arrays.items()}
    metadata = {"format": "minigen", "config": json.dumps(dict(config or {}), sort_keys=True)}
    return atomic_write(path, st_save(arrays, metadata=metadata))


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load (arrays, config) from a safetensors file, with errors that name the file.

    bfloat16 tensors (PyTorch's `torch.bfloat16`, which NumPy has no type for) are read from
    the file's bytes and widened to float32, exactly: a bfloat16 is the top 16 bits of a
    float32. A tensor of another type NumPy cannot hold is refused, naming it.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")

    def widened(name: str) -> np.ndarray:
        # the file: an 8-byte little-endian length N, N bytes of JSON header (per tensor its
        # dtype, shape and data_offsets, counted from the end of the header), then the data
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            info = json.loads(f.read(n))[name]
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if dtype != "BF16":
                raise CheckpointError(
                    f"{path}: tensor {name!r} has dtype {dtype}, which NumPy cannot hold"
                )
            f.seek(8 + n + begin)
            raw = f.read(end - begin)
        if len(raw) != 2 * int(np.prod(shape)):
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {len(raw)} bytes, not those of bfloat16 {shape}"
            )
        # float32 bits = bfloat16 bits << 16 (the low half of the mantissa is zero)
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16  # (size,)
        return bits.view(np.float32).reshape(shape)

    def tensor(f: Any, name: str) -> np.ndarray:
        try:
            return f.get_tensor(name)
        except (TypeError, AttributeError):  # NumPy has no bfloat16 (nor float8) type
            return widened(name)

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: tensor(f, k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        config = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path}: the config in its metadata is not valid JSON ({e})"
        ) from None
    return arrays, config


def save_module(
    module: Any, path: str | os.PathLike, config: Mapping[str, Any] | None = None
) -> Path:
    """Save a module's parameters (its state_dict) and its config."""
    return save(path, module.state_dict(), config)


def load_module(module: Any, path: str | os.PathLike, strict: bool = True) -> dict[str, Any]:
    """Load parameters saved by `save_module` into `module`; returns the saved config.

    Raises CheckpointError naming the file and the key (and both shapes) that do not fit.
    """
    arrays, config = load(path)
    try:
        module.load_state_dict(arrays, strict=strict)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return config
