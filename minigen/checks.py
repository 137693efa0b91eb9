"""A config's fields, checked when it is made: the loops every config's `__post_init__` shared.

    checks.require(self, ("beta1", "beta2"), lambda v: 0 <= v < 1, "lie in [0, 1)", "TrainConfig: ")
    -> ValueError("TrainConfig: beta2 must lie in [0, 1), got 1.0")

Each error names the field, what it must be and the value it got; `prefix` names the config
where the caller's messages do. `known_keys` refuses a dict (a checkpoint's or a file's config)
with keys the config does not have, naming them and where the dict came from; `DictConfig`
gives a dataclass config the three methods by which it travels as JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["require", "at_least", "known_keys", "DictConfig"]

_C = TypeVar("_C", bound="DictConfig")


def require(
    obj: Any, names: Iterable[str], ok: Callable[[Any], bool], what: str, prefix: str = ""
) -> None:
    """ValueError `"{prefix}{name} must {what}, got {value}"` for the first field of `names`
    whose value `ok` refuses."""
    for name in names:
        value = getattr(obj, name)
        if not ok(value):
            raise ValueError(f"{prefix}{name} must {what}, got {value}")


def at_least(obj: Any, names: Iterable[str], low: int, prefix: str = "") -> None:
    """Integer fields (steps, batch sizes, widths, counts) that must be >= `low`."""
    require(obj, names, lambda v: int(v) >= low, f"be >= {low}", prefix)


def known_keys(cls: type, d: Mapping[str, Any], source: str) -> None:
    """ValueError `"{source}: unknown {cls} keys [...]"` when `d` has keys that are not fields
    of the dataclass `cls`."""
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} keys {unknown}")


class DictConfig:
    """A dataclass config as it travels in checkpoints: `to_dict`, `from_dict` (refusing
    unknown keys, naming `source`), `replace` (a copy with fields changed)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any], source: str = "<dict>") -> _C:
        known_keys(cls, d, source)
        return cls(**d)

    def replace(self: _C, **changes: Any) -> _C:
        return dataclasses.replace(self, **changes)
