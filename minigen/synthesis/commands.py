"""The text-to-image sub-commands of `minigen` (§7.2): `text2im` and `train-text2im`.

    minigen text2im "a red circle above a blue square" --method cfg --scale 3 --out t2i.png
    minigen train-text2im --model scenes --out scenes.safetensors

`minigen.cli` registers them with `add_commands`; bad input (a caption with unknown words, an
empty caption, an image size the models were not trained for, an unknown method) raises
ValueError, which the CLI prints as one line before exiting with status 1.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from minigen import cli_args as num
from minigen.backend import blas_threads
from minigen.diffusion import LOSS_LABEL, PREDICTIONS
from minigen.parallel import default_workers
from minigen.plotting import plot_losses, save_figure
from minigen.run_state import resumable_run
from minigen.runs import RunLock, refuse_overwrite
from minigen.synthesis.checker import score_batch
from minigen.synthesis.clip_train import save_clip, train_clip
from minigen.synthesis.sampling import DEFAULT_SCALE, Text2Im, check_request, plot_samples
from minigen.synthesis.text2im import train_text2im
from minigen.synthesis.text2im_config import KINDS, SCENE_RANGE, Text2ImConfig
from minigen.synthesis.text2im_io import save_text2im

__all__ = ["add_commands", "text2im_cmd", "train_cmd"]


def text2im_cmd(args: argparse.Namespace) -> int:
    caption = args.caption
    check_request(caption, args.n, args.method, args.sampler, args.image_size)  # before loading
    refuse_overwrite(args.out, args.force)
    t2i = Text2Im(clip=args.clip, scenes=args.scenes, cond=args.cond)
    scale = DEFAULT_SCALE[args.method] if args.scale is None else args.scale
    try:
        x = t2i.sample(caption, args.n, method=args.method, scale=scale, sampler=args.sampler,
                       steps=args.steps, seed=args.seed, progress=not args.quiet)  # fmt: skip
    except FloatingPointError as e:  # a NaN in a sample: the sampler stopped
        raise RuntimeError(str(e)) from None
    scores = score_batch(x, [caption] * len(x), value_range=SCENE_RANGE)
    how = {"clip": f"CLIP guidance, s = {scale:g}", "cfg": f"classifier-free guidance, w = {scale:g}",
           "none": "unguided"}[args.method]  # fmt: skip
    title = f"{how}; {args.sampler.upper()}; seed {args.seed}; mean score {scores.mean():.2f}"
    path = save_figure(plot_samples(x, caption, title, scores, ncols=min(8, args.n)), args.out)
    print(
        f"{args.n} images for {caption!r} ({how}, {args.sampler.upper()}) -> {path}\n"
        f"checker: {scores.mean():.0%} of the caption's properties hold on average; "
        f"{int((scores == 1).sum())}/{args.n} images satisfy all of them"
    )
    return 0


# the flag of each Text2ImConfig field that --resume compares ("--" + the name otherwise)
_FLAGS = {"kind": "--model", "base_channels": "--channels", "channel_mults": "--mults"}


def train_cmd(args: argparse.Namespace) -> int:
    if args.model not in ("clip", *KINDS):
        raise ValueError(
            f"unknown model kind {args.model!r}; choose one of clip, {', '.join(KINDS)}"
        )
    out = args.out or f"text2im_{args.model}.safetensors"
    loss_png = args.loss_plot or os.path.splitext(out)[0] + "_loss.png"
    for path in (out, loss_png):
        refuse_overwrite(path, args.force)
    clip = args.model == "clip"
    if args.steps is None:
        args.steps = 1000 if clip else 2000
    if args.batch_size is None:
        args.batch_size = 128 if clip else 64
    if clip:
        if args.resume:
            raise ValueError("--resume: train-text2im resumes scenes and cond runs, not clip")
        with RunLock(out):  # one writer; its folder writable before the first step
            return _train_clip(args, out, loss_png)
    cfg = Text2ImConfig(
        kind=args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        base_channels=args.channels, channel_mults=tuple(int(c) for c in args.mults.split(",")),
        schedule=args.schedule, seed=args.seed, n_train=args.n_train,
        ema_decay=args.ema_decay, p_uncond=args.p_uncond, text_init=args.text_init,
        init=args.init, heads=args.heads, snr_gamma=args.snr_gamma, shards=args.shards,
        prediction=args.prediction, mirror_pairs=args.mirror_pairs, cell_weight=args.cell_weight,
        attn_levels=tuple(int(a) for a in args.attn_levels.split(",") if a.strip()),
    )  # fmt: skip
    with resumable_run(out, cfg, _FLAGS, args.resume, args.force) as (run_dir, resume, cfg):
        try:
            workers = default_workers(cfg.shards) if args.workers is None else args.workers
            result = train_text2im(cfg, progress=not args.quiet, workers=workers, run_dir=run_dir,
                                   checkpoint_interval=args.checkpoint_interval, resume=resume)  # fmt: skip
        except FloatingPointError as e:  # a NaN: the weights before it are kept in OUT.run/
            raise RuntimeError(str(e)) from None
        path = save_text2im(result, out, half=args.half)
        title = f"L_simple, text2im {args.model}"
        save_figure(plot_losses(result.losses, title, LOSS_LABEL, log_scale=True), loss_png)
    final = float(np.mean(result.losses[-100:]))
    print(
        f"trained {cfg.steps} steps in {result.seconds:.0f}s ({result.cpu_seconds:.0f}s of CPU),"
        f" final loss {final:.4f} -> {path}\nloss curve -> {loss_png}"
    )
    return 0


def _train_clip(args: argparse.Namespace, out: str, loss_png: str) -> int:
    """`train-text2im --model clip`: the noise-aware CLIP of `minigen.synthesis.clip_train`
    (--steps, --batch-size, --lr, --n-train and --seed apply; BLAS on one thread)."""
    start, cpu = time.perf_counter(), time.process_time()
    with blas_threads(1):
        result = train_clip(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            n_train=args.n_train, seed=args.seed, progress=not args.quiet)  # fmt: skip
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    path = save_clip(result.model, out, {**result.settings, "seconds": round(seconds, 1)})
    title, ylabel = "contrastive loss, CLIP", "cross-entropy (nats)"
    fig = plot_losses(result.losses, title, ylabel, log_scale=True)
    save_figure(fig, loss_png)
    print(
        f"trained {args.steps} steps in {seconds:.0f}s ({cpu:.0f}s of CPU), last 50 steps: loss "
        f"{np.mean(result.losses[-50:]):.3f}, in-batch accuracy "
        f"{np.mean(result.accuracies[-50:]):.2f} -> {path}\nloss curve -> {loss_png}"
    )
    return 0


def add_commands(sub: Any) -> None:
    """Add `text2im` and `train-text2im` to an argparse sub-parsers object."""
    # each command declares its own parser and flags: alike in shape only
    p = sub.add_parser(
        "text2im",
        help="generate 16x16 scenes for a caption (§7.2): CLIP or classifier-free guidance",
        description=(
            "Sample scenes of coloured shapes for a caption such as 'a red circle above a blue "
            "square' with the shipped models (or your own), guided by a noise-aware CLIP (Nichol "
            "et al. 2021) or classifier-free (Ho & Salimans 2022), or unguided; write them as a "
            "PNG grid, each image labelled with the checker's caption-satisfaction score. "
            "Words: a, and, left, right, of, above, below, colours red green blue yellow magenta "
            "cyan, shapes square circle triangle cross."
        ),
    )
    p.add_argument("caption", help='e.g. "a red circle above a blue square"')
    p.add_argument("--method", default="cfg", help="clip, cfg or none (default: %(default)s)")
    p.add_argument("--scale", type=num.nonneg_float,
                   help="guidance scale s or w, >= 0 (cfg: 0 unconditional, 1 conditional, more "
                   "follows the caption harder) (default: "
                   + ", ".join(f"{m} {v:g}" for m, v in DEFAULT_SCALE.items()) + ")")  # fmt: skip
    p.add_argument("--sampler", default="ddpm", help="ddpm or ddim (default: %(default)s)")
    p.add_argument("--steps", type=num.positive_int,
                   help="sampling steps (default: 100 DDPM, 50 DDIM)")  # fmt: skip
    p.add_argument("--seed", type=num.seed, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--n", type=num.positive_int, default=16,
                   help="number of images (default: %(default)s)")  # fmt: skip
    p.add_argument("--image-size", type=num.positive_int,
                   help="image side (the models know 16 only)")  # fmt: skip
    p.add_argument("--out", default="text2im.png", help="PNG grid (default: %(default)s)")
    p.add_argument("--clip", default="clip", help="CLIP checkpoint (default: shipped)")
    p.add_argument("--scenes", default="scenes", help="unconditional model (default: shipped)")
    p.add_argument("--cond", default="cond", help="conditional model (default: shipped)")
    p.add_argument("--force", action="store_true", help="overwrite an existing PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=text2im_cmd)

    p = sub.add_parser(
        "train-text2im",
        help="train a scene denoiser for text2im: unconditional or caption-conditioned",
        description=(
            "Train the noise-aware CLIP (--model clip, the guide of CLIP guidance), the "
            "unconditional scene model (--model scenes, the denoiser it guides) or the "
            "caption-conditioned one (--model cond, for classifier-free guidance: the caption read "
            "by cross-attention and FiLM, dropped 10%% of the time) on the training scenes; "
            "writes a checkpoint and a loss curve. benchmarks/train_text2im.sh trains all three "
            "on two cores."
        ),
    )
    p.add_argument("--model", default="scenes", help="clip, scenes or cond (default: %(default)s)")
    p.add_argument("--steps", type=num.positive_int, help="default: 2000 (clip: 1000)")
    p.add_argument("--batch-size", type=num.positive_int, help="default: 64 (clip: 128)")
    p.add_argument("--lr", type=num.positive_float, default=2e-3,
                   help="peak learning rate (default: 2e-3)")  # fmt: skip
    p.add_argument("--channels", type=num.positive_int, default=16,
                   help="U-Net base width (default: 16)")  # fmt: skip
    p.add_argument("--mults", type=num.int_list(1), default="1,2,2",
                   help="U-Net width per level (default: 1,2,2)")  # fmt: skip
    p.add_argument("--schedule", default="linear", help="noise schedule (must be CLIP's)")
    p.add_argument("--ema-decay", type=num.unit_interval_open, default=0.999,
                   help="EMA of the weights, in [0, 1) (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--snr-gamma", type=num.positive_float,
        help="weigh the loss so that the error on x_0 counts min(SNR, gamma) (eps prediction) "
        "or 1 + min(SNR, gamma) (v prediction) (default: none)",
    )  # fmt: skip
    p.add_argument("--prediction", choices=PREDICTIONS, default="eps",
                   help="cond: the U-Net predicts the noise eps or v (default: eps)")  # fmt: skip
    p.add_argument("--p-uncond", type=num.probability, default=0.1,
                   help="cond: caption dropout probability, in [0, 1] (0.1)")  # fmt: skip
    p.add_argument("--mirror-pairs", action="store_true",
                   help="cond: half of each batch the left-right mirrors of the other half, "
                   "'left' and 'right' swapped in their captions")  # fmt: skip
    p.add_argument("--cell-weight", type=num.nonneg_float, default=0.0,
                   help="cond: > 0 gives the U-Net the caption's cell map (what the caption puts "
                   "in each cell of the grid; the caption encoder then reads both ways), the "
                   "cross-entropy of where its tokens put their objects weighted so (default: 0)")  # fmt: skip
    p.add_argument("--heads", type=num.positive_int, default=4,
                   help="cond: cross-attention heads (4)")  # fmt: skip
    p.add_argument("--attn-levels", type=num.int_list(0, empty_ok=True), default="1,2",
                   help="cond: U-Net levels with cross-attention, 0 = 16x16; '' for none (1,2)")  # fmt: skip
    p.add_argument("--text-init", help="cond: start the caption encoder from this CLIP (or clip)")
    p.add_argument("--init", help="cond: continue from this conditional checkpoint (or cond)")
    p.add_argument("--half", action="store_true", help="cond: store the weights as float16")
    p.add_argument(
        "--shards", type=num.positive_int, default=1,
        help="scenes, cond: each batch's gradient summed over this many shards (default: 1)",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=num.positive_int,
        help="processes computing the shards, 1 .. shards; the weights do not depend on it "
        "(default: shards, at most the number of CPUs)",
    )  # fmt: skip
    p.add_argument("--n-train", type=num.positive_int, default=20000,
                   help="training scenes (default: 20000)")  # fmt: skip
    num.run_flags(p, "text2im_MODEL.safetensors", interval=500, only="scenes, cond: ")
    p.set_defaults(func=train_cmd)
