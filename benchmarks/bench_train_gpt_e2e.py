"""End to end: `minigen train-gpt` against nanoGPT's `train.py`, as users run them.

    python benchmarks/bench_train_gpt_e2e.py [CORPUS] [--runs 3] [--max-iters 2000]

Both train nanoGPT's CPU recipe on tiny Shakespeare by characters (4 blocks, 4 heads,
128-dim tokens, context 64, batch 12, dropout 0; AdamW lr 1e-3, betas (0.9, 0.99), weight
decay 0.1 on 2-D parameters, 100 warm-up steps then cosine decay to 1e-4, gradient clip 1.0;
a loss estimate every 250 steps over 20 batches of each split), each as its own process,
timed from outside from start to exit (interpreter start, imports, data, training,
estimates, checkpoints):

- minigen: `minigen train-gpt --corpus CORPUS --out TMP --sample 0`, its defaults, which are
  that recipe; its final validation loss is the last of the "eval" list of its checkpoint's
  trainer_state.json.
- PyTorch: this file re-run with `--torch-child`, which does what nanoGPT's `train.py` does
  on the CPU (`--device=cpu --compile=False --eval_iters=20`, the recipe of nanoGPT's README):
  the model of tests/gpt_reference.py (minigen's, layer for layer: biases on, where
  train.py's default is off), random batches cut from a memory-mapped train.bin as
  nanoGPT's `get_batch`, AdamW, clipping, an estimate every 250 steps, `torch.save` of the
  model and optimizer whenever the validation loss improves. As train.py, it estimates at
  steps 0, 250, ..., max_iters and takes max_iters + 1 steps (minigen: estimates at 250,
  ..., max_iters, max_iters steps). With a --max-iters that is not a multiple of 250, it
  also estimates at max_iters, as minigen does and train.py does not. The encoded corpus (nanoGPT's `prepare.py`) is written
  once, before any timing, as users run prepare.py once.

nanoGPT's shakespeare_char config estimates over eval_iters = 200 batches; its README's CPU
recipe overrides that with 20, which is also minigen's default: both use 20. PyTorch runs on
`torch.set_num_threads(os.cpu_count())`; minigen on its defaults (NumPy's BLAS on every
core). The runs alternate (PyTorch first in even runs, minigen first in odd ones) so that
both see the same drift in the machine's load. Prints one Markdown table: each run's wall
times and final validation losses, the medians and the ratio minigen / PyTorch. torch is
this benchmark's peer only; minigen never imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
MD5 = "6fb458f1232090904fb40fe944165e91"
# nanoGPT's CPU recipe (config/train_shakespeare_char.py and the README's command line)
RECIPE = dict(
    n_layer=4, n_head=4, n_embd=128, block_size=64, bias=True, dropout=0.0,
    batch_size=12, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
    beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
    eval_interval=250, eval_iters=20, seed=1337,
)  # fmt: skip


def prepare(corpus: Path, data_dir: Path) -> None:
    """nanoGPT's data/shakespeare_char/prepare.py: the sorted characters are the vocabulary,
    the first 90% of the text is train.bin, the rest val.bin (uint16 ids), meta.json."""
    text = corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)  # (N,)
    n = int(0.9 * len(ids))
    ids[:n].tofile(data_dir / "train.bin")
    ids[n:].tofile(data_dir / "val.bin")
    (data_dir / "meta.json").write_text(json.dumps({"vocab_size": len(chars)}))


def torch_child(data_dir: Path, out_dir: Path, max_iters: int) -> None:
    """nanoGPT's train.py on the CPU, its loop line for line (no DDP, no GradScaler: float32)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.gpt_reference import TorchGPT, adamw

    torch.set_num_threads(os.cpu_count() or 1)
    c = SimpleNamespace(**RECIPE)
    torch.manual_seed(c.seed)
    vocab_size = json.loads((data_dir / "meta.json").read_text())["vocab_size"]
    model = TorchGPT(SimpleNamespace(**RECIPE, vocab_size=vocab_size))
    optimizer = adamw(model, c.learning_rate, (c.beta1, c.beta2), c.weight_decay)

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(data_dir / f"{split}.bin", dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - c.block_size, (c.batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + c.block_size].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + c.block_size].astype(np.int64)) for i in ix]
        )
        return x, y  # (B, T), (B, T)

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = torch.zeros(c.eval_iters)
            for k in range(c.eval_iters):
                losses[k] = model.loss(*get_batch(split)).item()
            out[split] = losses.mean().item()
        model.train()
        return out

    def get_lr(it: int) -> float:
        if it < c.warmup_iters:
            # linear warm-up: lr (it + 1) / (warmup + 1)
            return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
        if it > max_iters:  # lr_decay_iters = max_iters
            return c.min_lr
        # cosine decay: min_lr + 1/2 (1 + cos(pi r)) (lr - min_lr), r in [0, 1]
        ratio = (it - c.warmup_iters) / (max_iters - c.warmup_iters)
        return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c.learning_rate - c.min_lr)

    evals: list[dict[str, float]] = []
    best_val_loss, iter_num = 1e9, 0
    x, y = get_batch("train")
    while True:
        lr = get_lr(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if iter_num % c.eval_interval == 0 or iter_num == max_iters:  # (see the docstring)
            losses = estimate_loss()
            evals.append({"step": iter_num, **losses})
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val {losses['val']:.4f}")
            if losses["val"] < best_val_loss:
                best_val_loss = losses["val"]
                if iter_num > 0:
                    checkpoint = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "model_args": RECIPE,
                        "iter_num": iter_num,
                        "best_val_loss": best_val_loss,
                    }
                    torch.save(checkpoint, out_dir / "ckpt.pt")
        loss = model.loss(x, y)
        x, y = get_batch("train")  # the next batch, drawn while (on a GPU) the step runs
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # train.py's log line every log_interval = 1 step
        iter_num += 1
        if iter_num > max_iters:
            break
    (out_dir / "evals.json").write_text(json.dumps(evals))


