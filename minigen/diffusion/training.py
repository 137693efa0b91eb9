"""Training a denoiser (§7.2): the simplified objective of Ho et al. (2020), and an EMA.

A training example is a data point x_0, a timestep t drawn uniformly, and noise
eps ~ N(0, I); the closed form of the forward process gives x_t in one go, and the
denoiser learns to tell the noise back (Ho et al., Eq. 14, "L_simple"):

    L(w) = E_{x_0, t ~ U{1..T}, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2.

(The variational bound of the chain, with the weight of each t's term dropped.)
*Min-SNR weighting* (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
Strategy") gives each t's term a weight instead, so that the many nearly clean timesteps, whose
noise is easy to tell and says little about the image's layout, stop dominating the gradient:

    w(t) = min(SNR(t), gamma) / SNR(t),      SNR(t) = abar_t / (1 - abar_t)

(1 for the noisy timesteps where SNR(t) <= gamma; gamma = 5 in the paper). Training
is AdamW with warm-up and cosine decay and gradient clipping, run by the one training loop
(`minigen.training.Loop`, which also stops a diverging run before its update); sampling uses an
*exponential moving average* of the weights (`minigen.training.EMA`), which is much smoother
than the last iterate (Ho et al. use a decay of 0.9999):

    w_ema <- d w_ema + (1 - d) w,      d = min(decay, (1 + k) / (10 + k)) at step k.

A run can be resumed: `minigen.run_state.save_run` writes its state (the raw weights, the loop's state: AdamW's
moments, the EMA, the step, the losses, every generator; the config) into a folder as one
transaction, and `train(..., resume=load_run(folder))` continues it bit for bit.

Threads: the denoisers' matrix products are small (a few hundred columns), so BLAS
threads cost more in synchronisation than they give, and on a busy machine they
spin: training the 2-D MLP was 8x slower with two OpenBLAS threads than with one
on a shared 2-core machine. `train` (and `DiffusionModel.sample`) therefore run
BLAS on one thread unless told otherwise (`blas_threads`; None leaves it alone).

Under `mpiexec -n N` (`minigen.mpi`) every rank draws the same batch, timesteps and noise,
and computes the loss of its shard of them (grad L = sum_k grad((B_k / B) L_k)); rank 0 alone
saves the run's state, calls back and shows the progress bar. The losses agree with one
process's to rounding, and are bit-identical run after run for the same N.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from minigen import checks, mpi, nn, optim
from minigen import functional as F
from minigen import rng as _rng
from minigen.backend import blas_threads
from minigen.data_parallel import split_rows
from minigen.diffusion.data import DiffusionData, Normalizer, load_digits, load_toy2d
from minigen.diffusion.denoisers import MLPDenoiser
from minigen.diffusion.schedule import NoiseSchedule
from minigen.diffusion.unet import UNet
from minigen.run_state import RunState, save_run
from minigen.tensor import Tensor
from minigen.training import EMA, Every, Loop, Schedule, TrainingDiverged

__all__ = [
    "DATASETS", "TrainConfig", "TrainResult", "EMA", "make_denoiser", "load_data",
    "diffusion_loss", "draw_noise", "denoising_loss", "PREDICTIONS", "train", "blas_threads",
    "TrainingDiverged",
]  # fmt: skip

PREDICTIONS = ("eps", "v")  # what a denoiser may predict: the noise, or v (Salimans & Ho 2022)

TOY_DATASETS = ("moons", "spirals", "swissroll", "gmm")
DATASETS = (*TOY_DATASETS, "digits")
DENOISERS: dict[str, Any] = {"mlp": MLPDenoiser, "unet": UNet}


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint).

    `model` holds the denoiser's keyword arguments; empty means the default for the
    data: an MLP for the 2-D toys, a U-Net for the digits.
    """

    # this run's own settings: a column of fields like other configs', alike in shape only
    data: str = "moons"
    steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    n_points: int = 10000  # how many points of a 2-D toy to train on
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data not in DATASETS:
            raise ValueError(f"unknown data set {self.data!r}; choose one of {list(DATASETS)}")
        checks.at_least(self, ("steps", "batch_size", "num_train_timesteps", "n_points"), 1)
        checks.require(self, ("ema_decay",), lambda v: 0 <= v < 1, "lie in [0, 1)")

    def model_config(self) -> dict[str, Any]:
        """The denoiser's config: `model`, completed with the data's kind and shape."""
        if self.data == "digits":
            return {"kind": "unet", "image_size": 8, "in_channels": 1, **self.model}
        return {"kind": "mlp", "dim": 2, **self.model}


