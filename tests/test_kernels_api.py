"""What users of minigen_kernels rely on: one API across backends, clear errors.

- every backend module defines every function of `KERNELS`, with the reference's
  parameters (the CuPy and CUDA modules import without a GPU, so they are checked too);
- an unknown or unavailable backend raises, naming the choices or what to install;
- bad arguments raise the same error in every backend, naming the op and the shapes
  or dtypes, before anything is compiled or copied to a GPU.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import minigen_kernels as mk
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["reference", "numba_cpu", "numba_cuda", "cupy_kernels"]


@pytest.mark.parametrize("module", MODULES)
def test_every_backend_defines_every_kernel_with_the_reference_signature(module):
    mod = importlib.import_module(f"minigen_kernels.{module}")
    ref = importlib.import_module("minigen_kernels.reference")
    for name in mk.KERNELS:
        assert callable(getattr(mod, name, None)), f"{module} lacks {name}"
        want = inspect.signature(getattr(ref, name)).parameters
        got = inspect.signature(getattr(mod, name)).parameters
        assert [(p.name, p.default) for p in got.values()] == [
            (p.name, p.default) for p in want.values()
        ], f"{module}.{name}{inspect.signature(getattr(mod, name))}"


def test_available_backends_run_here_and_get_returns_them():
    names = mk.available()
    assert names[:2] == ("numpy", "numba-cpu")
    for name in names:
        assert mk.why_unavailable(name) is None
        assert set(mk.KERNELS) <= set(dir(mk.get(name)))


def test_unknown_backend_names_the_choices():
    with pytest.raises(mk.KernelBackendError, match="numpy, numba-cpu, numba-cuda, cupy"):
        mk.get("torch")


def test_cupy_without_cupy_says_what_to_install():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(mk.KernelBackendError, match=r"pip install minigen\[gpu\]"):
            mk.get("cupy")
    else:
        pytest.skip("cupy is installed")


def test_numba_cuda_without_a_gpu_or_the_simulator_says_so():
    """Run where the simulator is off: no GPU means a clear error naming the way out."""
    if Path("/dev/nvidiactl").exists():
        pytest.skip("an NVIDIA GPU is present")
    folder = ROOT / "kernels" / "minigen_kernels"
    init, folder = str(folder / "__init__.py"), str(folder)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('minigen_kernels', {init!r},"
        f" submodule_search_locations=[{folder!r}])\n"
        "mk = importlib.util.module_from_spec(spec); sys.modules['minigen_kernels'] = mk\n"
        "spec.loader.exec_module(mk)\n"
        "try:\n    mk.get('numba-cuda')\nexcept mk.KernelBackendError as e:\n    print(e)\n"
    )  # fmt: skip
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "no CUDA device" in out.stdout and "NUMBA_ENABLE_CUDASIM=1" in out.stdout, out


# ----------------------------------------------------------------------------- argument errors

f32, f64 = np.zeros((2, 3), np.float32), np.zeros((2, 3))
BAD_CALLS = [
    # (kernel, args, exception, words the message must contain)
    ("softmax_forward", (np.zeros((2, 3), np.int64),), TypeError, ["x", "int64"]),
    ("softmax_forward", (np.float64(1.0),), ValueError, ["at least one axis"]),
    ("softmax_backward", (f64, np.zeros((3, 2))), ValueError, ["(3, 2)", "(2, 3)"]),
    ("log_softmax_backward", (f32, f64), TypeError, ["float32", "float64"]),
    ("causal_softmax_forward", (np.zeros((4, 3)), 1.0), ValueError, ["S=3", "T=4"]),
    ("matmul_tiled", (np.zeros((2, 3)), np.zeros((4, 5))), ValueError, ["(2, 3)", "(4, 5)"]),
    ("matmul_naive", (np.zeros(3), np.zeros((3, 2))), ValueError, ["2-D", "(3,)"]),
    ("matmul_backward", (f64, f64.T, np.zeros((2, 3))), ValueError, ["dc", "(2, 2)"]),
    ("ddpm_step", (f64, np.zeros(6), None, 0.1, 0.9, 0.5, 0.1), ValueError, ["eps", "(6,)"]),
    ("ddpm_step", (f64, f64, f32, 0.1, 0.9, 0.5, 0.1), TypeError, ["z float32"]),
    ("layer_norm_forward", (f64, np.ones(2), np.ones(2)), ValueError, ["weight", "(3,)"]),
    (
        "layer_norm_backward",
        (f64, f64, np.ones(3), np.zeros(3), np.zeros(2)),
        ValueError,
        ["mean", "(2,)"],
    ),
    ("gelu_forward", (f64, "erf"), ValueError, ["'tanh' or 'none'"]),
    ("gelu_backward", (f64, np.zeros(3)), ValueError, ["dy", "(3,)"]),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("kernel, args, exc, words", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_fail_alike_in_every_backend(module, kernel, args, exc, words):
    fn = getattr(importlib.import_module(f"minigen_kernels.{module}"), kernel)
    with pytest.raises(exc) as info:
        fn(*args)
    message = str(info.value)
    assert message.startswith(f"{kernel}: ")
    for word in words:
        assert word in message, message


# ----------------------------------------------------------------------------- device arrays


@pytest.mark.skipif(mk.why_unavailable("numba-cuda") is not None, reason="numba-cuda unavailable")
def test_numba_cuda_keeps_device_arrays_on_the_device():
    from numba import cuda

    k = mk.get("numba-cuda")
    x = np.random.default_rng(0).standard_normal((2, 5))
    on_device = k.softmax_forward(cuda.to_device(x))
    assert not isinstance(on_device, np.ndarray)
    np.testing.assert_allclose(on_device.copy_to_host(), k.softmax_forward(x), rtol=1e-12)
    assert isinstance(k.softmax_forward(x), np.ndarray)


def test_adamw_step_refuses_buffers_it_cannot_update_in_place():
    k = mk.get("numba-cpu")
    p = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="adamw_step: p must be C-contiguous"):
        k.adamw_step(p.T, p.T, p.T.copy(), p.T.copy(), 1e-3, 0.9, 0.99, 1e-8, 0.0, 1)
    with pytest.raises(ValueError, match="adamw_step: m has shape"):
        k.adamw_step(p, p, p[:2], p, 1e-3, 0.9, 0.99, 1e-8, 0.0, 1)
