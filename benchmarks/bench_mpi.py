"""Data parallelism on MPI: step time and gradient-exchange time on this machine, and the ring
all-reduce cost model fitted to them and projected to many ranks for GPT-2 124M.

    python benchmarks/bench_mpi.py                 # needs mpi4py and mpiexec (the mpi extra)
    python benchmarks/bench_mpi.py --rounds 3 --out benchmarks/results/mpi-DATE.md

What it runs, each a fresh process (or an mpiexec job), in alternating rounds so that the
machine's load drifts alike for all:

1. one training step of train-gpt's default model (nanoGPT's CPU config: 4 layers, 128-dim,
   batch 12 x 64, float32, one BLAS thread per process), computed (a) by one process, (b) by
   `ShardedBackward` with 2 shards over 2 shared-memory processes (--shards 2), (c) by
   `MPIBackward` in an `mpiexec -n 2` job; medians of the step time and of (c)'s exchange;
2. the gradient exchange alone between 2 ranks for vectors of 4 KiB to 256 MiB: minigen's
   rank-ordered reduction (Alltoall, sum in rank order, Allgather) and MPI's own Allreduce;
3. a fit of t(bytes) = 2 (N - 1) latency + 2 (N - 1) / N * bytes / bandwidth (the ring
   all-reduce, N = 2 here) to the exchange times, and its projection for GPT-2 124M's gradient (float32)
   at N = 8, 64, 1024, for the fitted bandwidth of this machine and for an assumed cluster
   link; with one GPT-2 124M forward and backward timed here, the share of a step spent
   exchanging at a fixed global batch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
SIZES = [2**k for k in range(10, 27, 2)]  # float32 elements: 4 KiB .. 256 MiB


def _gpt_step_setup(shards: int):
    from minigen import rng
    from minigen.text.gpt import GPT, preset
    from minigen.text.train import TrainConfig, get_batch, make_optimizer

    rng.manual_seed(0)
    config = preset("small")
    model = GPT(config)
    opt = make_optimizer(model, TrainConfig())
    data = np.random.default_rng(0).integers(0, config.vocab_size, 100_000)
    gen = np.random.default_rng(1)

    def batches():
        x, y = get_batch(data, 12, config.block_size, gen)  # (B, T) each
        rows = np.array_split(np.arange(len(x)), shards)
        return [(x[r], y[r], len(r) / len(x)) for r in rows]

    return config, model, opt, batches


def job_step(kind: str, steps: int) -> dict:
    """Median seconds of one training step (forward, backward, exchange, AdamW)."""
    from functools import partial

    from minigen import mpi
    from minigen.backend import blas_threads
    from minigen.parallel import ShardedBackward
    from minigen.text.gpt import GPT
    from minigen.text.train import shard_loss

    comm = mpi.world() if kind == "mpi" else None
    shards = comm.Get_size() if comm is not None else (2 if kind == "shm" else 1)
    config, model, opt, batches = _gpt_step_setup(shards)
    exchange: list[float] = []
    if comm is not None:
        engine = mpi.MPIBackward(model, shard_loss, comm, threads=1)
        engine.comm = _Timed(comm, exchange)
    else:
        engine = ShardedBackward(model, partial(GPT, config), shard_loss, shards, shards)
    times, cpu = [], 0.0
    with blas_threads(1):
        for i in range(steps + 3):
            if i == 3:  # CPU seconds of every process of the job, over the timed steps
                cpu = -_cpu_seconds(engine)
            t0 = time.perf_counter()
            opt.zero_grad()
            engine(batches())
            opt.step()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    cpu += _cpu_seconds(engine)
    if comm is not None:
        cpu = sum(comm.allgather(cpu))
    engine.close()
    ex = statistics.median(exchange[3:]) if exchange else 0.0
    return {"step": statistics.median(times), "exchange": ex, "cpu": cpu / steps}


def _cpu_seconds(engine) -> float:
    """This process's CPU seconds, and its shared-memory workers' (from /proc)."""
    total = time.process_time()
    for proc in getattr(engine, "_procs", []):
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


class _Timed:
    """A communicator whose collectives add their seconds to a list, one entry per step."""

    def __init__(self, comm, out: list[float]) -> None:
        self.comm, self.out = comm, out

    def allgather(self, obj):  # the first collective of a step: the step's shard is done
        self.comm.Barrier()  # (waiting for the slower rank is not exchange time)
        self._t0 = time.perf_counter()
        return self.comm.allgather(obj)

    def Alltoall(self, *a):  # noqa: N802 - MPI's name
        return self.comm.Alltoall(*a)

    def Allgather(self, *a):  # noqa: N802
        self.comm.Allgather(*a)
        self.out.append(time.perf_counter() - self._t0)

    def __getattr__(self, name):
        return getattr(self.comm, name)


def job_exchange(repeats: int) -> dict:
    """Median seconds of the rank-ordered reduction and of MPI's Allreduce, per size."""
    from mpi4py import MPI

    from minigen.data_parallel import sum_in_order

    comm = MPI.COMM_WORLD
    n = comm.Get_size()
    out = {"ordered": [], "allreduce": []}
    for size in SIZES:
        piece = -(-size // n)
        flat = np.random.default_rng(comm.Get_rank()).standard_normal(n * piece, dtype=np.float32)
        pieces = np.empty((n, piece), np.float32)
        total, red = np.empty(n * piece, np.float32), np.empty(n * piece, np.float32)
        t_ord, t_all = [], []
        for _ in range(repeats):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Alltoall(flat.reshape(n, -1), pieces)
            comm.Allgather(sum_in_order(pieces), total.reshape(n, -1))
            t_ord.append(time.perf_counter() - t0)
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(flat, red)
            t_all.append(time.perf_counter() - t0)
        out["ordered"].append(statistics.median(t_ord))
        out["allreduce"].append(statistics.median(t_all))
    return out


def job_gpt2(tokens: int) -> dict:
    """Seconds of one forward and backward of GPT-2 124M on a batch of 1 x `tokens`."""
    from minigen import rng
    from minigen.text.gpt import GPT, preset

    rng.manual_seed(0)
    config = preset("gpt2")
    model = GPT(config)
    x = np.random.default_rng(0).integers(0, config.vocab_size, (1, tokens))
    times = []
    for _ in range(2):
        model.zero_grad()
        t0 = time.perf_counter()
        model.loss(x[:, :-1], x[:, 1:]).backward()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "tokens": tokens - 1, "params": config.num_params()}