def make_denoiser(config: dict[str, Any]) -> nn.Module:
    """A denoiser from its config: {"kind": "mlp" | "unet", ...its keyword arguments}."""
    kw = dict(config)
    kind = kw.pop("kind", None)
    if kind not in DENOISERS:
        raise ValueError(f"unknown denoiser kind {kind!r}; one of {sorted(DENOISERS)}")
    try:
        return DENOISERS[kind](**kw)
    except TypeError as e:
        raise ValueError(f"bad {kind} denoiser config {config}: {e}") from None


def load_data(name: str, n_points: int = 10000, seed: int = 0) -> DiffusionData:
    """The training data by name: a 2-D toy (n_points of them) or the 8x8 digits."""
    if name == "digits":
        return load_digits("standard")
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {list(DATASETS)}")
    return load_toy2d(name, n=n_points, seed=seed)


def diffusion_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: np.ndarray,
    generator: np.random.Generator,
    snr_gamma: float | None = None,
) -> Tensor:
    """L_simple on a batch x0 (B, ...): MSE between the noise and the denoiser's guess;
    with `snr_gamma`, each example's term weighted by min(SNR(t), gamma) / SNR(t)."""
    t, eps = draw_noise(schedule, x0, generator)
    return denoising_loss(model, schedule, x0, t, eps, snr_gamma)


