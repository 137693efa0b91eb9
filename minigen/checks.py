"""A config's fields, checked when it is made: the loops every config's `__post_init__` shared.

    checks.require(self, ("beta1", "beta2"), lambda v: 0 <= v < 1, "lie in [0, 1)", "TrainConfig: ")
    -> ValueError("TrainConfig: beta2 must lie in [0, 1), got 1.0")

Each error names the field, what it must be and the value it got; `prefix` names the config
where the caller's messages do. `known_keys` refuses a dict (a checkpoint's or a file's config)
with keys the config does not have, naming them and where the dict came from; `DictConfig`
gives a dataclass config the three methods by which it travels as JSON. `closest` answers an
unknown word with the known ones a typo away (by `edit_distance`), or none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["require", "at_least", "known_keys", "DictConfig", "edit_distance", "closest"]

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


def edit_distance(a: str, b: str) -> int:
    """The fewest edits that turn `a` into `b`: insert, delete or replace one character, or
    swap two adjacent ones (the optimal string alignment distance; "rde" -> "red" is 1)."""
    # d[i][j]: the distance between a[:i] and b[:j]
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(
                d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            )
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def closest(word: str, known: Iterable[str]) -> list[str]:
    """The words of `known` nearest `word` by `edit_distance`, in their order, when a typo
    could explain it (at most max(1, len(word) // 3) edits, none for a single character);
    otherwise none: "purple" is 3 edits from "circle", which is no typo of it."""
    dist = {k: edit_distance(word, k) for k in known}
    best = min(dist.values(), default=0)
    if not 0 < best <= (max(1, len(word) // 3) if len(word) > 1 else 0):
        return []
    return [k for k, v in dist.items() if v == best]
