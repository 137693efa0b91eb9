"""minigen: Chapter 7 ("Synthesis") of The Little Book of Deep Learning, from scratch in NumPy."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="minigen",
    version="0.1.0",
    description=(
        "GPT text generation, few-shot prediction, RLHF, denoising diffusion and "
        "CLIP-guided synthesis from scratch in NumPy, after Chapter 7 of "
        "The Little Book of Deep Learning"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ is a source root holding the package `minigen_kernels`; it has no __init__.py,
    # so `import kernels` from the repository root never shadows PyPI's `kernels` (which
    # transformers imports)
    packages=find_packages(include=["minigen", "minigen.*"]) + ["minigen_kernels"],
    package_dir={"minigen_kernels": "kernels/minigen_kernels"},
    package_data={"minigen": ["assets/*", "assets/**/*"]},
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",  # scipy.special.erf for the exact GELU
        "numba>=0.58",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "scikit-learn>=1.2",  # its bundled 8x8 digits (offline)
        "regex>=2022.1.18",  # GPT-2's pre-tokeniser: \p{L}, \p{N} from newer Unicode tables
    ],
    extras_require={
        "dev": [
            "pytest>=7.4",
            "hypothesis>=6.80",
            "nbmake>=1.5",
            "jupyter",
            "ipykernel",
            "ruff>=0.5",
            # tests/test_mpi.py runs real mpiexec jobs (the mpi extra; no Windows wheel of MPICH)
            "mpi4py>=4.0; sys_platform != 'win32'",
            "mpich>=4.2; sys_platform != 'win32'",
        ],
        "gpu": ["cupy-cuda12x"],
        # data parallelism on MPI: mpiexec -n N minigen train-gpt ... (docs/parallel.md)
        "mpi": ["mpi4py>=4.0", "mpich>=4.2"],
        # load_gpt2("gpt2") / minigen fewshot --model gpt2 download from the hub with it
        "hub": ["huggingface_hub"],
        # Test oracles and benchmark peers only: never imported at run time.
        "oracle": [
            "torch==2.13.0",
            "transformers>=4.40",
            "diffusers>=0.30",
            "threadpoolctl",
        ],
    },
    entry_points={"console_scripts": ["minigen=minigen.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
