"""minigen.mpi: data parallelism over the ranks of a real MPI job (`mpiexec -n N`).

The tests start mpiexec; the ranks run this file's `main` (python -m tests.test_mpi CASE ...).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
try:
    import mpi4py  # noqa: F401
except ImportError:
    HAVE_MPI4PY = False
else:
    HAVE_MPI4PY = True

pytestmark = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC), reason='needs mpi4py and mpiexec: pip install -e ".[mpi]"'
)
MINIGEN = [sys.executable, "-c", "import sys; from minigen.cli import main; sys.exit(main())"]
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "5", "--eval-interval", "3", "--eval-iters", "2", "--sample", "0"]  # fmt: skip


def mpirun(n: int, *command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # one backend for the CLI's ranks and the library's (`diffusion-until`), whatever the default
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MINIGEN_BACKEND": os.environ.get("MINIGEN_BACKEND", "numpy")}  # fmt: skip
    return subprocess.run([MPIEXEC, "-n", str(n), *command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def rank_main(case: str, *args: str) -> None:
    """What each rank runs (see the tests below)."""
    from minigen.mpi import MPIBackward, abort_on_error, check_in_sync, world

    comm = world()
    assert comm is not None, "run me under mpiexec -n 2 or more"
    rank, size = comm.Get_rank(), comm.Get_size()
    if case == "abort":  # rank 1 fails alone, while rank 0 waits for it
        with abort_on_error(comm):
            if rank == 1:
                raise ValueError("a rank-local failure")
            comm.Barrier()
        return
    if case == "refuse":  # a command whose trainer does not share its steps among ranks
        from minigen.diffusion.training import TrainConfig
        from minigen.run_state import resumable_run

        try:
            with resumable_run(args[0], TrainConfig(), {}, False, False):
                pass
        except ValueError as e:
            print(e)
        return
    if case == "diffusion-until":  # train-diffusion's run, stopped after step 20 of 30
        from minigen.diffusion import training
        from minigen.run_state import resumable_run

        class Stop(Exception):
            pass

        config = training.TrainConfig(data="moons", steps=30, batch_size=64, seed=0)
        try:
            with resumable_run(args[0], config, {}, False, False, True) as (run_dir, _, config):
                training.train(config, False, run_dir=run_dir, checkpoint_interval=10, until=20)
                raise Stop  # as if killed: the run folder stays
        except Stop:
            return
    from minigen import functional as F
    from minigen import rng
    from minigen.parallel import ShardedBackward
    from tests.test_parallel import batch, build, grads, shard_loss, split

    rng.manual_seed(100 + rank)  # different weights on each rank: rank 0's are broadcast
    model = build()
    engine = MPIBackward(model, shard_loss, comm)
    x, y = batch(7, 4)  # 7 rows: uneven shards for 2 and 3 ranks
    if case == "fail":  # the last rank's shard raises: every rank hears of it
        shards = split(x, y, size)
        shards[-1]["fail"] = True
        try:
            engine(shards)
        except RuntimeError as e:
            if rank == 0:
                Path(args[0]).write_text(str(e))
            raise
        return
    full, sharded = build(), build()  # rank 0's reference: the whole batch, and --shards N
    full.load_state_dict(model.state_dict())
    sharded.load_state_dict(model.state_dict())
    worst, same = 0.0, True
    with ShardedBackward(sharded, build, shard_loss, shards=size) as local:
        for _ in range(3):  # three SGD steps: the ranks follow the changing weights
            for m in (model, full, sharded):
                m.zero_grad()
            value = engine(split(x, y, size))
            if rank == 0:
                ref = F.mse_loss(full(x), y)
                ref.backward()
                worst = max(worst, abs(value - ref.item()))
                same &= local(split(x, y, size)) == value
                for g, gf, gs in zip(grads(model), grads(full), grads(sharded), strict=True):
                    assert (g is None) == (gf is None) == (gs is None)
                    if g is not None:
                        worst = max(worst, float(np.max(np.abs(g - gf))))
                        same &= bool(np.array_equal(g, gs))
            for m in (model, full, sharded):
                for p in m.parameters():
                    if p.grad is not None:
                        p.data -= 0.1 * p.grad
    check_in_sync(comm, model)
    if rank == 0:
        print(json.dumps({"worst": worst, "same_as_shards": bool(same)}))


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_reduced_gradient_is_the_batch_gradient(ranks):
    """N ranks (3: uneven shards of a batch of 7) give the single-process batch gradient within
    1e-12 in float64, and the gradient of --shards N in one process bit for bit, three steps
    running, from rank 0's weights on every rank."""
    out = mpirun(ranks, sys.executable, "-m", "tests.test_mpi", "grad")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["worst"] <= 1e-12
    assert result["same_as_shards"]


def test_a_failing_shard_stops_every_rank_with_its_traceback_on_rank_0(tmp_path):
    seen = tmp_path / "rank0.txt"
    out = mpirun(2, sys.executable, "-m", "tests.test_mpi", "fail", str(seen))
    assert out.returncode != 0
    text = seen.read_text()
    assert "rank 1 failed" in text and "told to fail" in text and "Traceback" in text