def run(command: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ring_time(n: int, nbytes: float, latency: float, bandwidth: float) -> float:
    """The ring all-reduce: 2 (n - 1) messages in turn, each rank sending 2 (n - 1) / n of it."""
    return 0.0 if n == 1 else 2 * (n - 1) * latency + 2 * (n - 1) / n * nbytes / bandwidth


def fit(sizes_bytes: np.ndarray, seconds: np.ndarray, n: int) -> tuple[float, float]:
    """(latency, bandwidth) of `ring_time`: the latency from the smallest message (all
    latency), the bandwidth by least squares over the messages of 16 MiB and more (out of the
    caches, the regime of a large model's gradient)."""
    latency = seconds[0] / (2 * (n - 1))
    big = sizes_bytes >= 2**24
    volume = 2 * (n - 1) / n * sizes_bytes[big]
    rest = seconds[big] - 2 * (n - 1) * latency
    return float(latency), float(volume @ volume / (volume @ rest))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of step jobs")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per job")
    ap.add_argument("--link-gbs", type=float, default=12.5,
                    help="assumed cluster link for the projection, GB/s (12.5: 100 Gb/s)")  # fmt: skip
    ap.add_argument("--link-latency-us", type=float, default=5.0,
                    help="assumed latency of a cluster link, microseconds")  # fmt: skip
    ap.add_argument("--accel-tflops", type=float, default=100.0,
                    help="assumed accelerator speed for the projection, TFLOP/s (effective)")  # fmt: skip
    ap.add_argument("--gpt2-tokens", type=int, default=129, help="tokens of the GPT-2 step")
    ap.add_argument("--out", help="write the results as Markdown here")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--arg", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        result = {"step": lambda: job_step(args.job.split(":")[1], args.arg),
                  "exchange": lambda: job_exchange(args.arg),
                  "gpt2": lambda: job_gpt2(args.arg)}[args.job.split(":")[0]]()  # fmt: skip
        from minigen import mpi

        comm = mpi.world()
        if comm is None or comm.Get_rank() == 0:
            print(json.dumps(result))
        return
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    me = [sys.executable, str(HERE)]
    kinds = {"1 process": ["--job", "step:one"], "--shards 2 (shared memory)": ["--job", "step:shm"],
             "mpiexec -n 2": ["--job", "step:mpi"]}  # fmt: skip
    steps: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k, job in kinds.items():
            launch = [mpiexec, "-n", "2"] if k.startswith("mpiexec") else []
            steps[k].append(run([*launch, *me, *job, "--arg", str(args.steps)]))
            print(f"round {r + 1}: {k}: {steps[k][-1]}", flush=True)
    ex = run([mpiexec, "-n", "2", *me, "--job", "exchange", "--arg", "15"])
    gpt2 = run([*me, "--job", "gpt2", "--arg", str(args.gpt2_tokens)])
    sizes = np.array(SIZES, dtype=float) * 4
    lat, bw = fit(sizes, np.array(ex["ordered"]), 2)
    lat_a, bw_a = fit(sizes, np.array(ex["allreduce"]), 2)
    print(report(args, steps, ex, gpt2, (lat, bw), (lat_a, bw_a)))
    if args.out:
        Path(args.out).write_text(report(args, steps, ex, gpt2, (lat, bw), (lat_a, bw_a)))


