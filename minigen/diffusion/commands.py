"""The §7.2 sub-commands of `minigen`: `train-diffusion` and `sample-diffusion`.

    minigen train-diffusion --data digits --steps 5000 --out digits.safetensors
    minigen sample-diffusion --checkpoint digits --n 40 --out digits.png --figure72 fig72.png

`minigen.cli` registers them with `add_commands`; errors are ValueError / RuntimeError /
OSError, which the CLI prints as one line. A NaN while training or sampling stops the
command (FloatingPointError, re-raised as RuntimeError) before anything is written.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from minigen import cli_args as num
from minigen import mpi
from minigen.diffusion import pipeline, plots, training
from minigen.diffusion.schedule import MAX_TIMESTEPS
from minigen.plotting import plot_losses, save_figure
from minigen.run_state import resumable_run
from minigen.runs import refuse_overwrite

__all__ = ["add_commands", "train_cmd", "sample_cmd"]


# the flag of each TrainConfig field that --resume compares ("--" + the name otherwise)
_FLAGS = {"num_train_timesteps": "--timesteps", "model": "--hidden/--depth/--channels"}


def train_cmd(args: argparse.Namespace) -> int:
    if args.data not in training.DATASETS:
        raise ValueError(f"unknown data set {args.data!r}; choose one of {list(training.DATASETS)}")
    digits = args.data == "digits"
    out = args.out or f"diffusion_{args.data}.safetensors"
    loss_png = args.loss_plot or os.path.splitext(out)[0] + "_loss.png"
    refuse_overwrite([out, loss_png], args.force)
    model = {k: v for k, v in (("hidden", args.hidden), ("depth", args.depth),
             ("base_channels", args.channels)) if v is not None}  # fmt: skip
    if model and set(model) & ({"hidden", "depth"} if digits else {"base_channels"}):
        raise ValueError("--hidden/--depth are for the 2-D MLP, --channels for the digits U-Net")
    steps = (5000 if digits else 6000) if args.steps is None else args.steps
    batch_size = (64 if digits else 256) if args.batch_size is None else args.batch_size
    cfg = training.TrainConfig(
        data=args.data, steps=steps, batch_size=batch_size, lr=args.lr,
        ema_decay=args.ema_decay, schedule=args.schedule, num_train_timesteps=args.timesteps,
        seed=args.seed, model=model,
    )  # fmt: skip
    root = mpi.quiet_unless_root(mpi.world())  # under mpiexec, rank 0 alone writes and prints
    run = resumable_run(out, cfg, _FLAGS, args.resume, args.force, ranks=True)  # MPI: shards
    with run as (run_dir, resume, cfg):
        try:
            result = training.train(cfg, progress=not args.quiet, run_dir=run_dir,
                                    checkpoint_interval=args.checkpoint_interval, resume=resume)  # fmt: skip
        except FloatingPointError as e:  # the loss went NaN: the weights before it are kept
            raise RuntimeError(str(e)) from None
        if not root:
            return 0
        path = pipeline.DiffusionModel.from_training(result).save(out)
        title = f"L_simple on {args.data}"
        fig = plot_losses(result.losses, title, plots.LOSS_LABEL, log_scale=True)
        save_figure(fig, loss_png)
    final = sum(result.losses[-100:]) / len(result.losses[-100:])
    print(f"trained {cfg.steps} steps in {result.seconds:.0f}s, final loss {final:.4f} -> {path}")
    print(f"loss curve -> {loss_png}")
    return 0


def sample_cmd(args: argparse.Namespace) -> int:
    refuse_overwrite([args.out, args.figure72], args.force)
    model = pipeline.load(args.checkpoint)
    model.check_image_size(args.image_size)
    kw = {"sampler": args.sampler, "steps": args.steps, "eta": args.eta, "spacing": args.spacing,
          "variance_type": args.variance, "progress": not args.quiet}  # fmt: skip
    try:
        s = model.sample(args.n, seed=args.seed, **kw)
        how = f"{args.sampler.upper()}, {s.num_steps} steps"
        if model.is_image:
            fig = plots.image_grid(s.x, ncols=min(10, args.n), title=f"{model.data} ({how})")
        else:
            fig = plots.plot_points(s.x, title=f"{args.n} samples of {model.data} ({how})")
        print(f"{args.n} samples -> {save_figure(fig, args.out)}")
        if args.figure72:
            m = args.columns if model.is_image else args.n  # 2-D: the whole cloud moves
            t = model.sample(m, seed=args.seed, record=args.rows, **kw)
            fig = (plots.figure_7_2(t.trajectory, t.frame_t) if model.is_image
                   else plots.point_trajectories(t.trajectory, t.frame_t))  # fmt: skip
            print(f"Figure 7.2 (x_T top to x_0 bottom) -> {save_figure(fig, args.figure72)}")
    except FloatingPointError as e:  # NaN in a sample: the sampler stopped
        raise RuntimeError(str(e)) from None
    return 0


def add_commands(sub: Any) -> None:
    """Add `train-diffusion` and `sample-diffusion` to an argparse sub-parsers object."""
    # each command declares its own parser and flags: alike in shape only
    p = sub.add_parser(
        "train-diffusion",
        help="train a denoising diffusion model (§7.2) on 2-D toys or 8x8 digits",
        description=(
            "Train a denoiser eps_theta(x_t, t) by the simplified loss of Ho et al. (2020): an MLP "
            "for 2-D toys, a small U-Net for the 8x8 digits. Writes a safetensors checkpoint that "
            "carries its config (model, schedule, normaliser) and a loss-curve PNG."
        ),
    )
    p.add_argument(
        "--data",
        default="moons",
        help="moons, spirals, swissroll, gmm or digits (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=num.positive_int,
        help="training steps (default: 6000 for 2-D, 5000 for digits)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=num.positive_int, help="default: 256 (2-D), 64 (digits)")
    p.add_argument(
        "--lr", type=num.positive_float, default=1e-3,
        help="peak learning rate (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--ema-decay", type=num.unit_interval_open, default=0.999,
                   help="EMA of the weights, in [0, 1) (default: %(default)s)")  # fmt: skip
    p.add_argument("--schedule", default="linear", help="linear or cosine (default: %(default)s)")
    p.add_argument("--timesteps", type=num.int_range(1, MAX_TIMESTEPS), default=1000,
                   help=f"T, at most {MAX_TIMESTEPS:,} (default: %(default)s)")  # fmt: skip
    p.add_argument("--hidden", type=num.positive_int, help="2-D MLP width (default: 128)")
    p.add_argument("--depth", type=num.positive_int, help="2-D MLP residual blocks (default: 3)")
    p.add_argument("--channels", type=num.positive_int, help="U-Net base channels (default: 16)")
    num.run_flags(p, "diffusion_DATA.safetensors", interval=1000)
    p.set_defaults(func=train_cmd)

    p = sub.add_parser(
        "sample-diffusion",
        help="sample a diffusion model by DDPM (Eq. 7.1) or DDIM; draw Figure 7.2",
        description=(
            "Sample a checkpoint of train-diffusion (or a shipped one: swissroll, digits) from "
            "white noise x_T, by ancestral sampling (Eq. 7.1) or DDIM, and write the samples as "
            "a PNG (a scatter or an image grid); --figure72 also draws the trajectories from "
            "x_T (top) to x_0 (bottom)."
        ),
    )
    p.add_argument(
        "--checkpoint",
        default="digits",
        help="a checkpoint file, or swissroll / digits (shipped) (default: %(default)s)",
    )
    p.add_argument("--sampler", default="ddpm", help="ddpm or ddim (default: %(default)s)")
    p.add_argument(
        "--steps", type=num.positive_int, help="sampling steps (default: T for DDPM, 50 for DDIM)"
    )
    p.add_argument("--eta", type=num.probability, default=0.0,
                   help="DDIM noise, in [0, 1] (default: 0)")  # fmt: skip
    p.add_argument(
        "--variance",
        default="fixed_small",
        help="DDPM sigma_t^2: fixed_small (posterior) or fixed_large (beta_t)",
    )
    p.add_argument(
        "--spacing",
        default="trailing",
        help="timesteps for fewer steps: trailing, leading, linspace (default: %(default)s)",
    )
    p.add_argument("--n", type=num.positive_int, default=40,
                   help="number of samples (default: %(default)s)")  # fmt: skip
    p.add_argument("--image-size", type=num.positive_int,
                   help="image side (must be the trained size)")  # fmt: skip
    p.add_argument("--seed", type=num.seed, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--out", default="samples.png", help="samples PNG (default: %(default)s)")
    p.add_argument("--figure72", help="also write Figure 7.2 (trajectories) to this PNG")
    p.add_argument("--rows", type=num.int_at_least(2), default=10,
                   help="Figure 7.2 rows, x_T to x_0: >= 2 (default: %(default)s)")  # fmt: skip
    p.add_argument("--columns", type=num.positive_int, default=8,
                   help="Figure 7.2 samples (default: %(default)s)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=sample_cmd)
