"""The checks that need an NVIDIA GPU, in one run: parity suites, kernel and model benchmarks.

    pip install -e .[gpu,dev,oracle]        # nothing else is needed
    python benchmarks/gpu_check.py          # about 2.5 minutes on an H200

1. The device: GPU name, driver, CUDA runtime, and the versions of numpy, numba, cupy, torch.
2. The parity suites on the real GPU (numba's CUDA simulator off): the kernels'
   (tests/test_kernels_*.py: numba-cuda and cupy against the NumPy references, the CUDA
   sources compiled by nvcc and NVVM) and the backend switch's (tests/test_backend*.py:
   minigen's ops, a tiny GPT and both diffusion U-Nets under `backend.use("cupy")` against
   the NumPy backend), with pass / fail / skip counts per backend.
3. benchmarks/bench_kernels.py: each kernel on device-resident arrays (numba-cuda, cupy)
   beside NumPy on the CPU.
4. The GPT training iteration (forward, backward, clipping, AdamW; float32) with
   `backend.use("cupy")` against the same model in PyTorch on CUDA (eager, fused
   attention), for nanoGPT's small CPU config and its GPU shakespeare-char config (6
   blocks, 6 heads, 384-dim, context 256, batch 64; dropout 0 here), timed in alternating
   blocks, synchronised; and the digits U-Net's step, against PyTorch too.
5. The text-to-image denoiser's training step (the shipped configuration) with "cupy"
   against the same step with "numpy" on that machine's CPU.

Everything lands in benchmarks/results/gpu_check-<date>.md (and a .json beside it), written
atomically; a phase that fails is recorded with its error and the others still run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SUITES = [
    "tests/test_kernels_parity.py",
    "tests/test_kernels_api.py",
    "tests/test_kernels_compile.py",
    "tests/test_backend.py",
    "tests/test_backend_parity.py",
    "tests/test_backend_parity_images.py",
]


def device_info() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("numba", "cupy", "torch"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # a missing extra is a finding, not a crash
            info[name] = f"unavailable ({e})"
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["compute capability"] = f"{props['major']}.{props['minor']}"
        info["gpu memory (GiB)"] = round(props["totalGlobalMem"] / 2**30, 1)
        info["cuda runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as e:
        info["gpu"] = f"not found through cupy ({e})"
    try:
        smi = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        info["nvidia-smi"] = subprocess.run(smi, capture_output=True, text=True).stdout.strip()
    except OSError as e:
        info["nvidia-smi"] = f"unavailable ({e})"
    return info


def _backend_of(test_name: str) -> str:
    """The backend a parametrised test ran on, from its id (e.g. "[float32-numba-cuda]")."""
    params = test_name.partition("[")[2].rstrip("]")
    if "numba-cuda" in params or "numba_cuda" in params:
        return "numba-cuda"
    if "numba-cpu" in params or "numba_cpu" in params:
        return "numba-cpu"
    if re.search(r"(^|-)cupy(_kernels)?($|-)", params):
        return "cupy"
    if re.search(r"(^|-)numba($|-)", params):
        return "numba"
    return "no backend parameter"


def parity_suites(out: Path) -> dict:
    """Run the suites on the GPU; counts of passed / failed / skipped tests per backend."""
    xml = out.with_suffix(".junit.xml")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=path)
    # addopts="": the project's pytest options name plugins (nbmake) this machine may lack
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-q", *SUITES,
           f"--junitxml={xml}"]  # fmt: skip
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append("--timeout=120")  # a hung kernel fails its test, not the whole check
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if not xml.exists():  # pytest stopped before it ran a test (a collection error, say)
        return {"returncode": proc.returncode, "stdout": proc.stdout[-6000:],
                "stderr": proc.stderr[-6000:]}  # fmt: skip
    counts: dict[str, dict[str, int]] = {}
    failures = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name, suite = case.get("name", ""), case.get("classname", "")
        which = f"{'switch' if 'test_backend' in suite else 'kernels'}: {_backend_of(name)}"
        status = "passed"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            status = "failed"
            why = (bad.get("message") or "").splitlines()[:1]
            failures.append(f"{case.get('classname')}::{name}: {' '.join(why)[:300]}")
        elif case.find("skipped") is not None:
            status = "skipped"
        counts.setdefault(which, {"passed": 0, "failed": 0, "skipped": 0})[status] += 1
    xml.unlink(missing_ok=True)
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    return {"seconds": round(time.perf_counter() - t0, 1), "summary": tail, "per backend": counts,
            "failures": failures[:50], "returncode": proc.returncode,
            "output tail": proc.stdout[-4000:] if proc.returncode else ""}  # fmt: skip


def kernel_bench(repeats: int) -> str:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return proc.stdout + (f"\n(stderr)\n{proc.stderr[-2000:]}" if proc.returncode else "")


# ----------------------------------------------------------------------------- GPT on the GPU


def _alternate(
    ours: Callable[[], None],
    theirs: Callable[[], None],
    rounds: int,
    per_block: int,
    names: tuple[str, str] = ("minigen cupy", "pytorch cuda"),
) -> dict[str, float]:
    """Median ms of each step, timed in alternating blocks (after 5 warm-up calls each;
    a pause and one untimed call before each block; the order flips every round)."""
    times: dict[str, list[float]] = {names[0]: [], names[1]: []}
    for f in (ours, theirs):
        for _ in range(5):
            f()
    for r in range(rounds):
        pair = [(names[0], ours), (names[1], theirs)]
        for name, f in pair if r % 2 == 0 else pair[::-1]:
            time.sleep(0.1)
            f()
            for _ in range(per_block):
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def gpt_gpu(config_name: str, batch: int, rounds: int, per_block: int = 5) -> dict:
    import cupy
    import torch

    import minigen
    from minigen import backend, optim
    from minigen.text import GPT, TrainConfig, preset
    from minigen.text.train import make_optimizer
    from tests.gpt_reference import TorchGPT, adamw

    class CudaGPT(TorchGPT):  # positions on the model's device
        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for block in self.h:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.T

    if config_name == "small":
        config = preset("small")
    else:  # nanoGPT's config/train_shakespeare_char.py (dropout 0 for timing)
        config = preset("small", n_layer=6, n_head=6, n_embd=384, block_size=256)
    tc = TrainConfig()
    g = np.random.default_rng(0)
    x, y = (g.integers(0, config.vocab_size, (batch, config.block_size)) for _ in range(2))

    backend.use("cupy")
    minigen.manual_seed(0)
    model = GPT(config)
    opt, params = make_optimizer(model, tc), model.parameters()

    def ours() -> None:
        loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        cupy.cuda.Device().synchronize()

    tmodel = CudaGPT(config)
    tmodel.load_numpy(model.state_dict())
    tmodel.cuda()
    topt = adamw(tmodel, tc.learning_rate, (tc.beta1, tc.beta2), tc.weight_decay)
    tx, ty = (torch.from_numpy(a).cuda() for a in (x, y))

    def theirs() -> None:
        loss = tmodel.loss(tx, ty)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), tc.grad_clip)
        topt.step()
        torch.cuda.synchronize()

    loss0 = (model.loss(x, y).item(), tmodel.loss(tx, ty).item())
    med = _alternate(ours, theirs, rounds, per_block)
    backend.use("numpy")
    return {"config": f"{config_name}: {config}", "batch": batch,
            "first loss (minigen, pytorch)": loss0, "median ms": med,
            "ratio minigen / pytorch": med["minigen cupy"] / med["pytorch cuda"]}  # fmt: skip


def unet_gpu(rounds: int, batch: int = 256, per_block: int = 5) -> dict:
    """The diffusion U-Net's training step (8x8 digits, base width 16), cupy against torch."""
    import cupy
    import torch

    import minigen
    from minigen import Tensor, backend, optim
    from minigen import functional as F

    try:
        from minigen.diffusion import UNet, timestep_embedding
    except ImportError:
        return {"skipped": "this checkout has no minigen.diffusion.UNet"}
    from benchmarks.bench_backends import torch_unet

    g = np.random.default_rng(0)
    x0, eps = g.standard_normal((2, batch, 1, 8, 8)).astype(np.float32)
    t = g.integers(0, 1000, batch)
    backend.use("cupy")
    minigen.manual_seed(0)
    model = UNet(image_size=8, base_channels=16)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    cx, ceps = cupy.asarray(x0), cupy.asarray(eps)

    def ours() -> None:
        loss = F.mse_loss(model(Tensor(cx), t), ceps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        cupy.cuda.Device().synchronize()

    tmodel = torch_unet(torch).cuda()
    topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-3)
    tx, teps = torch.from_numpy(x0).cuda(), torch.from_numpy(eps).cuda()
    temb = torch.from_numpy(backend.to_numpy(timestep_embedding(t, 16))).cuda()

    def theirs() -> None:
        loss = torch.nn.functional.mse_loss(tmodel(tx, temb), teps)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()
        torch.cuda.synchronize()

    med = _alternate(ours, theirs, rounds, per_block)
    backend.use("numpy")
    return {"batch": batch, "median ms": med,
            "ratio minigen / pytorch": med["minigen cupy"] / med["pytorch cuda"]}  # fmt: skip


