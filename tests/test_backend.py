"""The backend switch: what users of `minigen.backend.use` rely on.

- use() selects the array module and the kernels `dispatch.pick` hands out; use("numpy")
  restores both;
- the environment variable MINIGEN_BACKEND does the same when minigen is imported;
- every row of the dispatch table names a NumPy reference that exists and a kernel-backed
  function with its parameters; a part's row joins only when the part registers it;
- an unknown backend names the choices; an unavailable one (numba or cupy missing, no
  CUDA device) names what to install, and leaves the current backend in place;
- arrays of two array libraries in one op raise an error naming both (a fake device
  array type stands in for CuPy's where CuPy is absent).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import minigen
import minigen.diffusion
from minigen import Tensor, backend, dispatch, ops
from minigen import functional as F
from minigen.ops import matmul

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_backend():
    previous = backend.current()
    yield
    backend.use(previous)


def _reference(op: dispatch.FusedOp):
    module, _, name = op.reference.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _rows() -> list[dispatch.FusedOp]:
    minigen.diffusion.DDPMScheduler()  # diffusion registers its noise step
    return list(dispatch.table().values())


def test_the_numpy_backend_runs_the_references_themselves(restore_backend):
    backend.use("numpy")
    assert backend.xp is np
    for op in _rows():
        reference = _reference(op)
        assert reference.__name__ == op.name, op.reference
        assert dispatch.pick(reference) is reference, op.name
    assert _reference(dispatch.table()["ddpm_noise_step"]) is minigen.diffusion.ddpm_noise_step


def test_numba_picks_every_rows_kernel_and_numpy_puts_the_references_back(restore_backend):
    if backend.why_unavailable("numba") is not None:
        pytest.skip(backend.why_unavailable("numba"))
    backend.use("numba")
    assert backend.current() == "numba" and backend.xp is np
    for op in _rows():
        reference = _reference(op)
        picked = dispatch.pick(reference)
        assert isinstance(picked, functools.partial), op.name
        assert picked.func is op.kernel_backed, op.name
        assert picked.args == (reference, backend.kernel_module()), op.name
    backend.use("numpy")
    assert all(dispatch.pick(_reference(op)) is _reference(op) for op in _rows())


@pytest.mark.parametrize("op", _rows(), ids=lambda op: op.name)
def test_kernel_backed_functions_take_the_parameters_of_their_reference(op):
    want = list(inspect.signature(_reference(op)).parameters)
    got = list(inspect.signature(op.kernel_backed).parameters)
    assert got[2:] == want, f"{op.kernel_backed.__name__}{inspect.signature(op.kernel_backed)}"


@pytest.mark.parametrize("op", _rows(), ids=lambda op: op.name)
def test_every_kernel_a_row_names_is_in_every_kernel_backend(op):
    mk = backend.import_kernels()
    assert op.kernels and set(op.kernels) <= set(mk.KERNELS), op.kernels


def test_register_refuses_a_second_op_of_the_same_name():
    row = dispatch.table()["softmax_forward"]
    dispatch.register(row)  # the same row again: nothing happens
    other = dispatch.FusedOp("softmax_forward", "elsewhere.softmax_forward", print, ("x",))
    with pytest.raises(ValueError, match="'softmax_forward' is already"):
        dispatch.register(other)
    assert dispatch.table()["softmax_forward"] is row


def test_importing_the_parts_registers_nothing():
    """The table holds the core's rows until a part registers its own (diffusion: when a
    DDPM scheduler is built), not when the part is imported."""
    code = (
        "import minigen, minigen.diffusion\n"
        "from minigen import dispatch\n"
        "print(sorted(dispatch.table()) == sorted(op.name for op in dispatch.CORE))\n"
        "minigen.diffusion.DDPMScheduler()\n"
        "print('ddpm_noise_step' in dispatch.table())\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


def test_available_lists_numpy_first_and_only_runnable_backends():
    names = backend.available()
    assert names[0] == "numpy"
    assert all(backend.why_unavailable(n) is None for n in names)
    assert set(names) <= set(backend.BACKENDS)


# ----------------------------------------------------------------------------- bad input


def test_unknown_backend_names_the_choices():
    before = backend.current()
    with pytest.raises(ValueError, match="'torch'.*numpy, numba, cupy"):
        backend.use("torch")
    assert backend.current() == before


def test_cupy_without_cupy_says_what_to_install(monkeypatch):
    before = backend.current()
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now fails
    with pytest.raises(backend.BackendError, match=r"'cupy'.*pip install minigen\[gpu\]"):
        backend.use("cupy")
    assert backend.current() == before and backend.xp is np


def test_cupy_without_a_cuda_device_says_so(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    before = backend.current()
    with pytest.raises(backend.BackendError, match="no CUDA device"):
        backend.use("cupy")
    assert backend.current() == before and backend.xp is np


def test_numba_without_numba_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)
    before = backend.current()
    with pytest.raises(backend.BackendError, match="'numba'.*pip install numba"):
        backend.use("numba")
    assert backend.current() == before


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "MINIGEN_BACKEND"} | env
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True
    )


def test_the_environment_variable_selects_the_backend():
    code = (
        "import minigen, minigen.functional as F\n"
        "from minigen import backend, dispatch, kernel_ops\n"
        "picked = dispatch.pick(F.softmax_forward)\n"
        "print(backend.current(), picked.func is kernel_ops.softmax_forward)\n"
        "x = minigen.Tensor([[1.0, 2.0, 3.0]], requires_grad=True)\n"
        "F.softmax(x).sum().backward()\n"
        "print(abs(x.grad).max() < 1e-6)\n"
    )
    out = _run(code, MINIGEN_BACKEND="numba")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numba", "True", "True"]


def test_a_bad_environment_variable_fails_at_import_naming_it():
    out = _run("import minigen", MINIGEN_BACKEND="gpu")
    assert out.returncode != 0
    assert "MINIGEN_BACKEND=gpu" in out.stderr and "numpy, numba, cupy" in out.stderr


# ----------------------------------------------------------------------------- mixed arrays


class FakeDeviceArray:
    """A stand-in for a GPU array (CuPy's): it refuses to become a NumPy array."""

    __array_priority__ = 2000.0

    def __init__(self, shape, dtype=np.float32):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.size = int(np.prod(shape))

    def __array_namespace__(self):
        return FAKE_MODULE

    def __array__(self, *args, **kwargs):  # as CuPy: no implicit copy to the host
        raise TypeError("implicit conversion to a NumPy array is not allowed")

    def __array_ufunc__(self, *args, **kwargs):
        raise TypeError("unsupported operand type: numpy.ndarray")

    def reshape(self, *shape):
        return FakeDeviceArray((self.size // self.shape[-1], self.shape[-1]))

    def _refuse(self, other):
        raise TypeError(f"unsupported operand type: {type(other).__name__}")

    __add__ = __radd__ = __mul__ = __rmul__ = __matmul__ = __rmatmul__ = _refuse


FAKE_MODULE = types.SimpleNamespace(asarray=lambda a, dtype=None: a)


def _on_fake_device(a, dtype=None):
    return a if isinstance(a, FakeDeviceArray) else FakeDeviceArray(np.shape(a), dtype or "f4")


def test_numpy_data_and_constants_follow_the_backend_onto_the_device(monkeypatch):
    """With "cupy", NumPy inputs, constants and random draws are copied to the GPU (here a
    fake device module stands in for cupy); a graph then lives on one device."""
    fake = types.SimpleNamespace(asarray=_on_fake_device)
    monkeypatch.setattr(backend, "xp", fake)
    assert isinstance(Tensor(np.ones((2, 3), np.float32)).data, FakeDeviceArray)
    assert isinstance(Tensor([1.0, 2.0]).data, FakeDeviceArray)
    assert isinstance(ops._lift(np.ones(3)).data, FakeDeviceArray)  # a constant operand
    assert ops._lift(2.0).data == 2.0  # Python numbers stay numbers
    assert isinstance(minigen.rng.randn(2, 2), FakeDeviceArray)  # drawn on the host, copied


def test_fake_device_arrays_belong_to_their_own_array_module():
    assert backend.array_module(FakeDeviceArray((2,))) is FAKE_MODULE
    assert backend.array_module(np.zeros(2), 3.0) is np


@pytest.mark.parametrize("op", ["add", "mul", "matmul"])
def test_mixing_arrays_of_two_backends_names_both(op):
    host = Tensor(np.ones((2, 2), np.float32), requires_grad=True)
    device = Tensor(FakeDeviceArray((2, 2)))
    assert isinstance(device.data, FakeDeviceArray)  # a device array stays on its device
    f = {"add": lambda a, b: a + b, "mul": lambda a, b: a * b, "matmul": matmul}[op]
    with pytest.raises(backend.BackendMismatchError) as info:
        f(host, device)
    message = str(info.value)
    assert message.startswith(f"{op}: ")
    assert "numpy.ndarray (numpy)" in message and "FakeDeviceArray (tests)" in message
    assert "minigen.backend.use" in message


def test_mixing_in_linear_names_both():
    x = Tensor(FakeDeviceArray((3, 2)))
    w = Tensor(np.ones((2, 4), np.float32), requires_grad=True)
    with pytest.raises(
        backend.BackendMismatchError,
        match=r"^linear: .*FakeDeviceArray \(tests\) and numpy.ndarray \(numpy\)",
    ):
        F.linear(x, w)


def test_a_real_type_error_is_not_called_a_backend_mismatch():
    with pytest.raises(TypeError) as info:
        Tensor(np.ones(2)) + "text"
    assert not isinstance(info.value, backend.BackendMismatchError)


# ----------------------------------------------------------------------------- layers


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, whether at the top level of the file) for every import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            found += [(a.name, id(n) in top) for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            found.append((n.module, id(n) in top))
    return found


def test_kernel_backends_import_nothing_of_minigen():
    """Only minigen_kernels/reference.py reads minigen (it *is* minigen's NumPy code): the
    Numba and CuPy kernels stand alone, so minigen can load them without a cycle."""
    paths = sorted((ROOT / "kernels" / "minigen_kernels").glob("*.py"))
    assert len(paths) > 5, "kernels/minigen_kernels/ lost its modules"
    for path in paths:
        if path.name == "reference.py":
            continue
        for module, _ in _imports(path):
            assert module.split(".")[0] != "minigen", f"{path.relative_to(ROOT)} imports {module}"


def test_minigen_imports_the_kernels_only_when_a_kernel_backend_is_chosen():
    for path in sorted((ROOT / "minigen").rglob("*.py")):
        for module, at_top in _imports(path):
            if module.split(".")[0] in ("minigen_kernels", "numba", "cupy", "cupyx"):
                assert not at_top, f"{path.relative_to(ROOT)} imports {module} when imported"


def test_using_puts_the_previous_backend_back_also_on_error(restore_backend):
    if backend.why_unavailable("numba") is not None:
        pytest.skip(backend.why_unavailable("numba"))
    backend.use("numpy")
    with backend.using("numba"):
        assert backend.current() == "numba"
    assert backend.current() == "numpy" and dispatch.pick(F.softmax_forward) is F.softmax_forward
    with pytest.raises(RuntimeError), backend.using("numba"):
        raise RuntimeError("a failing block")
    assert backend.current() == "numpy"
    with pytest.raises(ValueError), backend.using("torch"):  # refused: nothing changes
        pass
    assert backend.current() == "numpy"
