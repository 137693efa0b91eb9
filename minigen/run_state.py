"""A training run's state on disk: what `--resume` continues from.

Every trainer that resumes writes the same files, through `write_state`:

    model.safetensors           the weights being trained (the last iterate, not the EMA), with
                                the step in its metadata
    trainer_state.safetensors   the loop's arrays: AdamW's moments, the EMA
    trainer_state.json          the loop's JSON state: the step, the losses, the optimizer's
                                scalars, the state of every random generator (and what the
                                trainer adds: the GPT's loss estimates)

`save_run` writes them and the run's config (config.json) into a folder as one transaction
(`minigen.runs.transaction`), under the folder's lock; `load_run` reads them back (`RunState`),
refusing files from different steps; `prepare_run` is what a command does with --resume and
--force, and `resumable_run` what a training command does around its loop. A GPT checkpoint (`minigen.text.gpt_io`) is such a folder with the tokenizer and the
loss curve beside.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minigen import checkpoint, mpi
from minigen.checkpoint import CheckpointError, atomic_write
from minigen.runs import RunLock, previous, transaction
from minigen.training import Loop

__all__ = [
    "RUN_FILES", "STATE_FILES", "write_state", "read_state", "save_run", "RunState", "load_run",
    "prepare_run", "resumable_run",
]  # fmt: skip

STATE_FILES = {
    "model": "model.safetensors",  # the raw weights (not the EMA's), with the step
    "arrays": "trainer_state.safetensors",  # the loop's arrays: AdamW's moments, the EMA
    "state": "trainer_state.json",  # the loop's JSON state: step, losses, generators
}
RUN_FILES = {**STATE_FILES, "config": "config.json"}  # a run folder: its state and its config


def write_state(
    folder: str | os.PathLike, model: Any, loop: Loop, extra: dict[str, Any] | None = None
) -> None:
    """Write the model's weights and the loop's state (with `extra` in its JSON) into
    `folder`: a transaction's staging folder, never a checkpoint in place."""
    folder = Path(folder)
    arrays, state = loop.state_dict()
    step = {"step": state["step"]}
    checkpoint.save(folder / STATE_FILES["model"], model.state_dict(), step)
    checkpoint.save(folder / STATE_FILES["arrays"], arrays, step)
    atomic_write(folder / STATE_FILES["state"], json.dumps({**(extra or {}), **state}))


def read_state(
    folder: str | os.PathLike,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(weights, loop arrays, loop JSON state) from `folder`; CheckpointError naming the file
    if one is missing, unreadable, not a JSON object, or from another step than the others."""
    folder = Path(folder)
    path = folder / STATE_FILES["state"]
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable trainer state ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a minigen trainer state (a JSON object)")
    weights, wmeta = checkpoint.load(folder / STATE_FILES["model"])
    arrays, ameta = checkpoint.load(folder / STATE_FILES["arrays"])
    steps = {"weights": wmeta.get("step"), "arrays": ameta.get("step"),
             "state": state.get("step")}  # fmt: skip
    if len(set(map(str, steps.values()))) != 1:
        raise CheckpointError(
            f"{folder}: its files are from different steps {steps} (assembled from two runs?)"
        )
    return weights, arrays, state


def save_run(run_dir: str | os.PathLike, config: dict[str, Any], model: Any, loop: Loop) -> Path:
    """Write a run's state into the folder `run_dir` as one transaction (`minigen.runs`), so
    that a run killed at any moment leaves the previous complete state."""
    with RunLock(run_dir), transaction(run_dir, owned=RUN_FILES.values()) as tmp:
        write_state(tmp, model, loop)
        atomic_write(tmp / RUN_FILES["config"], json.dumps(config, indent=1))
    return Path(run_dir)


@dataclass
class RunState:
    """What `save_run` wrote: the config (a dict), the raw weights, the loop's state."""

    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]
    source: str = ""

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def config_for(self, config: dict[str, Any], flags: dict[str, str] | None = None) -> dict:
        """The run's config, for a resumed run asked for with `config`: the two must agree but
        for `steps`, which may grow. Raises ValueError in one line naming the settings (by
        their command-line `flags`, "--" + the name by default) that differ."""
        config = json.loads(json.dumps(config))  # as stored: tuples as lists
        flags = flags or {}
        differ = [k for k in sorted(set(config) | set(self.config))
                  if k != "steps" and config.get(k) != self.config.get(k)]  # fmt: skip
        if differ:
            what = ", ".join(
                f"{flags.get(k, '--' + k.replace('_', '-'))} {self.config.get(k)!r} there, "
                f"{config.get(k)!r} here" for k in differ
            )  # fmt: skip
            raise ValueError(f"--resume: the run in {self.source} has other settings ({what}); "
                             "resume it with the same ones, or start over: --force without --resume")  # fmt: skip
        if config.get("steps", 0) < self.config.get("steps", 0):
            raise ValueError(
                f"--resume: --steps {config.get('steps')} is below the {self.config['steps']} "
                f"steps of the run in {self.source}; --steps may only grow"
            )
        return {**self.config, "steps": config.get("steps", self.config.get("steps"))}

    def restore(self, model: Any, loop: Loop) -> None:
        """Put the weights into `model` and the state into `loop`; CheckpointError if they do
        not fit."""
        try:
            model.load_state_dict(self.weights)
            loop.load_state_dict(self.arrays, self.state)
        except ValueError as e:
            raise CheckpointError(f"{self.source}: {e}") from None


