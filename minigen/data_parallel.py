"""Data parallelism, the mathematics: a batch's gradient as the weighted sum of its shards'.

A training step's loss is a mean over the batch. Cut the batch into shards k = 1 .. S of B_k
examples each; the batch mean is the sum of the shards' means weighted by their share,

    L = (1 / B) sum_i l_i = sum_k (B_k / B) L_k,        so     grad L = sum_k grad((B_k / B) L_k),

and each term can be computed on its own core, process or machine. This module is that
identity, once, for both engines that compute it:

- `minigen.parallel.ShardedBackward`: worker processes of one machine, through shared memory;
- `minigen.mpi.MPIBackward`: the ranks of an MPI job (`mpiexec -n N`), one shard each.

Each engine computes every shard's gradient with `shard_grad` (a fresh, zeroed gradient: the
same code gives the same bits wherever it runs) into one flat vector per shard, then adds the
S vectors with `sum_in_order`: g_1 + g_2 + ... + g_S, left to right, element by element. Both
engines therefore give the same gradient bit for bit for the same S, whatever the number of
processes computing it; the number of shards S is part of a training recipe (it changes the
rounding of the sum), the number of processes is not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from minigen import nn
from minigen.tensor import Tensor

__all__ = [
    "Slots", "slots", "signature", "check_same_model", "split_rows", "shard_grad",
    "load_params", "store_params", "sum_in_order", "sum_losses", "add_grads",
]  # fmt: skip

# (parameter, offset, size, shape): where each parameter lives in one flat vector
Slots = list[tuple[nn.Parameter, int, int, tuple[int, ...]]]


def slots(model: nn.Module) -> Slots:
    """The model's parameters and their places in one flat vector (computed once per model)."""
    out, offset = [], 0
    for p in model.parameters():
        out.append((p, offset, p.size, tuple(p.shape)))
        offset += p.size
    return out


def signature(model: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every parameter: two replicas must have the same."""
    return [(n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()]


def check_same_model(mine: list[Any], theirs: list[Any], who: str, engine: str) -> None:
    """ValueError naming the first parameter where `theirs` differs from `mine`."""
    theirs = [tuple(tuple(x) if isinstance(x, list) else x for x in s) for s in theirs]
    if theirs != mine:
        diff = next(
            (f"{a} != {b}" for a, b in zip(theirs, mine, strict=False) if a != b),
            f"{len(theirs)} parameters, the model has {len(mine)}",
        )
        raise ValueError(f"{engine}: {who} does not build the same model: {diff}")


def split_rows(n: int, shards: int) -> list[np.ndarray]:
    """The rows 0 .. n-1 cut into `shards` consecutive shards, the first n % shards of them one
    row longer (NumPy's array_split): shard k's share of the batch is B_k / B = len / n."""
    return np.array_split(np.arange(n), shards)


def shard_grad(
    model: nn.Module,
    where: Slots,
    loss: Callable[[nn.Module, Any], Tensor],
    shard: Any,
    out: np.ndarray,
) -> tuple[float, list[bool]]:
    """Write grad (loss(model, shard)) into the flat vector `out`; return the loss, and which
    parameters it depends on (the others have no gradient: zeros in `out`). The parameters'
    `.grad` are left as they were."""
    before = [p.grad for p, *_ in where]
    for p, *_ in where:
        p.grad = None  # a fresh gradient: backward() stores it rather than adding to it
    value = loss(model, shard)
    value.backward()
    used = [p.grad is not None for p, *_ in where]
    for (p, o, n, _shape), g in zip(where, before, strict=True):
        if p.grad is None:
            out[o : o + n] = 0
        else:
            out[o : o + n] = np.asarray(p.grad).reshape(-1)
        p.grad = g
    return float(value.item()), used


def load_params(where: Slots, flat: np.ndarray) -> None:
    """Parameters <- the flat vector."""
    for p, o, n, shape in where:
        p.data[...] = flat[o : o + n].reshape(shape)


def store_params(where: Slots, flat: np.ndarray) -> None:
    """The flat vector <- parameters."""
    for p, o, n, _shape in where:
        flat[o : o + n] = np.asarray(p.data).reshape(-1)


def sum_in_order(rows: np.ndarray) -> np.ndarray:
    """rows (S, n) -> (n,): the sum over the shards, always in the same order."""
    # grad L = g_1 + g_2 + ... + g_S, left to right
    total = rows[0].copy()  # (n,)
    for row in rows[1:]:
        total += row
    return total


def sum_losses(values: Sequence[float]) -> float:
    """L = sum_k (B_k / B) L_k, the shards' weighted losses added left to right."""
    total = 0.0
    for v in values:
        total += v
    return total


def add_grads(where: Slots, flat: np.ndarray, used: Sequence[bool]) -> None:
    """Add the flat gradient into the parameters' `.grad`, skipping those no shard's loss
    depends on (their `.grad` stays None, so the optimizer leaves them alone)."""
    for (p, o, n, shape), has in zip(where, used, strict=True):
        if not has:
            continue
        g = flat[o : o + n].reshape(shape)
        if p.grad is None:
            p.grad = g.copy()
        else:
            p.grad += g
