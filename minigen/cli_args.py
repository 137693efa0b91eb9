"""The numbers of the command line, checked at the door: argparse `type=` helpers.

Every numeric flag of every `minigen` sub-command reads its value through one of these, so a
bad number is refused before anything slow happens (loading a corpus, training), in one line
that names the flag:

    minigen generate: error: argument --temperature: must be a finite number >= 0, got 'nan'

Integers must be written as integers ("1e3" is refused); floats must be finite ("nan", "inf"
are refused). A helper raises `argparse.ArgumentTypeError`, which argparse reports with the
flag's name and exit status 2. `run_flags` adds the flags every resumable training command
shares (where its checkpoint goes, --force, --quiet, --resume ...).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "positive_int", "nonneg_int", "seed", "int_at_least", "int_range",
    "positive_float", "nonneg_float", "finite_float", "probability", "unit_interval_open",
    "top_p", "int_list", "run_flags",
]  # fmt: skip


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def int_at_least(low: int, what: str | None = None) -> Callable[[str], int]:
    """An integer >= `low` (`what` describes it in the error, e.g. "an integer >= 257")."""
    what = what or f"an integer >= {low}"

    def parse(text: str) -> int:
        value = _int(text, what)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{low}"
    return parse


def int_range(low: int, high: int) -> Callable[[str], int]:
    """An integer in low .. high (both included)."""
    what = f"an integer in {low} .. {high:,}"

    def parse(text: str) -> int:
        value = _int(text, what)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = f"int_range_{low}_{high}"
    return parse


positive_int = int_at_least(1)
positive_int.__doc__ = "An integer >= 1: steps, batch sizes, widths, counts."
nonneg_int = int_at_least(0)
nonneg_int.__doc__ = "An integer >= 0, where 0 has a meaning the flag's help states."
seed = int_at_least(0, "a non-negative integer (a seed)")
seed.__doc__ = "A seed: a non-negative integer (NumPy refuses negative seeds)."


def _float_check(what: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _float(text, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


positive_float = _float_check("a finite number > 0", lambda v: v > 0)
positive_float.__doc__ = "A finite number > 0: learning rates."
nonneg_float = _float_check("a finite number >= 0", lambda v: v >= 0)
nonneg_float.__doc__ = "A finite number >= 0: temperatures, gradient clips, weights, scales."
finite_float = _float_check("a finite number", lambda v: True)
finite_float.__doc__ = "Any finite number."
probability = _float_check("a probability in [0, 1]", lambda v: 0 <= v <= 1)
probability.__doc__ = "A probability: a number in [0, 1]."
unit_interval_open = _float_check("a number in [0, 1)", lambda v: 0 <= v < 1)
unit_interval_open.__doc__ = "A number in [0, 1): dropout, EMA decay, Adam's beta2."
top_p = _float_check("a number in (0, 1]", lambda v: 0 < v <= 1)
top_p.__doc__ = "Nucleus sampling's p: a number in (0, 1]."


def int_list(low: int, empty_ok: bool = False) -> Callable[[str], str]:
    """Comma-separated integers >= `low` such as "1,2,2" (returned as given; the command
    splits them); with `empty_ok`, "" (none) too."""
    what = f"comma-separated integers >= {low}" + (" (or nothing)" if empty_ok else "")

    def parse(text: str) -> str:
        items = [item for item in text.split(",") if item.strip()]
        if len(items) < text.count(",") + 1 and (items or not empty_ok):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        if any(_int(item, what) < low for item in items):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return text

    parse.__name__ = f"int_list_{low}"
    return parse


def run_flags(p: Any, checkpoint: str, interval: int, only: str = "") -> None:
    """Add the flags of a resumable training command, after its own: --seed, --out (default
    `checkpoint`), --loss-plot, --force, --quiet, --checkpoint-interval (default `interval`),
    --resume; `only` starts the help of the last two (the models they apply to)."""
    p.add_argument("--seed", type=seed, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--out", help=f"checkpoint path (default: {checkpoint})")
    p.add_argument("--loss-plot", help="loss-curve PNG (default: beside the checkpoint)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint-interval", type=nonneg_int, default=interval,
                   help=f"{only}save the run's state into OUT.run/ every N steps, for --resume; "
                   "0: never (default: %(default)s)")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help=f"{only}continue the unfinished run in OUT.run/ (the same flags; --steps "
                   "may grow)")  # fmt: skip
