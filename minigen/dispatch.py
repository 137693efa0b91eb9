"""The dispatch table: every fused op, its NumPy reference, and the kernels each backend runs.

An op that has a fused kernel calls its NumPy function through `pick`:

    y = dispatch.pick(softmax_forward)(x, axis)   # in minigen/functional.py

"Go to definition" on `softmax_forward` lands on the NumPy code (the math); `pick` returns
that same function on the "numpy" backend, and on "numba" or "cupy" the kernel-backed
function of its row, bound to the reference (its fallback for the cases the kernels do
not cover) and to the backend's kernel module (`backend.kernel_module()`:
minigen_kernels.numba_cpu or minigen_kernels.cupy_kernels). The kernel-backed functions
are in `kernel_ops.py`; the kernels in kernels/minigen_kernels/ (whose `reference.py`
holds them to minigen's NumPy code: tests/test_kernels_parity.py).

`CORE` below lists the core's fused ops, one row each: the NumPy reference (the "numpy"
backend), the kernel-backed function ("numba" and "cupy"), and the kernels it calls (in
each of numba_cpu.py, numba_cuda.py, cupy_kernels.py). A part adds the fused ops it owns
with `register`, at a point it chooses and says (the DDPM noise step:
`minigen.diffusion.noise_step.register_kernels()`, called by `DDPMScheduler.__init__`);
the core never names a part's op. Nothing is registered when a module is imported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from minigen import backend, kernel_ops

__all__ = ["FusedOp", "CORE", "register", "table", "pick"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class FusedOp:
    """One row of the table.

    name: the NumPy reference's name (`pick` finds the row by it);
    reference: where that function lives, for the reader (tests check it);
    kernel_backed: `(numpy, k, *args)` -> what the reference returns, computed with the
        kernel module `k` where its kernels cover the case, else by `numpy(*args)`;
    kernels: the functions of minigen_kernels it calls (each kernel module defines them).
    """

    name: str
    reference: str
    kernel_backed: Callable[..., Any]
    kernels: tuple[str, ...]


def _row(reference: str, kernel_backed: Callable[..., Any], *kernels: str) -> FusedOp:
    return FusedOp(reference.rpartition(".")[2], f"minigen.{reference}", kernel_backed, kernels)


CORE = (
    # the NumPy reference (minigen.*)  its kernel-backed function     the kernels it calls
    _row("functional.softmax_forward", kernel_ops.softmax_forward, "softmax_forward"),
    _row("functional.softmax_backward", kernel_ops.softmax_backward, "softmax_backward"),
    _row("functional.log_softmax_forward", kernel_ops.log_softmax_forward, "log_softmax_forward"),
    _row("functional.log_softmax_backward", kernel_ops.log_softmax_backward, "log_softmax_backward"),
    _row("functional.attention_forward", kernel_ops.attention_forward,
         "causal_softmax_forward", "softmax_forward"),
    _row("functional.attention_backward", kernel_ops.attention_backward, "causal_softmax_backward"),
    _row("functional.layer_norm_forward", kernel_ops.layer_norm_forward, "layer_norm_forward"),
    _row("functional.layer_norm_backward", kernel_ops.layer_norm_backward, "layer_norm_backward"),
    _row("normalize.group_norm_silu_forward", kernel_ops.group_norm_silu_forward,
         "group_norm_silu_forward"),
    _row("normalize.group_norm_silu_backward", kernel_ops.group_norm_silu_backward,
         "group_norm_silu_backward"),
    _row("gelu.gelu_forward", kernel_ops.gelu_forward, "gelu_forward"),
    _row("gelu.gelu_backward", kernel_ops.gelu_backward, "gelu_backward"),
    _row("optim.adamw_step", kernel_ops.adamw_step, "adamw_step"),
)  # fmt: skip

_table: dict[str, FusedOp] = {op.name: op for op in CORE}
# (backend, reference) -> the function `pick` returns; emptied when the table grows
_picked: dict[tuple[str, Callable[..., Any]], Callable[..., Any]] = {}


def register(op: FusedOp) -> None:
    """Add a part's fused op to the table (again: nothing happens; another op of that name:
    ValueError)."""
    known = _table.get(op.name)
    if known is not None and known != op:
        raise ValueError(f"dispatch.register: {op.name!r} is already the fused op {known}")
    _table[op.name] = op
    _picked.clear()


def table() -> dict[str, FusedOp]:
    """The rows of the table by name: the core's, and those parts have registered."""
    return dict(_table)


def pick(reference: F) -> F:
    """The function that runs `reference` (a NumPy function) on the current backend: the
    reference itself on "numpy" or where the table has no row for it, else its row's
    kernel-backed function bound to the reference and the backend's kernel module."""
    name = backend.current()
    if name == "numpy":
        return reference
    fn = _picked.get((name, reference))
    if fn is None:
        op = _table.get(reference.__name__)
        k = backend.kernel_module()
        fn = reference if op is None else functools.partial(op.kernel_backed, reference, k)
        _picked[(name, reference)] = fn
    return fn  # type: ignore[return-value]
