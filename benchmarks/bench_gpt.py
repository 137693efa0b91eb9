"""The speed benchmark of §7.1: a GPT training iteration, minigen against PyTorch, in one run.

    python benchmarks/bench_gpt.py [--threads 2] [--rounds 10]
    python benchmarks/bench_gpt.py --sizes            # the step as the model grows (item 4)

1. Time per training iteration (forward, backward, gradient clipping, AdamW) of nanoGPT's
   CPU config (4 blocks, 4 heads, 128-dim tokens, context 64, batch 12, vocabulary 65) in
   float32, for minigen and for an equal PyTorch eager model (tests/gpt_reference.py: same
   layers, same weights, F.scaled_dot_product_attention), both limited to the same number
   of threads, timed alternately (A, B, A, B, ...) so that both see the same machine
   noise (in blocks, with pauses, so that one library's idle threads do not slow the other);
   medians and their ratio (target: minigen <= 1.0x PyTorch's time). With `--shards N`,
   minigen spends its threads another way: each iteration's gradient is the sum of N shards'
   (minigen.parallel), computed by N processes with one BLAS thread each, while PyTorch
   keeps `--threads` threads in one process (the same cores: N = --threads).
2. The model's FLOP/s (`flops_per_token` x tokens per iteration / time) as a fraction of
   the machine's float32 matmul peak, measured here on a large square matmul.
With `--sizes`, only the training iteration, at each of SIZES (width, context, layers, heads),
one row each: where the gap to PyTorch grows with the model.
3. Generation throughput, tokens/s with and without the KV cache, when the context holds
   64 and 256 tokens (the same model with block_size 256, greedy, batch 1).

PyTorch is a benchmark peer only (the oracle extra); minigen never imports it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import minigen  # noqa: E402
from minigen import no_grad, optim  # noqa: E402
from minigen.parallel import ShardedBackward  # noqa: E402
from minigen.text import GPT, GPTConfig, TrainConfig, flops_per_token, preset  # noqa: E402
from minigen.text.train import make_optimizer, shard_loss  # noqa: E402

B = 12
# (n_embd, block_size, n_layer, n_head): nanoGPT's CPU config up to GPT-2 small's width
SIZES = ((128, 64, 4, 4), (256, 128, 4, 4), (512, 128, 6, 8), (768, 256, 6, 12))


def batch(config: GPTConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    shape = (B, config.block_size)
    return g.integers(0, config.vocab_size, shape), g.integers(0, config.vocab_size, shape)


def minigen_step(
    config: GPTConfig, tc: TrainConfig, shards: int = 1
) -> tuple[Callable[[], None], GPT, ShardedBackward | None]:
    minigen.manual_seed(0)
    model = GPT(config)
    opt = make_optimizer(model, tc)
    params = model.parameters()
    x, y = batch(config)
    sharded = None
    if shards > 1:  # the gradient as the sum of the shards', one process per shard
        sharded = ShardedBackward(model, partial(GPT, config), shard_loss, shards, shards)
        rows = np.array_split(np.arange(B), shards)
        parts = [(x[r], y[r], len(r) / B) for r in rows]

    def run() -> None:
        opt.zero_grad()
        if sharded is None:
            model.loss(x, y).backward()
        else:
            sharded(parts)
        optim.clip_grad_norm_(params, tc.grad_clip)
        opt.step()

    return run, model, sharded


def torch_step(torch, config: GPTConfig, tc: TrainConfig, state: dict) -> Callable[[], None]:
    from tests.gpt_reference import TorchGPT, adamw

    model = TorchGPT(config)
    model.load_numpy(state)
    opt = adamw(model, tc.learning_rate, (tc.beta1, tc.beta2), tc.weight_decay)
    x, y = (torch.from_numpy(a) for a in batch(config))

    def run() -> None:
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()

    return run


def alternate(
    a: Callable[[], None], b: Callable[[], None], rounds: int, per_round: int = 5
) -> tuple[list, list]:
    """Seconds per call of a and of b: blocks of `per_round` timed calls, alternating A, B,
    A, B, ... Each block starts after a pause and one untimed call: a library's worker
    threads keep spinning for a while after its last call (OpenBLAS's for about 0.1 s), and
    would take the cores from the other library if it ran at once (timing call by call,
    A B A B, made PyTorch look twice as slow at 2 threads)."""
    for f in (a, b):
        for _ in range(5):
            f()
    ta, tb = [], []
    for _ in range(rounds):
        for f, out in ((a, ta), (b, tb)):
            time.sleep(0.3)
            f()
            for _ in range(per_round):
                t0 = time.perf_counter()
                f()
                out.append(time.perf_counter() - t0)
    return ta, tb


def matmul_peak(torch, n: int = 2048, repeats: int = 10) -> float:
    """The best float32 matmul rate, in FLOP/s, of NumPy and PyTorch on n x n matrices."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ta = torch.from_numpy(a)
    best = 0.0
    for f in (lambda: a @ a, lambda: ta @ ta):
        f()
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def decode_rate(model: GPT, context: int, use_cache: bool, n: int = 32) -> float:
    """Tokens/s of greedy decoding once the context holds `context` tokens (prefill untimed)."""
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, context - n))
    with no_grad():
        cache = model.new_cache() if use_cache else None
        logits = model(ids, cache=cache, last_only=True)
        t0 = time.perf_counter()
        for _ in range(n):
            nxt = logits.data[:, -1].argmax(-1)[:, None]
            ids = np.concatenate([ids, nxt], axis=1)
            logits = model(nxt if use_cache else ids, cache=cache, last_only=True)
        return n / (time.perf_counter() - t0)


