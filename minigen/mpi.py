"""Data parallelism over the ranks of an MPI job: `mpiexec -n N minigen train-gpt ...`.

The same identity as `minigen.parallel`, grad L = sum_k grad((B_k / B) L_k) (written once, in
`minigen.data_parallel`), with one shard per rank. Every rank holds the whole model and draws
the same batch (the same seed, the same generator); rank k computes shard k's gradient g_k
into a flat vector, and the ranks add the N vectors as a ring all-reduce does, in two phases
that each move (N - 1) / N of the vector per rank:

    reduce-scatter   rank j receives piece j of every g_k (MPI Alltoall) and adds them in
                     rank order, g_1 + g_2 + ... + g_N (`data_parallel.sum_in_order`);
    all-gather       every rank receives every summed piece (MPI Allgather).

MPI's own Allreduce may add in any order (it depends on the library, N and the message size);
this one adds in rank order, so an MPI job of N ranks gives the gradient of `--shards N` in one
process, bit for bit (and so the same losses and weights, run after run): what is identical
is the shard split, not the number of processes. Runs of different N agree only to rounding.

Every rank starts from rank 0's weights (broadcast when the engine starts) and applies the
same summed gradient with the same optimizer, so the weights stay identical on every rank
(`check_in_sync` verifies it). Rank 0 alone writes checkpoints, logs and the progress bar.

Errors: an exception while computing a shard is exchanged at that step, and every rank raises
RuntimeError with the failing rank's traceback (rank 0 prints it, every rank exits non-zero).
Any other exception on one rank (a failed save on rank 0) would leave the others waiting in
the next exchange: `abort_on_error` prints its traceback and calls MPI_Abort, which stops
every rank with a non-zero exit.

mpi4py is imported only when the process was started by an MPI launcher with more than one
rank (`world`), so a plain `minigen` run never initialises MPI.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from minigen import nn
from minigen.backend import blas_threads
from minigen.data_parallel import (
    add_grads,
    check_same_model,
    load_params,
    shard_grad,
    signature,
    slots,
    store_params,
    sum_in_order,
    sum_losses,
)
from minigen.tensor import Tensor

__all__ = ["launched_size", "world", "MPIBackward", "root_first", "abort_on_error",
           "check_in_sync", "CollectiveError", "quiet_unless_root"]  # fmt: skip

# what MPICH (Hydra), Open MPI and PMIx set in every rank's environment: the job's size
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


def launched_size() -> int:
    """The number of ranks the MPI launcher started (1 when not started by one)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def world() -> Any:
    """MPI's COMM_WORLD when this process is one of several ranks of an MPI job, else None.
    RuntimeError if the launcher started several ranks but mpi4py is not installed."""
    size = launched_size()
    if size <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(
            f"started by mpiexec with {size} ranks, but mpi4py is not installed: "
            'pip install -e ".[mpi]"'
        ) from None
    return MPI.COMM_WORLD


class CollectiveError(RuntimeError):
    """Raised on every rank at once (no rank is left waiting): nothing to abort."""


def _local_ranks(comm: Any) -> int:
    """Ranks of this job on this machine."""
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()


