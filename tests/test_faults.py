"""Faults injected into real runs: nothing lost, resume equal to an uninterrupted run.

- a training process killed (SIGKILL) at chosen points — inside a save (the n-th file write),
  between the swap and the clean-up, between the two renames of the fallback commit — and at
  random times; then the same command with --resume, until it finishes: the final weights,
  losses and loss estimates equal those of a run that never stopped, bit for bit;
- the n-th file write of a save failing with ENOSPC (a full disk): the exception reaches the
  caller, the previous checkpoint is byte-identical, nothing is left beside it;
- two runs into one --out: the second stops at once, in one line; a killed run's lock does
  not block the next one;
- a loss that turns NaN: `training diverged at step N`, exit 1, the last good checkpoint kept.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from minigen import checkpoint, runs
from minigen.runs import RunLock, RunLockedError, transaction
from minigen.text import CharTokenizer, train_val_split
from minigen.text.gpt import GPTConfig
from minigen.text.gpt_io import load_checkpoint
from minigen.text.train import TrainConfig, Trainer
from minigen.training import TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the cat sat on the mat. the dog sat on the log. " * 40
ARGS = [
    "train-gpt", "--corpus", "corpus.txt", "--max-iters", "12", "--checkpoint-interval", "3",
    "--eval-interval", "4", "--eval-iters", "1", "--n-layer", "1", "--n-head", "2",
    "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--sample", "0",
]  # fmt: skip

# A driver that runs the CLI with a fault armed: KILL_AT=n kills the process (SIGKILL: no
# clean-up, as a power cut or the OOM killer) at the n-th file write; KILL_AFTER_SWAP=1 right
# after the atomic swap; KILL_BETWEEN_RENAMES=1 takes the fallback commit (no atomic swap)
# and kills between its two renames.
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from minigen import checkpoint, runs
    from minigen.cli import main

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    kill_at = int(os.environ.get("KILL_AT", "0"))
    if kill_at:
        write, count = checkpoint._write, [0]
        def _write(f, payload):
            count[0] += 1
            if count[0] == kill_at:
                die()
            write(f, payload)
        checkpoint._write = _write
    if os.environ.get("KILL_AFTER_SWAP"):
        exchange = runs._exchange
        def _exchange(a, b):
            if exchange(a, b):
                die()
            return False
        runs._exchange = _exchange
    if os.environ.get("KILL_BETWEEN_RENAMES"):
        runs._exchange = lambda a, b: False
        rename = os.rename
        def _rename(src, dst):
            rename(src, dst)
            if str(dst).endswith(".old"):
                die()
        runs.os.rename = _rename
    sys.exit(main(sys.argv[1:]))
    """
)