def size_sweep(torch, tc: TrainConfig, rounds: int, shards: int) -> None:
    """One row per size of SIZES: minigen's and PyTorch's iteration, alternated, and the ratio."""
    print(f"\n{'width':>5} {'context':>7} {'layers':>6} {'params':>10} "
          f"{'minigen ms':>10} {'pytorch ms':>10} {'ratio':>6}")  # fmt: skip
    for d, t, layers, heads in SIZES:
        config = preset("small").replace(n_embd=d, block_size=t, n_layer=layers, n_head=heads)
        ours, model, sharded = minigen_step(config, tc, shards)
        theirs = torch_step(torch, config, tc, model.state_dict())
        # fewer blocks for the big models (a step of the largest takes seconds)
        n = max(2, rounds * 128 * 64 // (d * t))
        ta, tb = alternate(ours, theirs, n, per_round=3 if d * t > 128 * 64 else 5)
        if sharded is not None:
            sharded.close()
        m, p = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
        print(f"{d:5d} {t:7d} {layers:6d} {config.num_params():10,d} {m:10.1f} {p:10.1f} "
              f"{m / p:5.2f}x", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    parser.add_argument("--rounds", type=int, default=10, help="blocks of 5 timed iterations")
    parser.add_argument("--backend", default="numpy", help="minigen backend (default: numpy)")
    parser.add_argument(
        "--shards", type=int, default=1,
        help="minigen: the gradient in this many shards, one process (one BLAS thread) each",
    )  # fmt: skip
    parser.add_argument(
        "--sizes", action="store_true",
        help="only the training iteration, at each model size of SIZES (one row each)",
    )  # fmt: skip
    args = parser.parse_args()
    minigen.backend.use(args.backend)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    if args.shards > 1:  # NumPy's BLAS on one thread here and in each worker; torch's own
        threadpool_limits(1, user_api="blas")
        how = f"minigen: {args.shards} processes of 1 thread; torch: {args.threads} thread(s)"
    else:
        threadpool_limits(args.threads)
        how = f"{args.threads} thread(s) each"
    print(f"numpy {np.__version__}, torch {torch.__version__}, {how}, "
          f"minigen backend {args.backend}")  # fmt: skip

    tc = TrainConfig()
    if args.sizes:
        size_sweep(torch, tc, args.rounds, args.shards)
        return
    config = preset("small")
    ours, model, sharded = minigen_step(config, tc, args.shards)
    theirs = torch_step(torch, config, tc, model.state_dict())
    ta, tb = alternate(ours, theirs, args.rounds)
    if sharded is not None:
        sharded.close()
    m, t = statistics.median(ta), statistics.median(tb)
    print(
        f"\ntraining iteration, {config.num_params():,} parameters, batch {B} x {config.block_size}"
    )
    print(f"  minigen  median {m * 1e3:7.2f} ms   (quartiles {np.percentile(ta, 25) * 1e3:.1f}"
          f"-{np.percentile(ta, 75) * 1e3:.1f})")  # fmt: skip
    print(f"  pytorch  median {t * 1e3:7.2f} ms   (quartiles {np.percentile(tb, 25) * 1e3:.1f}"
          f"-{np.percentile(tb, 75) * 1e3:.1f})")  # fmt: skip
    print(f"  ratio minigen / pytorch: {m / t:.2f}x (target <= 1.0x)")

    flops = flops_per_token(config) * B * config.block_size
    peak = matmul_peak(torch)
    print(
        f"\nFLOP/s: {flops / 1e9:.2f} GFLOP per iteration; float32 matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    for name, sec in (("minigen", m), ("pytorch", t)):
        print(f"  {name}  {flops / sec / 1e9:6.1f} GFLOP/s = {flops / sec / peak:.1%} of peak")

    print("\ngeneration, greedy, batch 1 (model with block_size 256)")
    minigen.manual_seed(0)
    gen_model = GPT(config.replace(block_size=256)).eval()
    for context in (64, 256):
        cached = statistics.median(decode_rate(gen_model, context, True) for _ in range(3))
        full = statistics.median(decode_rate(gen_model, context, False) for _ in range(3))
        print(f"  context {context:3d}: {cached:7.0f} tokens/s with the KV cache, "
              f"{full:6.0f} without ({cached / full:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