def draw_noise(
    schedule: NoiseSchedule, x0: np.ndarray, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The random part of a training step of L_simple: a timestep and a noise per example."""
    # t ~ U{0 .. T-1} (the book's 1 .. T), one per example
    t = generator.integers(0, len(schedule), x0.shape[0])  # (B,)
    eps = generator.standard_normal(x0.shape, dtype=x0.dtype)  # (B, ...)
    return t, eps


def denoising_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: np.ndarray,
    t: np.ndarray,
    eps: np.ndarray,
    snr_gamma: float | None = None,
    prediction: str = "eps",
) -> Tensor:
    """`diffusion_loss` for given timesteps t (B,) and noises eps (shaped as x0).

    With prediction "v" the model predicts v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
    (Salimans & Ho 2022) and the loss is ||v - v_theta||^2, which weighs the error on x_0 by
    1 + SNR(t) where the eps loss weighs it by SNR(t): the noisiest steps, where the layout of
    an image is decided, count as much as the others. With `snr_gamma` the weight on x_0 is
    1 + min(SNR(t), gamma)."""
    # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    x_t = schedule.add_noise(x0, eps, t)  # (B, ...)
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
    if snr_gamma is not None and snr_gamma <= 0:
        raise ValueError(f"snr_gamma must be positive, got {snr_gamma}")
    abar = schedule.alphas_cumprod[t]  # (B,)
    snr = abar / (1 - abar)  # (B,)
    w = None  # no weights: every example counts alike
    if prediction == "eps":
        target = eps  # (B, ...)
        if snr_gamma is not None:
            # w(t) = min(SNR(t), gamma) / SNR(t)
            w = (np.minimum(snr, snr_gamma) / snr).astype(x0.dtype)  # (B,)
    else:
        a = abar.reshape((-1,) + (1,) * (x0.ndim - 1))  # (B, 1, ...)
        # v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
        target = (np.sqrt(a) * eps - np.sqrt(1 - a) * x0).astype(x0.dtype)  # (B, ...)
        if snr_gamma is not None:
            # w(t) = (1 + min(SNR(t), gamma)) / (1 + SNR(t)): x_0's error weighs 1 + min(SNR, gamma)
            w = ((1 + np.minimum(snr, snr_gamma)) / (1 + snr)).astype(x0.dtype)  # (B,)
    if w is None:
        # || target - model(x_t, t) ||^2, averaged (target: eps or v)
        return F.mse_loss(model(Tensor(x_t), t), target)
    sq = F.mse_loss(model(Tensor(x_t), t), target, reduction="none")  # (B, ...)
    per_example = sq.mean(axis=tuple(range(1, x0.ndim)))  # (B,)
    # E[w(t) || target - model(x_t, t) ||^2]
    return (per_example * Tensor(w)).mean()


@dataclass
class TrainResult:
    """A trained denoiser: its EMA weights (`model`), the last iterate, the losses."""

    model: nn.Module
    raw_model: nn.Module
    losses: list[float]
    normalizer: Normalizer
    config: TrainConfig
    seconds: float


def train(
    config: TrainConfig,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    blas_threads: int | None = 1,
    *,
    run_dir: str | os.PathLike | None = None,
    checkpoint_interval: int = 0,
    resume: RunState | None = None,
    until: int | None = None,
) -> TrainResult:
    """Train a denoiser on `config.data` by L_simple; returns the EMA model and the losses.

    `callback(step, loss)` runs after each step (0-based). With `run_dir`, the run's state is
    written there (`save_run`) every `checkpoint_interval` steps; `resume` (from `load_run`)
    continues such a run, computing the same losses and weights as one that never stopped.
    `until` stops after that step, as if the run were interrupted there. A non-finite loss or
    gradient stops the run before its update with `TrainingDiverged` (a FloatingPointError).
    """
    # a NaN or an inf is caught on the loss, with a clear error: no NumPy warnings on the way
    with _blas_threads(blas_threads), np.errstate(over="ignore", invalid="ignore"):
        return _train(config, progress, callback, run_dir, checkpoint_interval, resume, until)


_blas_threads = blas_threads


def _train(
    config: TrainConfig,
    progress: bool,
    callback: Callable[[int, float], None] | None,
    run_dir: str | os.PathLike | None = None,
    checkpoint_interval: int = 0,
    resume: RunState | None = None,
    until: int | None = None,
) -> TrainResult:
    _rng.manual_seed(config.seed)  # the weights' initialisation
    gen = np.random.default_rng(config.seed)  # batches, timesteps, noise
    data = load_data(config.data, config.n_points, config.seed)
    x = data.x  # (N, ...) normalised
    schedule = NoiseSchedule.make(config.schedule, config.num_train_timesteps)
    model = make_denoiser(config.model_config())
    opt = optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr = Schedule(config.lr, config.warmup, config.steps, config.lr / 10)
    loop = Loop(model, opt, config.steps, lr, config.grad_clip, config.ema_decay,
                {"batches": gen}, desc=f"diffusion on {config.data}", progress=progress)  # fmt: skip
    if resume is not None:
        resume.restore(model, loop)
    comm = mpi.world()  # under mpiexec: rank k computes shard k of every batch
    engine = None if comm is None else mpi.MPIBackward(model, _shard_loss(schedule), comm)

    def step_fn(step: int) -> Tensor | float:
        batch = x[gen.integers(0, len(x), config.batch_size)]  # (B, ...)
        if engine is None:
            return diffusion_loss(model, schedule, batch, gen)
        t, eps = draw_noise(schedule, batch, gen)  # (B,), (B, ...): the same on every rank
        rows = split_rows(len(batch), comm.Get_size())
        opt.zero_grad()
        value = engine([(batch[r], t[r], eps[r], len(r) / len(batch)) for r in rows])
        return loop.apply(value)

    hooks = []
    if callback is not None:
        hooks.append(Every(1, lambda lp: callback(lp.step - 1, lp.losses[-1]), at_end=False))
    if run_dir is not None:
        save = lambda lp: save_run(run_dir, asdict(config), model, lp)  # noqa: E731
        hooks.append(Every(checkpoint_interval, save, at_end=False))
    if comm is not None and comm.Get_rank() != 0:  # rank 0 alone saves and reports
        hooks, loop.progress = [], False
    start = time.perf_counter()
    with mpi.abort_on_error(comm, (TrainingDiverged,)):
        loop.run(step_fn, hooks, until)
        mpi.check_in_sync(comm, model)
    seconds = time.perf_counter() - start
    ema_model = loop.ema.copy_to(make_denoiser(config.model_config()))
    return TrainResult(ema_model, model, loop.losses, data.normalizer, config, seconds)


def _shard_loss(schedule: NoiseSchedule) -> Callable[[nn.Module, Any], Tensor]:
    """A shard's share of L_simple: (B_k / B) L_k on its rows of the batch, timesteps, noise."""

    def loss(model: nn.Module, shard: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> Tensor:
        x0, t, eps, share = shard
        return denoising_loss(model, schedule, x0, t, eps) * share

    return loss
