"""Autograd overhead, side by side with PyTorch on the CPU, in one run.

    python benchmarks/bench_autograd.py [--repeats 30]

Two workloads, each timed for minigen and for PyTorch in alternating blocks
(benchmarks/timing.py), reported as medians and a ratio:

1. a chain of 200 small elementwise ops on a 16-vector, forward + backward:
   nearly all of the time is per-op bookkeeping, so time / op is the overhead;
2. one training step of a 4-layer MLP (batch 64, width 256, 10 classes):
   forward, cross-entropy, backward, AdamW.

PyTorch is a benchmark peer only (the oracle extra); minigen never imports it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from timing import alternate, median  # benchmarks/timing.py

import minigen
import minigen.functional as F
from minigen import Tensor, nn, optim

CHAIN = 200


def minigen_chain() -> Callable[[], None]:
    x0 = np.linspace(-1, 1, 16).astype(np.float32)

    def run() -> None:
        x = Tensor(x0, requires_grad=True)
        h = x
        for _ in range(CHAIN // 4):
            h = ((h * 0.9 + 0.1).tanh() - 0.05) * 1.1  # 4 ops
        h.sum().backward()

    return run


def torch_chain(torch) -> Callable[[], None]:
    x0 = torch.linspace(-1, 1, 16)

    def run() -> None:
        x = x0.clone().requires_grad_()
        h = x
        for _ in range(CHAIN // 4):
            h = ((h * 0.9 + 0.1).tanh() - 0.05) * 1.1
        h.sum().backward()

    return run


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((64, 64)).astype(np.float32), rng.integers(0, 10, 64)


def minigen_mlp() -> Callable[[], None]:
    minigen.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    X, y = data()

    def run() -> None:
        opt.zero_grad()
        F.cross_entropy(model(Tensor(X)), y).backward()
        opt.step()

    return run


def torch_mlp(torch) -> Callable[[], None]:
    torch.manual_seed(0)
    L = torch.nn.Linear
    model = torch.nn.Sequential(
        L(64, 256), torch.nn.ReLU(), L(256, 256), torch.nn.ReLU(),
        L(256, 256), torch.nn.ReLU(), L(256, 10),
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    X, y = (torch.tensor(a) for a in data())

    def run() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    import torch

    print(
        f"numpy {np.__version__}, torch {torch.__version__}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'workload':<34} {'minigen':>12} {'pytorch':>12} {'ratio':>7}")
    ta, tb = alternate(minigen_chain(), torch_chain(torch), args.repeats)
    m, t = median(ta), median(tb)
    ops = 2 * CHAIN  # forward and backward of each op
    print(
        f"{'chain of small ops, per op (fwd+bwd)':<34} {m / ops * 1e6:>9.2f} us {t / ops * 1e6:>9.2f} us {m / t:>6.2f}x"
    )
    ta, tb = alternate(minigen_mlp(), torch_mlp(torch), args.repeats)
    m, t = median(ta), median(tb)
    print(f"{'4-layer MLP training step':<34} {m * 1e3:>9.3f} ms {t * 1e3:>9.3f} ms {m / t:>6.2f}x")
    print("ratio = minigen time / PyTorch time (lower is better; medians)")


if __name__ == "__main__":
    main()