class MPIBackward:
    """Add grad sum_k loss(model, shards[k]) to `model`'s gradients, rank k computing shard k.

        engine = MPIBackward(model, shard_loss, comm)     # every rank: rank 0's weights
        for step in ...:                                  # every rank, the same batch
            opt.zero_grad()
            value = engine(split(batch, comm.size))       # the summed loss; grads in p.grad
            opt.step()

    Args:
        model: this rank's model (the same parameters on every rank; rank 0's weights are
            broadcast into it).
        loss: the loss of one shard, already weighted by its share of the batch.
        comm: an mpi4py communicator (`world()`); one shard per rank.
        threads: BLAS threads per rank (None: the machine's CPUs over the ranks on it).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[nn.Module, Any], Tensor],
        comm: Any,
        threads: int | None = None,
    ) -> None:
        params = model.parameters()
        dtypes = {str(p.dtype) for p in params}
        if len(dtypes) != 1 or not all(isinstance(p.data, np.ndarray) for p in params):
            raise ValueError(
                "MPIBackward: the model's parameters must be NumPy arrays of one dtype, got "
                f"dtypes {sorted(dtypes)}"
            )
        self.model, self.loss, self.comm = model, loss, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.threads = threads or max(1, (os.cpu_count() or 1) // _local_ranks(comm))
        self._slots = slots(model)
        mine = signature(model)
        for r, theirs in enumerate(comm.allgather(mine)):
            check_same_model(mine, theirs, f"rank {r}", "MPIBackward")
        size = sum(p.size for p in params)
        piece = -(-size // self.size)  # ceil(P / N): the vector padded to N equal pieces
        dtype = dtypes.pop()
        self._flat = np.zeros(self.size * piece, dtype=dtype)  # (N * piece,): this rank's g_k
        self._pieces = np.empty((self.size, piece), dtype=dtype)  # (N, piece): piece j of each g_k
        self._total = np.empty(self.size * piece, dtype=dtype)  # (N * piece,): the sum
        self.size_params = size
        # every rank starts from rank 0's weights
        store_params(self._slots, self._flat)
        comm.Bcast(self._flat, root=0)
        load_params(self._slots, self._flat)

    def __call__(self, shards: Sequence[Any]) -> float:
        """Add the gradient of sum_k loss(model, shards[k]) to the model's gradients (rank k
        computes shards[k]); returns the summed loss, the same on every rank."""
        if len(shards) != self.size:
            raise ValueError(f"MPIBackward: expected {self.size} shards (one per rank), got "
                             f"{len(shards)}")  # fmt: skip
        P = self.size_params
        failure = None
        value, used = 0.0, [False] * len(self._slots)
        try:
            with blas_threads(self.threads):
                value, used = shard_grad(
                    self.model, self._slots, self.loss, shards[self.rank], self._flat[:P]
                )
        except Exception:  # noqa: BLE001 - every rank hears of it, rank 0 reports it
            failure = traceback.format_exc()
        report = self.comm.allgather((failure, value, used))
        failed = [(r, f) for r, (f, _, _) in enumerate(report) if f is not None]
        if failed:
            r, text = failed[0]
            raise CollectiveError(f"MPIBackward: rank {r} failed:\n{text}")
        # reduce-scatter: piece j of every rank's g_k to rank j, added in rank order
        self.comm.Alltoall(self._flat.reshape(self.size, -1), self._pieces)
        mine = sum_in_order(self._pieces)  # (piece,)
        # all-gather: every summed piece to every rank
        self.comm.Allgather(mine, self._total.reshape(self.size, -1))
        anyone = [any(u) for u in zip(*(u for _, _, u in report), strict=True)]
        add_grads(self._slots, self._total[:P], anyone)
        return sum_losses([v for _, v, _ in report])

    def close(self) -> None:
        """Nothing to stop (the ranks belong to mpiexec); here for `ShardedBackward`'s API."""


@contextlib.contextmanager
def root_first(comm: Any) -> Iterator[None]:
    """Run the block on rank 0, then (once it is done) on the other ranks: rank 0 reads a
    checkpoint or prepares a run folder under its lock (and repairs an interrupted save)
    before the others read it. If the block fails on rank 0, the others raise
    CollectiveError with its message rather than wait."""
    if comm is None:
        yield
        return
    if comm.Get_rank() == 0:
        try:
            yield
        except BaseException as e:
            comm.bcast(f"{type(e).__name__}: {e}", root=0)
            raise
        comm.bcast(None, root=0)
    else:
        failure = comm.bcast(None, root=0)
        if failure is not None:
            raise CollectiveError(f"rank 0 failed: {failure}")
        yield


@contextlib.contextmanager
def abort_on_error(comm: Any, collective: tuple[type, ...] = ()) -> Iterator[None]:
    """An exception inside the block that only this rank raised (not a `CollectiveError`, nor
    one of the `collective` types, which every rank raises at the same step) prints its
    traceback and stops the whole job (MPI_Abort, exit status 1), rather than leaving the
    other ranks waiting for this one forever."""
    try:
        yield
    except BaseException as e:
        if comm is None or comm.Get_size() == 1 or isinstance(e, (CollectiveError, *collective)):
            raise
        print(f"minigen: rank {comm.Get_rank()} of {comm.Get_size()} failed; stopping every "
              f"rank\n{traceback.format_exc()}", file=sys.stderr, flush=True)  # fmt: skip
        comm.Abort(1)


def check_in_sync(comm: Any, model: nn.Module) -> None:
    """CollectiveError unless every rank holds the same weights, bit for bit."""
    if comm is None:
        return
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(np.ascontiguousarray(p.data).tobytes())
    digests = comm.allgather(h.hexdigest())
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise CollectiveError(f"the weights of ranks {differ} differ from rank 0's")


def quiet_unless_root(comm: Any) -> bool:
    """Send this rank's standard output to nowhere unless it is rank 0 (a command's messages
    would print once per rank); True on rank 0 (or outside MPI)."""
    if comm is None or comm.Get_rank() == 0:
        return True
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process
    return False