def run(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", **env}
    full.pop("MINIGEN_DEBUG", None)
    return subprocess.run([sys.executable, str(tmp / "driver.py"), *args], cwd=tmp, env=full,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def outcome(out: Path) -> tuple[str, list, list]:
    """What a finished run left: a hash of its weights, its losses and its estimates."""
    ck = load_checkpoint(out, with_state=True)
    weights = hashlib.sha256(b"".join(ck.weights[k].tobytes() for k in sorted(ck.weights)))
    return weights.hexdigest(), ck.state["losses"], ck.state["eval"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "corpus.txt").write_text(TEXT)
    (tmp / "driver.py").write_text(DRIVER)
    return tmp


@pytest.fixture(scope="module")
def unbroken(workdir):
    r = run(workdir, *ARGS, "--out", "unbroken")
    assert r.returncode == 0, r.stderr
    return outcome(workdir / "unbroken")


def resume_if_saved(out: Path) -> list[str]:
    """--resume if a checkpoint was saved (where a reader finds it: `out`, or mid-commit
    `runs.previous(out)`), as a user would after looking."""
    saved = any((p / "trainer_state.json").exists() for p in (out, runs.previous(out)))
    return ["--resume"] if saved else []


def finish(tmp: Path, out: str) -> int:
    """Re-run the command after a kill, with --resume when a checkpoint is there, until it
    succeeds; returns the number of re-runs."""
    for tries in range(1, 4):
        r = run(tmp, *ARGS, "--out", out, *resume_if_saved(tmp / out))
        if r.returncode == 0:
            return tries
        assert "Traceback" not in r.stderr, r.stderr
    raise AssertionError(f"the run into {out} did not finish: {r.stderr}")


# 12 file writes per save (6 files, then a flush of each in the staging folder), saves at
# steps 3, 6, 9 and 12: these points fall inside the first, second and last saves
@pytest.mark.parametrize("n", [1, 6, 11, 14, 19, 30, 47])
def test_killed_inside_a_save_resumes_to_the_same_run(workdir, unbroken, n):
    out = f"kill-write-{n}"
    r = run(workdir, *ARGS, "--out", out, KILL_AT=str(n))
    assert r.returncode == -signal.SIGKILL, r.stderr
    ck = workdir / out
    if ck.exists():  # what is there is a complete checkpoint
        load_checkpoint(ck, with_state=True)
    finish(workdir, out)
    assert outcome(ck) == unbroken
    assert sorted(p.name for p in workdir.glob(f".{out}*")) == []  # no staging, no lock left


@pytest.mark.parametrize("fault", ["KILL_AFTER_SWAP", "KILL_BETWEEN_RENAMES"])
def test_killed_inside_the_commit_resumes_to_the_same_run(workdir, unbroken, fault):
    out = f"kill-{fault.lower()}"
    r = run(workdir, *ARGS, "--out", out, **{fault: "1"})  # the save of step 3 makes the
    assert r.returncode == -signal.SIGKILL, r.stderr  # folder; the kill is in step 6's commit
    # a reader finds a complete checkpoint even now (the fallback's is at runs.previous)
    step = load_checkpoint(workdir / out, with_state=True).state["step"]
    assert step in (3, 6)
    finish(workdir, out)
    assert outcome(workdir / out) == unbroken


def test_killed_at_random_times_resumes_to_the_same_run(workdir, unbroken):
    out, gen = "kill-random", np.random.default_rng(0)
    for _ in range(3):
        resume = resume_if_saved(workdir / out)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
        p = subprocess.Popen([sys.executable, "driver.py", *ARGS, "--out", out, *resume],
                             cwd=workdir, env=env, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(gen.uniform(1.0, 4.0))  # start-up takes ~1 s, the run a few seconds
        p.send_signal(signal.SIGKILL)
        p.wait()
    finish(workdir, out)
    assert outcome(workdir / out) == unbroken


# ----------------------------------------------------------------------------- a full disk
TOK = CharTokenizer.from_text(TEXT)
CONFIG = GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
TRAIN = TrainConfig(max_iters=4, batch_size=4, eval_interval=0, eval_iters=1,
                    checkpoint_interval=0, seed=3)  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("n", range(1, 13))
def test_a_full_disk_during_a_forced_save_leaves_the_old_checkpoint(tmp_path, monkeypatch, n):
    out = tmp_path / "ck"
    Trainer(CONFIG, TRAIN, TOK, *train_val_split(np.array(TOK.encode(TEXT))), out).run(False)
    (out / "notes.txt").write_text("the user's own file")
    before = snapshot(out)
    bigger = CONFIG.replace(n_embd=32)  # a new shape: a mix of the two would not even load
    t = Trainer(bigger, TRAIN, TOK, *train_val_split(np.array(TOK.encode(TEXT))), out, True)
    write, count = checkpoint._write, [0]

    def full_disk(f, payload):
        count[0] += 1
        if count[0] == n:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(f, payload)

    monkeypatch.setattr(checkpoint, "_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        t.run(False)
    assert snapshot(out) == before  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no staging folder, no lock
    monkeypatch.setattr(checkpoint, "_write", write)
    t.save()  # the disk has room again: the new checkpoint replaces the old, the notes stay
    assert load_checkpoint(out).config == bigger
    assert (out / "notes.txt").read_text() == "the user's own file"


def test_an_exception_inside_a_transaction_changes_nothing(tmp_path):
    dest = tmp_path / "ck"
    dest.mkdir()
    (dest / "a").write_text("old")
    with pytest.raises(KeyboardInterrupt), transaction(dest) as tmp:
        (tmp / "a").write_text("new")
        raise KeyboardInterrupt
    assert snapshot(dest) == {"a": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_the_fallback_commit_replaces_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "_exchange", lambda a, b: False)
    dest = tmp_path / "ck"
    for text in ("one", "two"):
        with transaction(dest, owned=["a"]) as tmp:
            (tmp / "a").write_text(text)
    assert snapshot(dest) == {"a": b"two"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


# ----------------------------------------------------------------------------- two writers
HOLD = textwrap.dedent(
    """
    import sys, time
    from minigen.runs import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def hold_lock(tmp: Path, dest: Path, seconds: float) -> subprocess.Popen:
    (tmp / "hold.py").write_text(HOLD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, str(tmp / "hold.py"), str(dest), str(seconds)],
                         env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_run_into_the_same_out_stops_at_once(workdir):
    holder = hold_lock(workdir, workdir / "busy", 60)
    try:
        t0 = time.perf_counter()
        r = run(workdir, *ARGS, "--out", "busy")
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], r.stderr
        assert "being written by another minigen run" in lines[0]
        assert time.perf_counter() - t0 < 30 and not (workdir / "busy").exists()
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            RunLock(workdir / "busy").acquire()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    "argv", [["rlhf", "sft", "--out", "busy"], ["train-icl", "--fast", "--out", "busy"]]
)
def test_every_trainer_stops_at_once_when_its_out_is_taken(workdir, argv):
    holder = hold_lock(workdir, workdir / "busy", 60)
    try:
        r = run(workdir, *argv)
        assert r.returncode == 1 and f"pid {holder.pid}" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_runs_lock_does_not_block_the_next(tmp_path):
    holder = hold_lock(tmp_path, tmp_path / "ck", 60)
    holder.kill()  # SIGKILL: the lock file stays, the kernel drops its flock
    holder.wait()
    assert (tmp_path / ".ck.lock").exists()
    with RunLock(tmp_path / "ck") as lock:
        assert lock.held
        with RunLock(tmp_path / "ck"):  # re-entrant within one process
            pass
        assert (tmp_path / ".ck.lock").exists()
    assert not (tmp_path / ".ck.lock").exists()


def test_an_unwritable_out_is_refused_before_the_first_step(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"  # root writes anywhere: make the parent a file instead
        blocker.write_text("")
        out = blocker / "ck"
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        out = ro / "ck"
    with pytest.raises(OSError, match="cannot write into"):
        Trainer(CONFIG, TRAIN, TOK, *train_val_split(np.array(TOK.encode(TEXT))), out)


# ----------------------------------------------------------------------------- divergence
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    tc = TrainConfig(**{**TRAIN.__dict__, "max_iters": 8, "checkpoint_interval": 2})
    t = Trainer(CONFIG, tc, TOK, *train_val_split(np.array(TOK.encode(TEXT))), tmp_path / "ck")
    loss_at = t.loss_at
    t.loss_at = lambda step: loss_at(step) * (float("nan") if step == 4 else 1.0)
    with pytest.raises(TrainingDiverged, match="training diverged at step 5: the loss is nan"):
        t.run(False)
    assert t.step == 4
    ck = load_checkpoint(tmp_path / "ck", with_state=True)
    assert ck.state["step"] == 4 and all(np.isfinite(v).all() for v in ck.weights.values())
    for name, p in t.model.state_dict().items():  # the weights are those of step 4
        np.testing.assert_array_equal(p, ck.weights[name])


def test_divergence_from_the_command_line_is_one_line_and_exit_1(workdir):
    r = run(workdir, *ARGS, "--learning-rate", "1e30", "--grad-clip", "0", "--out", "boom")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("minigen: error: training diverged at step"), r.stderr
    assert "Traceback" not in r.stderr
    state = (
        json.loads((workdir / "boom" / "trainer_state.json").read_text())
        if (workdir / "boom").exists()
        else None
    )
    assert state is None or all(np.isfinite(state["losses"]))


# ----------------------------------------------------------------------------- a hand-edited state
@pytest.mark.parametrize(
    "edit",
    [
        lambda s: {**s, "step": "x"},
        lambda s: {k: v for k, v in s.items() if k != "rng"},
        lambda s: {**s, "losses": s["losses"][:-1]},
        lambda s: {**s, "eval": 3},
        lambda s: {**s, "rng": {"bit_generator": "PCG64", "state": "x"}},
        lambda s: [s],
        lambda s: {**s, "optimizer": "x"},
        lambda s: {**s, "optimizer": {**s["optimizer"], "param_groups": None}},
        lambda s: {**s, "optimizer": {**s["optimizer"], "param_groups": [{"lr": "x"}] * 2}},
        lambda s: {k: v for k, v in s.items() if k != "eval"},
    ],
)
def test_a_hand_edited_trainer_state_is_refused_in_one_line(tmp_path, edit):
    out = tmp_path / "ck"
    Trainer(CONFIG, TRAIN, TOK, *train_val_split(np.array(TOK.encode(TEXT))), out).run(False)
    path = out / "trainer_state.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(checkpoint.CheckpointError, match=str(out)):
        Trainer.resume(out, *train_val_split(np.array(TOK.encode(TEXT))), max_iters=6)


def test_refuse_overwrite_names_the_first_existing_output_and_leaves_it(tmp_path):
    from minigen.runs import refuse_overwrite

    kept, fresh = tmp_path / "model.safetensors", tmp_path / "new.png"
    kept.write_bytes(b"a finished run")
    refuse_overwrite([fresh, None], force=False)  # nothing there yet: no error
    with pytest.raises(FileExistsError, match="model.safetensors already exists; pass --force"):
        refuse_overwrite([fresh, None, kept], force=False)
    with pytest.raises(FileExistsError, match="model.safetensors"):
        refuse_overwrite(str(kept), force=False)  # one path, as a string
    refuse_overwrite([kept], force=True)
    assert kept.read_bytes() == b"a finished run"
