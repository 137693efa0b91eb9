"""The backend switch on the CPU: training steps with the Numba kernels on and off, and PyTorch.

    python benchmarks/bench_backends.py [--threads 1,2] [--rounds 10] [--only gpt]

1. The GPT training iteration of nanoGPT's CPU config (4 blocks, 4 heads, 128-dim tokens,
   context 64, batch 12, vocabulary 65; forward, backward, gradient clipping, AdamW) in
   float32, three ways: minigen with `backend.use("numpy")` (the kernels off), minigen
   with `backend.use("numba")` (the fused softmax, attention softmax, layer norm, GELU and
   cross-entropy kernels on) and an equal PyTorch eager model (tests/gpt_reference.py).
2. The diffusion U-Net's training step (8x8 digits, batch 128, base width 16: conv, group
   norm, SiLU, L_simple, AdamW) and its sampling step (the U-Net's forward and the DDPM
   noise step), numpy against numba, and the training step against an equal PyTorch
   U-Net (built here: same layers and sizes; timing only). Needs minigen.diffusion.UNet;
   skipped, saying so, in a checkout without it.

Method (bench_gpt.py's): every library gets the same number of threads (BLAS through
threadpoolctl, PyTorch's intra-op pool, Numba's pool; the kernels themselves run on one
core below 1M elements). The contenders run in blocks of `--per-block` timed calls, each
block after a pause and one untimed call, because a library's spinning worker threads
slow down whoever runs right after it; the order of the contenders rotates every round.
Medians over all timed calls, with quartiles. On a shared machine the figures are noisy:
compare ratios from one run, never absolute times across runs; with one thread,
`--clock cpu` times the process's CPU time, which waiting for a busy core does not inflate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import minigen  # noqa: E402
from minigen import Tensor, backend, no_grad, optim  # noqa: E402
from minigen import functional as F  # noqa: E402
from minigen.text import GPT, TrainConfig, preset  # noqa: E402
from minigen.text.train import make_optimizer  # noqa: E402

Contender = tuple[str, Callable[[], None], Callable[[], None]]  # (name, enter, step)


def using(name: str) -> Callable[[], None]:
    return lambda: backend.use(name)


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def blocks(contenders: list[Contender], rounds: int, per_block: int) -> dict[str, list]:
    """Seconds per call of each contender, timed in blocks (see the module docstring)."""
    times: dict[str, list] = {name: [] for name, _, _ in contenders}
    for _, enter, step in contenders:  # warm-up: compile kernels, fill allocator caches
        enter()
        for _ in range(3):
            step()
    for r in range(rounds):
        for name, enter, step in (
            contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        ):
            enter()
            time.sleep(0.3)
            step()
            for _ in range(per_block):
                t0 = CLOCK()
                step()
                times[name].append(CLOCK() - t0)
    return times


def report(title: str, times: dict[str, list], pairs: list[tuple[str, str]]) -> dict:
    print(f"\n{title}")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        q1, q3 = np.percentile(ts, [25, 75]) * 1e3
        print(f"  {name:14s} median {med[name] * 1e3:8.2f} ms   (quartiles {q1:.1f}-{q3:.1f})")
    for a, b in pairs:
        print(f"  {a} / {b}: {med[a] / med[b]:.2f}x")
    return {name: med[name] * 1e3 for name in med}


# ----------------------------------------------------------------------------- GPT


def gpt_contenders(torch) -> list[Contender]:
    from tests.gpt_reference import TorchGPT, adamw

    config, tc = preset("small"), TrainConfig()
    g = np.random.default_rng(0)
    x, y = (g.integers(0, config.vocab_size, (12, config.block_size)) for _ in range(2))
    out = []
    for name in ("numpy", "numba"):
        backend.use(name)
        minigen.manual_seed(0)
        model = GPT(config)
        opt, params = make_optimizer(model, tc), model.parameters()

        def step(model=model, opt=opt, params=params) -> None:
            loss = model.loss(x, y)
            opt.zero_grad()
            loss.backward()
            optim.clip_grad_norm_(params, tc.grad_clip)
            opt.step()

        out.append((f"minigen {name}", using(name), step))
        state = model.state_dict()
    tmodel = TorchGPT(config)
    tmodel.load_numpy(state)
    topt = adamw(tmodel, tc.learning_rate, (tc.beta1, tc.beta2), tc.weight_decay)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step() -> None:
        loss = tmodel.loss(tx, ty)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), tc.grad_clip)
        topt.step()

    return [*out, ("pytorch", lambda: None, torch_step)]


# ----------------------------------------------------------------------------- U-Net


def torch_unet(torch, base: int = 16, mults: tuple[int, ...] = (1, 2), channels: int = 1):
    """A PyTorch U-Net with the layers and sizes of minigen.diffusion.UNet (for timing)."""
    nn = torch.nn

    def groups(c: int) -> int:
        return next(g for g in range(min(8, c), 0, -1) if c % g == 0)

    class Res(nn.Module):
        def __init__(self, cin: int, cout: int, tdim: int) -> None:
            super().__init__()
            self.n1, self.c1 = nn.GroupNorm(groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
            self.t = nn.Linear(tdim, cout)
            self.n2, self.c2 = nn.GroupNorm(groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

        def forward(self, x, temb):
            h = self.c1(torch.nn.functional.silu(self.n1(x)))
            h = h + self.t(torch.nn.functional.silu(temb))[:, :, None, None]
            return self.skip(x) + self.c2(torch.nn.functional.silu(self.n2(h)))

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths, tdim = [base * m for m in mults], 4 * base
            self.temb = nn.Sequential(nn.Linear(base, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
            self.inp, c = nn.Conv2d(channels, base, 3, padding=1), base
            self.down, self.ds = nn.ModuleList(), nn.ModuleList()
            for i, w in enumerate(widths):
                self.down.append(Res(c, w, tdim))
                c = w
                if i < len(widths) - 1:
                    self.ds.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            self.mid, self.up = Res(c, c, tdim), nn.ModuleList()
            for w in reversed(widths):
                self.up.append(Res(c + w, w, tdim))
                c = w
            self.norm, self.out = nn.GroupNorm(groups(c), c), nn.Conv2d(c, channels, 3, padding=1)

        def forward(self, x, emb):
            temb, h, skips = self.temb(emb), self.inp(x), []
            for i, block in enumerate(self.down):
                h = block(h, temb)
                skips.append(h)
                h = self.ds[i](h) if i < len(self.ds) else h
            h = self.mid(h, temb)
            for j, block in enumerate(self.up):
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
                h = (
                    torch.nn.functional.interpolate(h, scale_factor=2)
                    if j < len(self.up) - 1
                    else h
                )
            return self.out(torch.nn.functional.silu(self.norm(h)))

    return UNet()


def unet_contenders(torch, batch: int = 128) -> tuple[list[Contender], list[Contender]] | None:
    try:
        from minigen.diffusion import DDPMScheduler, UNet, timestep_embedding
    except ImportError:
        return None
    g = np.random.default_rng(0)
    x0 = g.standard_normal((batch, 1, 8, 8)).astype(np.float32)
    eps = g.standard_normal(x0.shape).astype(np.float32)
    t = g.integers(0, 1000, batch)
    scheduler = DDPMScheduler()
    train, sample = [], []
    for name in ("numpy", "numba"):
        backend.use(name)
        minigen.manual_seed(0)
        model = UNet(image_size=8, base_channels=16)
        opt = optim.AdamW(model.parameters(), lr=1e-3)

        def train_step(model=model, opt=opt) -> None:
            loss = F.mse_loss(model(Tensor(x0), t), eps)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def sample_step(model=model) -> None:
            with no_grad():
                eps_hat = model(Tensor(x0), np.full(batch, 500)).data
            scheduler.step(eps_hat, 500, x0, generator=np.random.default_rng(0))

        train.append((f"minigen {name}", using(name), train_step))
        sample.append((f"minigen {name}", using(name), sample_step))
    tmodel = torch_unet(torch)
    topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-3)
    tx, teps = torch.from_numpy(x0), torch.from_numpy(eps)
    temb = torch.from_numpy(timestep_embedding(t, 16))

    def torch_train() -> None:
        loss = torch.nn.functional.mse_loss(tmodel(tx, temb), teps)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    return [*train, ("pytorch", lambda: None, torch_train)], sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts to run (default 1,2)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of blocks")
    parser.add_argument("--per-block", type=int, default=5, help="timed calls per block")
    parser.add_argument("--only", choices=["gpt", "unet"], help="one model only")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="cpu: the process's CPU time, which other jobs on a busy machine do not inflate "
        "(meaningful with 1 thread; with more it adds the threads' times)",
    )  # fmt: skip
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    print(f"numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}; "
          f"float32; medians of {args.rounds} x {args.per_block} timed calls, {args.clock} "
          f"clock")  # fmt: skip
    for n in (int(s) for s in args.threads.split(",")):
        threadpool_limits(n)
        torch.set_num_threads(n)
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        print(f"\n=== {n} thread(s) for BLAS, PyTorch and Numba")
        if args.only in (None, "gpt"):
            times = blocks(gpt_contenders(torch), args.rounds, args.per_block)
            report(
                "GPT training iteration (nanoGPT's small CPU config, batch 12 x 64)",
                times,
                [("minigen numba", "minigen numpy"), ("minigen numpy", "pytorch"),
                 ("minigen numba", "pytorch")],
            )  # fmt: skip
        if args.only in (None, "unet"):
            found = unet_contenders(torch)
            if found is None:
                print("\nU-Net: skipped (this checkout has no minigen.diffusion.UNet)")
                continue
            train, sample = found
            times = blocks(train, args.rounds, args.per_block)
            report(
                "U-Net training step (8x8 digits, batch 128, base width 16)",
                times,
                [("minigen numba", "minigen numpy"), ("minigen numpy", "pytorch"),
                 ("minigen numba", "pytorch")],
            )  # fmt: skip
            times = blocks(sample, args.rounds, args.per_block)
            report("U-Net sampling step (forward + DDPM noise step)", times,
                   [("minigen numba", "minigen numpy")])  # fmt: skip
    backend.use("numpy")


if __name__ == "__main__":
    main()