def run(cmd: list[str], log: Path) -> float:
    """Wall seconds of one process, from start to exit; its output goes to `log`."""
    with log.open("w") as f:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{cmd[:3]} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return wall


def minigen_exe() -> list[str]:
    exe = Path(sys.executable).parent / "minigen"  # the console script beside this Python
    return (
        [str(exe)]
        if exe.is_file()
        else [sys.executable, "-c", "from minigen.cli import main; main()"]
    )


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or model
    return f"{os.cpu_count()} CPUs (nproc), {model}"


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "NumPy's BLAS defaults"
    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in info) or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default=str(CORPUS),
                        help="tinyshakespeare.txt (default: ../shared/data/ from the repository)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="runs of each (3)")
    parser.add_argument("--max-iters", type=int, default=2000, help="training steps (2000)")
    parser.add_argument("--torch-child", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_child:
        torch_child(Path(args.torch_child[0]), Path(args.torch_child[1]), args.max_iters)
        return
    corpus = Path(args.corpus)
    if not corpus.is_file():
        sys.exit(f"bench_train_gpt_e2e: no corpus at {corpus}")
    digest = hashlib.md5(corpus.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != MD5:
        sys.exit(f"bench_train_gpt_e2e: {corpus} has md5 {digest}, tiny Shakespeare's is {MD5}")
    import torch

    print("# `minigen train-gpt` against nanoGPT's train.py, end to end\n")
    print(f"- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"- PyTorch {torch.__version__}: torch.set_num_threads({os.cpu_count()}); "
          f"minigen: its defaults ({blas_threads()}), NumPy {np.__version__}")  # fmt: skip
    print(f"- {args.max_iters} iterations, {args.runs} runs of each, alternating\n")
    print("| run | PyTorch (train.py) | val | minigen train-gpt | val | minigen / PyTorch |")
    print("|---|---|---|---|---|---|")
    sys.stdout.flush()
    times: dict[str, list[float]] = {"torch": [], "minigen": []}
    vals: dict[str, list[float]] = {"torch": [], "minigen": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    try:
        data = tmp / "data"
        data.mkdir()
        prepare(corpus, data)
        for r in range(args.runs):
            order = ("torch", "minigen") if r % 2 == 0 else ("minigen", "torch")
            for who in order:
                out = tmp / f"{who}-{r}"
                if who == "torch":
                    out.mkdir()
                    cmd = [sys.executable, __file__, "--max-iters", str(args.max_iters),
                           "--torch-child", str(data), str(out)]  # fmt: skip
                    times[who].append(run(cmd, tmp / f"{who}-{r}.log"))
                    vals[who].append(json.loads((out / "evals.json").read_text())[-1]["val"])
                else:
                    cmd = [*minigen_exe(), "train-gpt", "--corpus", str(corpus), "--out", str(out),
                           "--sample", "0", "--max-iters", str(args.max_iters)]  # fmt: skip
                    times[who].append(run(cmd, tmp / f"{who}-{r}.log"))
                    state = json.loads((out / "trainer_state.json").read_text())
                    vals[who].append(state["eval"][-1]["val"])
            t, m = times["torch"][-1], times["minigen"][-1]
            print(f"| {r + 1} | {t:.1f} s | {vals['torch'][-1]:.4f} | {m:.1f} s | "
                  f"{vals['minigen'][-1]:.4f} | {m / t:.2f}x |")  # fmt: skip
            sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t, m = statistics.median(times["torch"]), statistics.median(times["minigen"])
    vt, vm = statistics.median(vals["torch"]), statistics.median(vals["minigen"])
    print(
        f"| **median** | **{t:.1f} s** | {vt:.4f} | **{m:.1f} s** | {vm:.4f} | **{m / t:.2f}x** |"
    )


if __name__ == "__main__":
    main()