def test_a_command_without_ranks_refuses_mpiexec(tmp_path):
    out = mpirun(2, sys.executable, "-m", "tests.test_mpi", "refuse", str(tmp_path / "x"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("does not run under mpiexec (2 ranks here)") == 2
    assert not list(tmp_path.iterdir())  # no lock, no run folder


def test_a_rank_local_error_aborts_the_job():
    """One rank raises while the other waits for it: MPI_Abort ends both (no hang), non-zero,
    with the failing rank's traceback."""
    out = mpirun(2, sys.executable, "-m", "tests.test_mpi", "abort")
    assert out.returncode != 0
    assert "rank 1 of 2 failed" in out.stderr and "a rank-local failure" in out.stderr


def _losses(folder: Path) -> list[float]:
    return json.loads((folder / "trainer_state.json").read_text())["losses"]


def _weights(folder: Path) -> dict[str, Any]:
    from minigen import checkpoint

    return checkpoint.load(folder / "model.safetensors")[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny corpus, and the single-process runs of 6 steps: --shards 1 and --shards 2."""
    where = tmp_path_factory.mktemp("mpi_gpt")
    gen = np.random.default_rng(0)
    (where / "c.txt").write_text("".join(gen.choice(list("abcdefgh \n"), 20000)))
    from minigen.cli import main

    for shards in (1, 2):
        args = ["train-gpt", "--corpus", str(where / "c.txt"), *TINY, "--max-iters", "6"]
        assert main([*args, "--shards", str(shards), "--workers", "1",
                     "--out", str(where / f"one{shards}")]) == 0  # fmt: skip
    return where


def test_train_gpt_under_mpi_is_shards_n_in_one_process(corpus):
    """mpiexec -n 2 minigen train-gpt: the losses and weights of --shards 2 in one process, bit
    for bit; those of one process and one shard (mpiexec -n 1) only to float32 rounding."""
    out = mpirun(2, *MINIGEN, "train-gpt", "--corpus", "c.txt", *TINY, "--max-iters", "6",
                 "--out", "mpi2", cwd=corpus)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("checkpoint and loss curve in mpi2") == 1  # rank 0 alone prints
    assert _losses(corpus / "mpi2") == _losses(corpus / "one2")
    a, b = _weights(corpus / "mpi2"), _weights(corpus / "one2")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_allclose(_losses(corpus / "mpi2"), _losses(corpus / "one1"), rtol=1e-5)


def test_resume_under_mpi(corpus):
    """A 2-rank run stopped at step 3 and resumed to 6 computes the losses of the 6-step run;
    resuming it with another number of ranks is refused (the shards are the recipe's)."""
    base = ["train-gpt", "--corpus", "c.txt", "--out", "mpir"]
    out = mpirun(2, *MINIGEN, *base, *TINY, "--max-iters", "3", cwd=corpus)
    assert out.returncode == 0, out.stderr
    out = mpirun(3, *MINIGEN, *base, "--resume", "--max-iters", "6", "--sample", "0", cwd=corpus)
    assert out.returncode != 0 and "shards must be 3, the run's is 2" in out.stderr
    out = mpirun(2, *MINIGEN, *base, "--resume", "--max-iters", "6", "--sample", "0", cwd=corpus)
    assert out.returncode == 0, out.stderr
    assert _losses(corpus / "mpir") == _losses(corpus / "one2")


DIFFUSION = ["train-diffusion", "--data", "moons", "--steps", "30", "--batch-size", "64", "--quiet"]


def test_train_diffusion_under_mpi_and_its_resume(tmp_path):
    """mpiexec -n 2 minigen train-diffusion: the weights of one process to float32 rounding;
    a 2-rank run stopped at step 20 (its state saved at 10 and 20) and resumed with --resume
    ends with the weights of the uninterrupted 2-rank run, bit for bit."""
    from minigen import checkpoint
    from minigen.cli import main

    assert main([*DIFFUSION, "--out", str(tmp_path / "one.safetensors")]) == 0
    out = mpirun(2, *MINIGEN, *DIFFUSION, "--out", "two.safetensors", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("trained 30 steps") == 1  # rank 0 alone prints
    one, two = (checkpoint.load(tmp_path / f"{k}.safetensors")[0] for k in ("one", "two"))
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-6)
    out = mpirun(2, sys.executable, "-m", "tests.test_mpi", "diffusion-until",
                 str(tmp_path / "again.safetensors"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "again.safetensors.run").is_dir()
    out = mpirun(2, *MINIGEN, *DIFFUSION, "--out", "again.safetensors", "--resume", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    again = checkpoint.load(tmp_path / "again.safetensors")[0]
    assert all(np.array_equal(again[k], two[k]) for k in two)
    assert not (tmp_path / "again.safetensors.run").exists()


if __name__ == "__main__":
    rank_main(*sys.argv[1:])