def load_run(run_dir: str | os.PathLike) -> RunState:
    """Read a run's state written by `save_run`; CheckpointError naming the file if a part is
    missing, unreadable, or from another step than the others."""
    run = Path(run_dir)
    if not run.is_dir() and previous(run).is_dir():
        run = previous(run)  # a save cut between its two renames
    if not run.is_dir():
        raise CheckpointError(f"no run to resume: {run} not found")
    try:
        config = json.loads((run / RUN_FILES["config"]).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{run / RUN_FILES['config']}: not a readable run config ({e})"
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{run / RUN_FILES['config']}: not a JSON object")
    weights, arrays, state = read_state(run)
    return RunState(config, weights, arrays, state, str(run))


def prepare_run(run_dir: str | os.PathLike, resume: bool, force: bool) -> RunState | None:
    """A command's run folder: with `resume`, the state in it (ValueError in one line if there
    is none); without, None for a fresh run, after removing an unfinished run's folder if
    `force` (else ValueError: it is not overwritten without --force). Call it holding the
    folder's RunLock."""
    run = Path(run_dir)
    there = [p for p in (run, previous(run)) if p.is_dir()]
    if resume:
        if not there:
            raise ValueError(
                f"--resume: no unfinished run in {run} (a run removes it when it ends)"
            )
        return load_run(run)
    if there and not force:
        raise ValueError(
            f"{run} holds an unfinished run; pass --resume to continue it or --force to start over"
        )
    for p in there:
        shutil.rmtree(p)
    return None


@contextlib.contextmanager
def resumable_run(
    out: str, config: Any, flags: dict[str, str], resume: bool, force: bool, ranks: bool = False
) -> Iterator[tuple[str, RunState | None, Any]]:
    """A training command's run that writes the checkpoint `out`, its state kept every so many
    steps in the folder `out.run` for --resume. Holds the RunLock of both (one writer; their
    folder writable before the first step); yields (the run folder, the state to resume or
    None, the config: the resumed run's, checked against `config` by `RunState.config_for`
    with the command's `flags`, or `config` itself); removes the run folder when the body ends
    without an error (the run is then complete in `out`). Under MPI (`minigen.mpi`), for a
    command whose trainer shares its steps among the `ranks`, rank 0 alone holds the locks and
    prepares the folder, and the other ranks then read the state; ValueError for another."""
    run_dir = f"{out}.run"
    comm = mpi.world()
    if comm is not None and not ranks:
        raise ValueError(f"this command does not run under mpiexec ({comm.Get_size()} ranks "
                         "here): start it as one process")  # fmt: skip
    root = comm is None or comm.Get_rank() == 0
    with contextlib.ExitStack() as locks:
        with mpi.root_first(comm):
            if root:
                locks.enter_context(RunLock(out))
                locks.enter_context(RunLock(run_dir))
                state = prepare_run(run_dir, resume, force)
            else:
                state = load_run(run_dir) if resume else None
            if state is not None:
                config = type(config)(**state.config_for(asdict(config), flags))
        yield run_dir, state, config
        if root:
            shutil.rmtree(run_dir, ignore_errors=True)
