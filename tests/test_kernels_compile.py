"""The GPU kernels compile for a real GPU, even on a machine without one.

numba's CUDA simulator runs the numba.cuda kernels as Python, so it cannot catch a
kernel that fails to compile for a GPU (a type numba.cuda cannot lower), nor one
that silently computes float32 data in float64 (slow on most GPUs). Here every
numba.cuda kernel is compiled to PTX for compute capability 8.0 (numba's NVVM, no
GPU needed; in a subprocess, since this process may have the simulator on), and
the CuPy backend's CUDA C is compiled by nvcc. Both are skipped, saying why, where
the CUDA toolkit is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from minigen_kernels.cuda_source import ELEMENTWISE, SOURCE

ROOT = Path(__file__).resolve().parents[1]

# Each numba.cuda kernel with its argument types; A = an array of the element type T.
NUMBA_SIGNATURES = {
    "numba_cuda._matmul_naive": "A2, A2, A2",
    "numba_cuda._matmul_tiled": "A2, A2, A2",
    "numba_cuda._softmax_rows": "A2, A2, T, int64, boolean, boolean",
    "numba_cuda._softmax_backward_rows": "A2, A2, A2, T, boolean",
    "numba_cuda_norm._ddpm_step": "A1, A1, A1, T, T, T, boolean, A1",
    "numba_cuda_norm._layer_norm_rows": "A2, A1, A1, T, A2, A1, A1",
    "numba_cuda_norm._layer_norm_dx_rows": "A2, A2, A1, A1, A1, A2",
    "numba_cuda_norm._layer_norm_dw_columns": "A2, A2, A1, A1, A1, A1",
    "numba_cuda_norm._gelu": "A1, A1, A1, boolean, boolean",
}

# Compiles each kernel for T in float32, float64; prints {kernel: [f64 count, ...]} as JSON.
PTX_SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.util, json, re, sys
    root, signatures = sys.argv[1], json.loads(sys.argv[2])
    spec = importlib.util.spec_from_file_location(
        "minigen_kernels", root + "/kernels/minigen_kernels/__init__.py",
        submodule_search_locations=[root + "/kernels/minigen_kernels"])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["minigen_kernels"] = pkg
    spec.loader.exec_module(pkg)
    from types import SimpleNamespace
    from numba import cuda
    from numba.cuda import dispatcher
    from numba.cuda.cudadrv import nvvm
    # device functions (block_sum) compile for "the current GPU": say it is an sm_80
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(8, 0))
    try:
        nvvm.NVVM()
    except Exception as e:
        print("SKIP", e)
        sys.exit(0)
    out = {}
    for name, args in signatures.items():
        module, kernel = name.split(".")
        fn = getattr(importlib.import_module("minigen_kernels." + module), kernel).py_func
        out[name] = []
        for t in ("float32", "float64"):
            sig = args.replace("A2", t + "[:, :]").replace("A1", t + "[:]").replace("T", t)
            ptx, _ = cuda.compile_ptx(fn, "void(" + sig + ")", cc=(8, 0))
            out[name].append(len(re.findall(r"\\.f64\\b", ptx)))
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def numba_ptx():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    proc = subprocess.run(
        [sys.executable, "-c", PTX_SCRIPT, str(ROOT), json.dumps(NUMBA_SIGNATURES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.startswith("SKIP"):
        pytest.skip(f"numba cannot find the CUDA toolkit's NVVM: {proc.stdout[5:].strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kernel", sorted(NUMBA_SIGNATURES))
def test_numba_cuda_kernel_compiles_and_float32_stays_float32(kernel, numba_ptx):
    f32_ops, f64_ops = numba_ptx[kernel]
    assert f32_ops == 0, f"{kernel}: {f32_ops} float64 instructions in its float32 PTX"
    assert f64_ops > 0, f"{kernel}: its float64 PTX has no float64 instruction"


def elementwise_harness(name: str, inputs: str, outputs: str, body: str) -> str:
    """A __global__ function that runs an ElementwiseKernel body on element i, as CuPy does."""
    params, loads = [], []
    for p in inputs.split(","):
        arg = p.split()[1]
        params.append(f"const T* {arg}_")
        loads.append(f"const T {arg} = {arg}_[i];")
    for p in outputs.split(","):
        arg = p.split()[1]
        params.append(f"T* {arg}_")
        loads.append(f"T& {arg} = {arg}_[i];")
    return (
        f'extern "C" __global__ void check_{name}({", ".join(params)}, int n) {{\n'
        f"  const int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
        f"  if (i < n) {{ {' '.join(loads)} {body} }}\n}}\n"
    )


@pytest.mark.parametrize("ctype", ["float", "double"])
def test_cupy_cuda_source_compiles_without_warnings(ctype, tmp_path):
    nvcc = shutil.which("nvcc") or shutil.which("/usr/local/cuda/bin/nvcc")
    if nvcc is None:
        pytest.skip("nvcc (the CUDA toolkit) is not installed")
    harness = "".join(elementwise_harness(k, *v) for k, v in ELEMENTWISE.items())
    src = tmp_path / "kernels.cu"
    src.write_text(f"typedef {ctype} T;\n{SOURCE}\n{harness}", encoding="utf-8")
    ptx = tmp_path / "kernels.ptx"
    cmd = [nvcc, "--ptx", "-arch=sm_80", "-Werror", "all-warnings", str(src), "-o", str(ptx)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = ptx.read_text(encoding="utf-8")
    kernels = set(re.findall(r"\.entry (\w+)", text))
    expected = {"softmax_rows", "softmax_backward_rows", "layer_norm_rows", "matmul_tiled"}
    assert expected | {f"check_{k}" for k in ELEMENTWISE} <= kernels
    if ctype == "float":
        assert not re.search(r"\.f64\b", text), "float32 kernels compute in float64"


def test_cupy_backend_uses_the_compiled_names():
    """Every kernel name the CuPy host code launches is defined in the CUDA C source."""
    host = (ROOT / "kernels" / "minigen_kernels" / "cupy_kernels.py").read_text(encoding="utf-8")
    launched = set(re.findall(r'_launch\(\s*"(\w+)"', host)) | {"matmul_naive", "matmul_tiled"}
    defined = set(re.findall(r'extern "C" __global__ void (\w+)\(', SOURCE))
    assert launched <= defined, f"launched but not defined: {launched - defined}"
    used = set(re.findall(r'_elementwise\(\s*"(\w+)"\s*\)', host)) | set(
        re.findall(r'"(gelu_(?:tanh|erf)_\w+)"', host)
    )
    assert used <= set(ELEMENTWISE), f"elementwise kernels missing: {used - set(ELEMENTWISE)}"