def xunet_gpu(rounds: int, batch: int = 32, per_block: int = 3) -> dict:
    """The text-to-image denoiser's training step (the shipped configuration: 16x16 RGB,
    base width 32, cross-attention at levels 1 and 2), minigen on cupy against minigen on
    this machine's CPU (NumPy): what a GPU buys a user of `train-text2im --model cond`."""
    import cupy

    import minigen
    from minigen import Tensor, backend, optim
    from minigen import functional as F
    from minigen.synthesis.xunet import Caption, CrossAttnUNet

    g = np.random.default_rng(0)
    x0, eps = g.standard_normal((2, batch, 3, 16, 16)).astype(np.float32)
    pooled, states = g.standard_normal((batch, 64)), g.standard_normal((batch, 12, 64))
    mask = np.arange(12)[None, :] < g.integers(2, 13, (batch, 1))  # (B, L)
    t = g.integers(0, 1000, batch)

    def step_on(name: str) -> Callable[[], None]:
        backend.use(name)
        minigen.manual_seed(0)
        model = CrossAttnUNet(image_size=16, base_channels=32, channel_mults=(1, 2, 2))
        opt = optim.AdamW(model.parameters(), lr=1e-3)
        cond = Caption(Tensor(pooled.astype(np.float32)), Tensor(states.astype(np.float32)), mask)
        x, e = backend.xp.asarray(x0), backend.xp.asarray(eps)

        def step() -> None:
            backend.use(name)  # the two steps alternate: each sets its own backend
            loss = F.mse_loss(model(Tensor(x), t, cond), e)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if name == "cupy":
                cupy.cuda.Device().synchronize()

        return step

    gpu, cpu = step_on("cupy"), step_on("numpy")
    med = _alternate(gpu, cpu, rounds, per_block, ("minigen cupy", "minigen numpy cpu"))
    backend.use("numpy")
    return {"batch": batch, "median ms": med,
            "speed-up cupy / numpy": med["minigen numpy cpu"] / med["minigen cupy"]}  # fmt: skip