def report(args, steps, ex, gpt2, ordered, allreduce) -> str:
    today = datetime.date.today().isoformat()
    load = os.getloadavg()[0]
    lines = [f"# bench_mpi.py, {today} (2-core machine, load average {load:.1f} at the end)", "",
             f"## One training step of train-gpt's default model ({args.rounds} rounds x "
             f"{args.steps} steps, medians of the rounds' medians)", "",
             "| engine | step (ms) | of which exchange (ms) | CPU s per step, all processes "
             "| rounds (ms) |", "|---|---|---|---|---|"]  # fmt: skip
    for k, rs in steps.items():
        med = statistics.median(r["step"] for r in rs) * 1e3
        exm = statistics.median(r["exchange"] for r in rs) * 1e3
        each = ", ".join(f"{r['step'] * 1e3:.1f}" for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        lines.append(f"| {k} | {med:.1f} | {exm:.2f} | {cpu:.3f} | {each} |")
    lines += ["", "## The exchange alone, 2 ranks (median of 15)", "",
              "| float32 elements | bytes | rank-ordered (ms) | its fit (ms) | MPI Allreduce (ms) |",
              "|---|---|---|---|---|"]  # fmt: skip
    (lat, bw), (lat_a, bw_a) = ordered, allreduce
    for s, a, b in zip(SIZES, ex["ordered"], ex["allreduce"], strict=True):
        model = ring_time(2, 4 * s, lat, bw)
        lines.append(f"| {s:,} | {4 * s:,} | {a * 1e3:.3f} | {model * 1e3:.3f} | {b * 1e3:.3f} |")
    lines += ["", "## The ring model t = 2 (N - 1) latency + 2 (N - 1) / N * bytes / bandwidth",
              "", f"Fitted (N = 2; the latency from the 4 KiB message, the bandwidth from those of 16 "
              f"MiB and more): rank-ordered latency {lat * 1e6:.0f} us, "
              f"bandwidth {bw / 1e9:.2f} GB/s; MPI Allreduce {lat_a * 1e6:.0f} us, "
              f"{bw_a / 1e9:.2f} GB/s."]  # fmt: skip
    p, link, accel = gpt2["params"], args.link_gbs * 1e9, args.accel_tflops * 1e12
    nbytes = 4 * p
    per_token = gpt2["seconds"] / gpt2["tokens"]
    flops_here = 6 * p * gpt2["tokens"] / gpt2["seconds"]  # 6 N FLOPs per token, fwd + bwd
    batch = 512 * 1024  # GPT-2's batch: 512 sequences of 1024 tokens
    lines += ["", f"GPT-2 124M ({p:,} parameters): its float32 gradient is {nbytes / 1e6:.0f} MB. "
              f"One forward and backward here: {gpt2['seconds']:.2f} s for {gpt2['tokens']} "
              f"tokens ({per_token * 1e3:.1f} ms/token, {flops_here / 1e9:.0f} GFLOP/s at 6 N "
              f"FLOPs per token). GPT-2's batch (512 x 1024 tokens) split over N ranks; the "
              f"exchange with this machine's fitted latency and bandwidth, and on an assumed "
              f"link of {args.link_latency_us:g} us and {args.link_gbs:g} GB/s; the compute at "
              f"this CPU's speed and at an assumed accelerator's {args.accel_tflops:g} TFLOP/s "
              f"(effective):", "",
              "| N | exchange here (s) | exchange on the link (s) | compute per rank, this CPU "
              "(s) | compute per rank, accelerator (s) | exchange share, accelerator + link |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for n in (1, 2, 8, 64, 1024):
        comp, fast = per_token * batch / n, 6 * p * batch / n / accel
        here = ring_time(n, nbytes, lat, bw)
        there = ring_time(n, nbytes, args.link_latency_us * 1e-6, link)
        lines.append(f"| {n} | {here:.3f} | {there:.3f} | {comp:,.0f} | {fast:.3f} | "
                     f"{there / (fast + there):.0%} |")  # fmt: skip
    lines += ["", "Assumes: a ring of N ranks, 2 (N - 1) steps each paying the latency "
              "and moving 1/N of the gradient (so each rank sends 2 (N - 1) / N of it, "
              "which tends to twice the gradient whatever N); every link as fast as the one "
              "assumed; the compute per token measured or assumed, the same on every rank; no "
              "overlap of the exchange with the backward pass; a float32 gradient."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
