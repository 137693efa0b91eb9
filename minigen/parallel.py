"""Data parallelism over CPU cores: a batch's gradient as the sum of its shards' gradients.

The mathematics, grad L = sum_k grad((B_k / B) L_k), is `minigen.data_parallel`'s; this is
its engine on one machine (`minigen.mpi.MPIBackward` is the one for an MPI job).
`ShardedBackward` computes shard 1 in this process, on the model itself, and sends the others
to worker processes ("spawn": fresh interpreters), each with a replica of the model built by
the caller's `build()`. Every step the workers copy the current parameters out of shared
memory, run forward and backward on their shards, and write the gradients back into shared
memory, where this process adds them, in shard order (`data_parallel.sum_in_order`).

The result does not depend on how many processes computed it: each shard's gradient is
computed by the same code on a fresh, zeroed gradient, and the sum is always taken in the same
order (shard 1, then 2, ...), so one process (`workers=1`, the shards computed one after the
other here), S processes, and an MPI job of S ranks give bit-identical gradients. The number
of shards is part of a training recipe (it changes the rounding of the sum); the number of
workers is not.

Ctrl-C stops the caller only: a worker starts with SIGINT ignored (a terminal's Ctrl-C signals
the whole process group), and the caller, which gets the KeyboardInterrupt, stops its workers.
`minigen.lane.Lane` runs one function in such a process (a second lane of a pipeline).

The workers run on the caller's backend ("numpy" or "numba": the parameters must be NumPy
arrays) with its default dtype. The two callables must be picklable (top-level functions, or `functools.partial` of one):
    build() -> Module               a model with the same parameters, in the same order;
    loss(model, shard) -> Tensor    the shard's share of the batch loss, a scalar.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from minigen import backend, nn
from minigen import rng as _rng
from minigen.backend import blas_threads
from minigen.data_parallel import (
    Slots,
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
from minigen.tensor import Tensor, get_default_dtype, set_default_dtype

__all__ = ["ShardedBackward", "check_workers", "default_workers", "start_ignoring_ctrl_c"]


def default_workers(shards: int) -> int:
    """The processes a run of `shards` shards gets unless told: one per shard, at most one per
    CPU."""
    return min(shards, os.cpu_count() or 1)


def check_workers(shards: int, workers: int) -> None:
    """Refuse a number of workers outside 1 .. shards."""
    if not 1 <= workers <= shards:
        raise ValueError(f"workers must lie in 1 .. shards ({shards}), got {workers}")


def start_ignoring_ctrl_c(proc: Any) -> None:
    """Start a process with SIGINT ignored. It inherits the disposition (through exec too, and
    Python leaves an ignored SIGINT ignored), so Ctrl-C, which a terminal sends to the whole
    process group, interrupts only this process; from the first instruction of the child on,
    not only once its target runs (an import interrupted before would print a traceback)."""
    if threading.current_thread() is not threading.main_thread():
        proc.start()  # signal.signal works in the main thread only; the worker ignores it itself
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.start()
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker(
    build: Callable[[], nn.Module],
    loss: Callable[[nn.Module, Any], Tensor],
    shared_params: Any,
    shared_grads: Any,
    dtype: str,
    conn: Any,
    threads: int | None,
    settings: tuple[str, str],
) -> None:
    """A worker process: build a replica, then answer (shard index, shard) jobs until None.
    It ignores Ctrl-C: the parent stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        backend.use(settings[0])  # the parent's backend and default dtype
        set_default_dtype(settings[1])
        model = build()
        where = slots(model)
        conn.send(("ready", signature(model)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent as text
        conn.send(("error", traceback.format_exc()))
        return
    params_flat = np.frombuffer(shared_params, dtype=dtype)
    grads_flat = np.frombuffer(shared_grads, dtype=dtype).reshape(-1, params_flat.size)
    with blas_threads(threads), np.errstate(over="ignore", invalid="ignore"):
        while True:
            try:
                jobs = conn.recv()
            except EOFError:  # the parent is gone
                return
            if jobs is None:
                return
            try:
                load_params(where, params_flat)
                conn.send(
                    ("ok", [shard_grad(model, where, loss, s, grads_flat[k]) for k, s in jobs])
                )
            except BaseException:  # noqa: BLE001
                conn.send(("error", traceback.format_exc()))


class ShardedBackward:
    """Accumulate into `model`'s gradients grad sum_k loss(model, shard_k), over `workers`
    processes (this one included).

        with ShardedBackward(model, build, loss, shards=2, workers=2) as sharded:
            for step in ...:
                opt.zero_grad()
                value = sharded(split(batch))       # the summed loss; gradients in p.grad
                opt.step()

    Args:
        model: the model being trained (its gradients receive the sum).
        build: makes a replica of `model` (any weights: they are overwritten every step).
        loss: the loss of one shard, already weighted by its share of the batch.
        shards: how many shards each call gets.
        workers: processes computing them, 1 .. shards (1: all here, one after the other).
        threads: BLAS threads in each worker (see `minigen.backend.blas_threads`).
    """

    def __init__(
        self,
        model: nn.Module,
        build: Callable[[], nn.Module],
        loss: Callable[[nn.Module, Any], Tensor],
        shards: int,
        workers: int = 1,
        threads: int | None = 1,
    ) -> None:
        if shards < 1:
            raise ValueError(f"ShardedBackward: shards must be >= 1, got {shards}")
        check_workers(shards, workers)
        params = model.parameters()
        dtypes = {str(p.dtype) for p in params}
        on_cpu = all(isinstance(p.data, np.ndarray) for p in params)
        # one shard is the plain backward pass, on any backend (CuPy too); several shards
        # travel through shared memory as NumPy arrays of one dtype
        if len(dtypes) != 1 or (shards > 1 and not on_cpu):
            where = "NumPy" if on_cpu else "GPU (CuPy)"
            raise ValueError(
                f"ShardedBackward: {shards} shards need the model's parameters as NumPy arrays "
                f"of one dtype; got {where} arrays of dtypes {sorted(dtypes)}"
            )
        self.model, self.loss, self.shards, self.workers = model, loss, shards, workers
        self.dtype = dtypes.pop()
        self.size = sum(p.size for p in params)
        self._slots = slots(model)
        itemsize = np.dtype(self.dtype).itemsize
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        self._local: nn.Module | None = None
        self._local_slots: Slots = []
        if workers == 1:
            self._grads = np.empty((shards, self.size), dtype=self.dtype)  # (S, P): g_k in row k
            self._params = np.empty(self.size, dtype=self.dtype)
            if shards > 1:
                state = _rng.get_state()  # build() may draw weights: leave the caller's draws be
                self._local = build()
                self._local_slots = slots(self._local)
                _rng.set_state(state)
                self._check(signature(self._local), "build()")
            return
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked BLAS state
        shared_params = ctx.RawArray("b", self.size * itemsize)
        shared_grads = ctx.RawArray("b", shards * self.size * itemsize)  # (S, P)
        self._params = np.frombuffer(shared_params, dtype=self.dtype)
        self._grads = np.frombuffer(shared_grads, dtype=self.dtype).reshape(-1, self.size)
        try:
            for _ in range(workers - 1):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker,
                    args=(
                        build,
                        loss,
                        shared_params,
                        shared_grads,
                        self.dtype,
                        child,
                        threads,
                        (backend.current(), str(get_default_dtype())),
                    ),
                    daemon=True,
                )
                start_ignoring_ctrl_c(proc)
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for conn in self._conns:
                status, payload = self._receive(conn)
                self._check(payload, "a worker's build()")
        except BaseException as e:
            self.close(wait=not isinstance(e, KeyboardInterrupt))
            raise

    def _check(self, theirs: list[Any], who: str) -> None:
        check_same_model(signature(self.model), theirs, who, "ShardedBackward")

    def _receive(self, conn: Any) -> tuple[str, Any]:
        try:
            status, payload = conn.recv()
        except EOFError:
            raise RuntimeError("ShardedBackward: a worker process died") from None
        if status == "error":
            raise RuntimeError(f"ShardedBackward: a worker failed:\n{payload}")
        return status, payload

    def __call__(self, shards: Sequence[Any]) -> float:
        """Add grad sum_k loss(model, shards[k]) to the model's gradients; the summed loss."""
        try:
            return self._call(shards)
        except KeyboardInterrupt:  # Ctrl-C: the workers ignore it; their shards are moot
            self.close(wait=False)
            raise

    def _call(self, shards: Sequence[Any]) -> float:
        if len(shards) != self.shards:
            raise ValueError(f"ShardedBackward: expected {self.shards} shards, got {len(shards)}")
        if self.workers > 1 and not self._conns:
            raise RuntimeError("ShardedBackward: called after close(); its workers are gone")
        if self.shards == 1:  # the plain backward pass, on any backend (CuPy too)
            value = self.loss(self.model, shards[0])
            value.backward()
            return float(value.item())
        store_params(self._slots, self._params)  # the replicas start from the current weights
        # shard k > 0 goes to worker (k - 1) mod (workers - 1), or is computed here
        jobs: list[list[tuple[int, Any]]] = [[] for _ in self._conns]
        for k in range(1, self.shards):
            if self._conns:
                jobs[(k - 1) % len(self._conns)].append((k, shards[k]))
        for conn, mine in zip(self._conns, jobs, strict=True):
            conn.send(mine)
        results = [shard_grad(self.model, self._slots, self.loss, shards[0], self._grads[0])]
        if self._local is not None:
            load_params(self._local_slots, self._params)
            results += [
                shard_grad(self._local, self._local_slots, self.loss, shards[k], self._grads[k])
                for k in range(1, self.shards)
            ]
        else:
            answers = [self._receive(conn)[1] for conn in self._conns]
            by_shard = {k: v for mine, vals in zip(jobs, answers, strict=True)
                        for (k, _), v in zip(mine, vals, strict=True)}  # fmt: skip
            results += [by_shard[k] for k in range(1, self.shards)]
        used = [any(u) for u in zip(*(used for _, used in results), strict=True)]
        add_grads(self._slots, sum_in_order(self._grads), used)
        return sum_losses([value for value, _ in results])

    def close(self, wait: bool = True) -> None:
        """Stop the workers (also on `with` exit, and at interpreter exit: they are daemons):
        each ends when its job is done, or at once (terminated) unless `wait`."""
        for conn in self._conns if wait else ():
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for proc in self._procs:
            proc.join(timeout=10 if wait else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> ShardedBackward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=not isinstance(exc[1], KeyboardInterrupt))
