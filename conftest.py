"""pytest set-up shared by tests/ and lessons/.

- Lessons run in their fast mode under pytest (nbmake starts kernels that inherit
  this environment); `jupyter lab lessons/` runs them in full.
- Hypothesis: no deadlines (the machine is noisy), a fixed budget of examples.
- kernels/minigen_kernels/ importable as `minigen_kernels` without installing; numba.cuda kernels run in
  numba's CUDA simulator where there is no GPU.
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("MINIGEN_FAST", "1")
# The training commands' --backend auto takes numba where it runs (minigen.backend.resolve);
# the suite runs them on the NumPy reference unless a test asks otherwise, so that a command's
# numbers can be compared with the library's in the same process. The kernels are held to the
# reference by tests/test_kernels_parity.py, and auto itself by tests/test_cli_backend.py.
os.environ.setdefault("MINIGEN_BACKEND", "numpy")
os.environ.setdefault("MPLBACKEND", "Agg")

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "minigen",
        deadline=None,
        max_examples=30,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minigen"))
except ImportError:  # hypothesis is in the dev extra
    pass

# ----------------------------------------------------------------------------- minigen_kernels
# Added for the kernels/ folder (Numba and CuPy mirrors of the hot loops).
# 1. The package `minigen_kernels` lives in kernels/minigen_kernels/ (setup.py maps it).
#    kernels/ itself has no __init__.py, so `import kernels` from the repository root
#    finds PyPI's `kernels` (which transformers imports), never this folder. Register the
#    package so `import minigen_kernels` works from the root without installing.
# 2. On a machine without an NVIDIA GPU, run the numba.cuda kernels in numba's CUDA
#    simulator so the GPU code is still tested. The variable must be set before
#    numba.cuda is first imported; an explicit NUMBA_ENABLE_CUDASIM wins.


def _register_minigen_kernels() -> None:
    init = Path(__file__).resolve().parent / "kernels" / "minigen_kernels" / "__init__.py"
    if "minigen_kernels" in sys.modules or not init.exists():
        return
    spec = importlib.util.spec_from_file_location(
        "minigen_kernels", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["minigen_kernels"] = module
    spec.loader.exec_module(module)


def _use_cuda_simulator_without_gpu() -> None:
    has_gpu = Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None
    if "NUMBA_ENABLE_CUDASIM" in os.environ or has_gpu:
        return
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    if "numba" in sys.modules and "numba.cuda" not in sys.modules:
        from numba.core import config  # numba read the environment when imported

        config.ENABLE_CUDASIM = 1


_register_minigen_kernels()
_use_cuda_simulator_without_gpu()
