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

A run can be resumed: `save_run` writes its state (the raw weights, the loop's state: AdamW's
moments, the EMA, the step, the losses, every generator; the config) into a folder as one
transaction, and `train(..., resume=load_run(folder))` continues it bit for bit.

Threads: the denoisers' matrix products are small (a few hundred columns), so BLAS
threads cost more in synchronisation than they give, and on a busy machine they
spin: training the 2-D MLP was 8x slower with two OpenBLAS threads than with one
on a shared 2-core machine. `train` (and `DiffusionModel.sample`) therefore run
BLAS on one thread unless told otherwise (`blas_threads`; None leaves it alone).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minigen import checkpoint, nn, optim
from minigen import functional as F
from minigen import rng as _rng
from minigen.backend import blas_threads
from minigen.checkpoint import CheckpointError, atomic_write
from minigen.diffusion.data import DiffusionData, Normalizer, load_digits, load_toy2d
from minigen.diffusion.denoisers import MLPDenoiser
from minigen.diffusion.schedule import NoiseSchedule
from minigen.diffusion.unet import UNet
from minigen.runs import RunLock, previous, transaction
from minigen.tensor import Tensor
from minigen.training import EMA, Every, Loop, Schedule, TrainingDiverged

__all__ = [
    "DATASETS", "TrainConfig", "TrainResult", "EMA", "make_denoiser", "load_data",
    "diffusion_loss", "draw_noise", "denoising_loss", "PREDICTIONS", "train", "blas_threads",
    "TrainingDiverged", "RunState", "save_run", "load_run", "prepare_run", "RUN_FILES",
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
        for name in ("steps", "batch_size", "num_train_timesteps", "n_points"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")

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

    def step_fn(step: int) -> Tensor:
        batch = x[gen.integers(0, len(x), config.batch_size)]  # (B, ...)
        return diffusion_loss(model, schedule, batch, gen)

    hooks = []
    if callback is not None:
        hooks.append(Every(1, lambda lp: callback(lp.step - 1, lp.losses[-1]), at_end=False))
    if run_dir is not None:
        save = lambda lp: save_run(run_dir, asdict(config), model, lp)  # noqa: E731
        hooks.append(Every(checkpoint_interval, save, at_end=False))
    start = time.perf_counter()
    loop.run(step_fn, hooks, until)
    seconds = time.perf_counter() - start
    ema_model = loop.ema.copy_to(make_denoiser(config.model_config()))
    return TrainResult(ema_model, model, loop.losses, data.normalizer, config, seconds)


# ----------------------------------------------------------------------- resuming a run

RUN_FILES = {
    "model": "model.safetensors",  # the raw weights (not the EMA's), with the step
    "arrays": "trainer_state.safetensors",  # the loop's arrays: AdamW's moments, the EMA
    "state": "trainer_state.json",  # the loop's JSON state: step, losses, generators
    "config": "config.json",  # the run's training config
}


def save_run(
    run_dir: str | os.PathLike, config: dict[str, Any], model: nn.Module, loop: Loop
) -> Path:
    """Write a run's state into the folder `run_dir` as one transaction (`minigen.runs`), so
    that a run killed at any moment leaves the previous complete state."""
    arrays, state = loop.state_dict()
    step = {"step": state["step"]}
    with RunLock(run_dir), transaction(run_dir, owned=RUN_FILES.values()) as tmp:
        checkpoint.save(tmp / RUN_FILES["model"], model.state_dict(), step)
        checkpoint.save(tmp / RUN_FILES["arrays"], arrays, step)
        atomic_write(tmp / RUN_FILES["state"], json.dumps(state))
        atomic_write(tmp / RUN_FILES["config"], json.dumps(config, indent=1))
    return Path(run_dir)


@dataclass
class RunState:
    """What `save_run` wrote: the config (a dict), the raw weights, the loop's state."""

    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]
    source: str = ""

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def config_for(self, config: dict[str, Any], flags: dict[str, str] | None = None) -> dict:
        """The run's config, for a resumed run asked for with `config`: the two must agree but
        for `steps`, which may grow. Raises ValueError in one line naming the settings (by
        their command-line `flags`, "--" + the name by default) that differ."""
        config = json.loads(json.dumps(config))  # as stored: tuples as lists
        flags = flags or {}
        differ = [k for k in sorted(set(config) | set(self.config))
                  if k != "steps" and config.get(k) != self.config.get(k)]  # fmt: skip
        if differ:
            what = ", ".join(
                f"{flags.get(k, '--' + k.replace('_', '-'))} {self.config.get(k)!r} there, "
                f"{config.get(k)!r} here" for k in differ
            )  # fmt: skip
            raise ValueError(f"--resume: the run in {self.source} has other settings ({what}); "
                             "resume it with the same ones, or start over: --force without --resume")  # fmt: skip
        if config.get("steps", 0) < self.config.get("steps", 0):
            raise ValueError(
                f"--resume: --steps {config.get('steps')} is below the {self.config['steps']} "
                f"steps of the run in {self.source}; --steps may only grow"
            )
        return {**self.config, "steps": config.get("steps", self.config.get("steps"))}

    def restore(self, model: nn.Module, loop: Loop) -> None:
        """Put the weights into `model` and the state into `loop`; CheckpointError if they do
        not fit."""
        try:
            model.load_state_dict(self.weights)
            loop.load_state_dict(self.arrays, self.state)
        except ValueError as e:
            raise CheckpointError(f"{self.source}: {e}") from None


def load_run(run_dir: str | os.PathLike) -> RunState:
    """Read a run's state written by `save_run`; CheckpointError naming the file if a part is
    missing, unreadable, or from another step than the others."""
    run = Path(run_dir)
    if not run.is_dir() and previous(run).is_dir():
        run = previous(run)  # a save cut between its two renames
    if not run.is_dir():
        raise CheckpointError(f"no run to resume: {run} not found")
    json_parts = {}
    for key in ("state", "config"):
        path = run / RUN_FILES[key]
        try:
            json_parts[key] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a readable run state ({e})") from None
        if not isinstance(json_parts[key], dict):
            raise CheckpointError(f"{path}: not a JSON object")
    weights, wmeta = checkpoint.load(run / RUN_FILES["model"])
    arrays, ameta = checkpoint.load(run / RUN_FILES["arrays"])
    steps = {"weights": wmeta.get("step"), "arrays": ameta.get("step"),
             "state": json_parts["state"].get("step")}  # fmt: skip
    if len(set(map(str, steps.values()))) != 1:
        raise CheckpointError(f"{run}: its files are from different steps {steps}")
    return RunState(json_parts["config"], weights, arrays, json_parts["state"], str(run))


def prepare_run(run_dir: str | os.PathLike, resume: bool, force: bool) -> RunState | None:
    """A command's run folder: with `resume`, the state in it (ValueError in one line if there
    is none); without, None for a fresh run, after removing an unfinished run's folder if
    `force` (else ValueError: it is not overwritten without --force). Call it holding the
    folder's RunLock."""
    run = Path(run_dir)
    there = [p for p in (run, previous(run)) if p.is_dir()]
    if resume:
        if not there:
            raise ValueError(
                f"--resume: no unfinished run in {run} (a run removes it when it ends)"
            )
        return load_run(run)
    if there and not force:
        raise ValueError(
            f"{run} holds an unfinished run; pass --resume to continue it or --force to start over"
        )
    for p in there:
        shutil.rmtree(p)
    return None