def write_results(out: Path, results: dict) -> None:
    from minigen.checkpoint import atomic_write

    atomic_write(out.with_suffix(".json"), json.dumps(results, indent=2, default=str))
    lines = [f"# GPU check, {results['date']}", ""]
    for phase, value in results.items():
        if phase == "date":
            continue
        lines += [f"## {phase}", ""]
        if isinstance(value, str):
            lines += ["```", value.rstrip(), "```", ""]
        else:
            lines += ["```json", json.dumps(value, indent=2, default=str), "```", ""]
    atomic_write(out.with_suffix(".md"), "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about 2 minutes)")
    parser.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder for the results (default benchmarks/results)")  # fmt: skip
    args = parser.parse_args()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    out = args.out.resolve() / f"gpu_check-{stamp}"
    results: dict = {"date": stamp}
    rounds = 4 if args.quick else 10
    phases = [("device", device_info)]
    if not args.skip_tests:
        phases.append(("parity suites on the GPU", lambda: parity_suites(out)))
    phases += [
        ("kernels against NumPy (bench_kernels.py)", lambda: kernel_bench(5 if args.quick else 15)),
        ("GPT iteration, nanoGPT small CPU config, batch 12",
         lambda: gpt_gpu("small", 12, rounds)),
        ("GPT iteration, nanoGPT shakespeare-char GPU config, batch 64",
         lambda: gpt_gpu("shakespeare-char", 64, rounds)),
        ("U-Net training step, 8x8 digits, batch 256", lambda: unet_gpu(rounds)),
        ("text-to-image U-Net training step, cupy against the CPU, batch 32",
         lambda: xunet_gpu(rounds // 2)),
    ]  # fmt: skip
    for phase, run in phases:
        print(f"--- {phase}", flush=True)
        t0 = time.perf_counter()
        try:
            results[phase] = run()
        except Exception:
            results[phase] = {"error": traceback.format_exc()[-3000:]}
        shown = results[phase]
        print(shown if isinstance(shown, str) else json.dumps(shown, indent=2, default=str))
        print(f"({time.perf_counter() - t0:.0f} s)", flush=True)
        write_results(out, results)  # after every phase: a cut-off run keeps what it measured
    print(f"\nwritten: {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
