"""Kernels against their multi-pass NumPy references, at the shapes minigen trains with.

    python benchmarks/bench_kernels.py                  # numpy vs numba-cpu (+ GPU backends)
    python benchmarks/bench_kernels.py --repeats 21 --only softmax
    python benchmarks/bench_kernels.py --all-cores      # numba-cpu on every thread

Shapes: a small GPT (batch 12, context 64, 4 heads, embedding 128, vocabulary 65:
attention scores (12, 4, 64, 64), layer-norm rows (768, 128), GELU (768, 512),
logits (768, 65)) and the DDPM sampler of a U-Net on 8x8 and 16x16 images. All in
float32, the training dtype. For each case, every backend runs once per round, in
an order that rotates between rounds (so slow drifts of a shared machine hit all of
them alike); the table gives medians over the rounds and each kernel's speed-up
over NumPy (numpy time / kernel time: above 1 means the kernel is faster). The
"numpy" column runs minigen_kernels/reference.py, which is minigen's own NumPy code (what
`backend.use("numpy")` runs), except that its layer-norm forward also returns the
row means the kernels' backward needs: one reduction more than F.layer_norm_forward,
and its GELU backward reruns the forward (minigen's keeps the forward's Phi(x)).
numba-cpu runs arrays under 1M elements on one core (waking threads costs more than
the work on a busy machine); `--all-cores` runs every call on all of Numba's threads
(NUMBA_NUM_THREADS) to show what threads add, or cost, on this machine.

Matmul: models call BLAS (`a @ b`); the naive and tiled kernels are there to show
why blocking matters, and the table shows how far both stay behind BLAS.
GPU backends (numba-cuda, cupy) are timed on device-resident arrays, synchronised,
when a GPU is present; their "speed-up" is still against NumPy on the CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # minigen from this checkout (the NumPy references are its code)


def import_kernels():
    """minigen_kernels, installed or (from a checkout) kernels/minigen_kernels/ beside this one."""
    from minigen import backend

    return backend.import_kernels()


def cases(rng: np.random.Generator) -> list[tuple[str, str, Callable, tuple]]:
    """(name, shape label, kernel name, args) at the training shapes, float32."""
    f32 = np.float32

    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(f32)

    att, att_dy = normal(12, 4, 64, 64, scale=3.0), normal(12, 4, 64, 64)
    probs = np.exp(att - att.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(f32)
    scale = 1 / math.sqrt(128 // 4)
    tril = np.tril(np.ones((64, 64), bool))
    causal = np.where(tril, probs, 0) / np.where(tril, probs, 0).sum(-1, keepdims=True)
    logits, logits_dy = normal(768, 65, scale=3.0), normal(768, 65)
    logp = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(f32)
    ln_x, ln_dy = normal(768, 128), normal(768, 128)
    w, b = normal(128), normal(128)
    mu, rstd = ln_x.mean(-1), (1 / np.sqrt(ln_x.var(-1) + 1e-5)).astype(f32)
    g, g_dy = normal(768, 512), normal(768, 512)
    unet = normal(64, 32, 16, 16)
    ddpm = (0.02, 0.98, 0.5, math.sqrt(0.02))
    img8 = [normal(64, 1, 8, 8) for _ in range(3)]
    img16 = [normal(64, 1, 16, 16) for _ in range(3)]
    a, bm = normal(768, 128), normal(128, 512)
    n_gpt = 809_856  # the parameters of the GPT benchmark's model: AdamW's flat buffer
    p, grad, m, v = normal(n_gpt), normal(n_gpt), normal(n_gpt), np.abs(normal(n_gpt))
    adamw = (p, grad, m, v, 1e-3, 0.9, 0.99, 1e-8, 0.1, 5)  # updated in place, round after round
    return [
        ("softmax fwd", "(12,4,64,64)", "softmax_forward", (att,)),
        ("softmax bwd", "(12,4,64,64)", "softmax_backward", (probs, att_dy)),
        ("causal softmax fwd", "(12,4,64,64)", "causal_softmax_forward", (att, scale)),
        (
            "causal softmax bwd",
            "(12,4,64,64)",
            "causal_softmax_backward",
            (causal.astype(f32), att_dy, scale),
        ),  # noqa: E501
        ("log-softmax fwd", "(768,65)", "log_softmax_forward", (logits,)),
        ("log-softmax bwd", "(768,65)", "log_softmax_backward", (logp, logits_dy)),
        ("layer norm fwd", "(768,128)", "layer_norm_forward", (ln_x, w, b)),
        ("layer norm bwd", "(768,128)", "layer_norm_backward", (ln_dy, ln_x, w, mu, rstd)),
        ("GELU tanh fwd", "(768,512)", "gelu_forward", (g, "tanh")),
        ("GELU tanh bwd", "(768,512)", "gelu_backward", (g, g_dy, "tanh")),
        ("GELU erf fwd", "(768,512)", "gelu_forward", (g, "none")),
        ("GELU erf bwd", "(768,512)", "gelu_backward", (g, g_dy, "none")),
        ("GELU tanh fwd (U-Net)", "(64,32,16,16)", "gelu_forward", (unet, "tanh")),
        ("DDPM step 8x8", "(64,1,8,8)", "ddpm_step", (*img8, *ddpm)),
        ("DDPM step 16x16", "(64,1,16,16)", "ddpm_step", (*img16, *ddpm)),
        ("AdamW step", "(809856,)", "adamw_step", adamw),
        ("matmul naive vs BLAS", "(768,128)@(128,512)", "matmul_naive", (a, bm)),
        ("matmul tiled vs BLAS", "(768,128)@(128,512)", "matmul_tiled", (a, bm)),
    ]


def synchronizer(backend: str) -> Callable[[], None]:
    if backend == "numba-cuda":
        from numba import cuda

        return cuda.synchronize
    if backend == "cupy":
        import cupy

        return lambda: cupy.cuda.Device().synchronize()
    return lambda: None


def to_backend(backend: str, args: tuple) -> tuple:
    """The arguments as the backend's arrays (on the GPU for GPU backends)."""
    if backend == "numba-cuda":
        from numba import cuda

        return tuple(cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args)
    if backend == "cupy":
        import cupy

        return tuple(cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
    return args


def on_all_cores(backend, f: Callable) -> Callable:
    """f, called with numba-cpu's parallel threshold at 0 (every call on all threads)."""

    def call(*args):
        previous = backend.set_parallel_min_size(0)
        try:
            return f(*args)
        finally:
            backend.set_parallel_min_size(previous)

    return call


def measure(
    funcs: list[Callable[[], object]], syncs: list, repeats: int, clock: Callable[[], float]
) -> list[float]:
    """Median seconds per call of each function, rounds rotating the order."""
    per_call = []
    for f, sync in zip(funcs, syncs, strict=True):  # warm up (compiles), then calibrate
        f()
        sync()
        t0 = clock()
        f()
        sync()
        per_call.append(clock() - t0)
    # calls per sample: each sample lasts about 2 ms, so the timer's resolution is moot
    numbers = [max(1, min(1000, int(2e-3 / max(t, 1e-7)))) for t in per_call]
    samples: list[list[float]] = [[] for _ in funcs]
    for r in range(repeats):
        for i in np.roll(np.arange(len(funcs)), r):
            f, sync, n = funcs[i], syncs[i], numbers[i]
            t0 = clock()
            for _ in range(n):
                f()
            sync()
            samples[i].append((clock() - t0) / n)
    return [statistics.median(s) for s in samples]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31, help="rounds per case (odd)")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--backends", default="", help="comma-separated (default: available)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: CPU time of this process (all its threads), which"
        " a busy shared machine disturbs less",
    )
    parser.add_argument(
        "--all-cores",
        action="store_true",
        help="run every numba-cpu call on all of Numba's threads (default: under 1M elements,"
        " one core)",
    )
    args = parser.parse_args(argv)
    # idle OpenMP workers sleep at once instead of spinning on the cores the next
    # measurements need (numba's "omp" threading layer; must precede importing numba)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    mk = import_kernels()
    names = args.backends.split(",") if args.backends else list(mk.available())
    if mk.is_cuda_simulator() and "numba-cuda" in names and not args.backends:
        names.remove("numba-cuda")  # the simulator is for tests, not timings
    # (column label, backend, every call on all cores)
    label = "numba-cpu all cores" if args.all_cores else "numba-cpu"
    columns = [(label if n == "numba-cpu" else n, n, args.all_cores) for n in names if n != "numpy"]
    ref = mk.get("numpy")
    import numba

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"numpy {np.__version__}, numba {numba.__version__} ({numba.get_num_threads()} threads),"
        f" {os.cpu_count()} CPUs, load average {load:.2f}; float32; {args.clock} clock,"
        f" median of {args.repeats} rounds; speed-up = numpy time / kernel time\n"
    )
    head = "| case | shape | numpy (µs) | " + " | ".join(f"{c[0]} (µs) | speed-up" for c in columns)
    print(head + " |")
    print("|" + "---|" * (3 + 2 * len(columns)))
    rng = np.random.default_rng(0)
    for name, shape, kernel, call_args in cases(rng):
        if args.only not in name:
            continue
        if kernel.startswith("matmul"):  # the baseline is BLAS, what models use
            a, b = call_args
            funcs = [lambda a=a, b=b: a @ b]
        else:
            ref_f = getattr(ref, kernel)
            funcs = [lambda f=ref_f, c=call_args: f(*c)]
        syncs = [synchronizer("numpy")]
        for _, k, all_cores in columns:
            f, dev_args = getattr(mk.get(k), kernel), to_backend(k, call_args)
            if all_cores:
                f = on_all_cores(mk.get(k), f)
            funcs.append(lambda f=f, c=dev_args: f(*c))
            syncs.append(synchronizer(k))
        times = measure(funcs, syncs, args.repeats, clock)
        cells = [f"{times[0] * 1e6:.1f}"]
        for t in times[1:]:
            cells += [f"{t * 1e6:.1f}", f"{times[0] / t:.2f}x"]
        print(f"| {name} | {shape} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
