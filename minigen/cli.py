"""The `minigen` command line: one entry point, one sub-command per job.

    minigen demo              a short tour (trains small models, writes figures)
    minigen train-gpt         train a GPT on a corpus (§7.1)
    minigen generate          sample text from a trained GPT (§7.1)
    minigen fewshot           few-shot prediction from examples in the prompt (Figure 7.1)
    minigen train-icl         train a small GPT in which in-context learning emerges (§7.1)
    minigen eval-icl          its accuracy against shots, and attention maps
    minigen rlhf STAGE        RLHF and DPO on a small GPT (§7.1)

    minigen train-diffusion   train a denoiser on 2-D toys or 8x8 digits (§7.2)
    minigen sample-diffusion  sample a trained denoiser by DDPM (Eq. 7.1) or DDIM; Figure 7.2

    minigen text2im           scenes for a caption: CLIP or classifier-free guidance (§7.2)
    minigen train-text2im     train the scene denoisers text2im uses

Every sub-command prints one line `minigen: error: ...` and exits with status 1
when its input is wrong (a missing file, a bad shape, a config that does not
fit) or memory runs out; set MINIGEN_DEBUG=1 to see the full traceback instead. A number outside
its flag's range (`minigen.cli_args`) is refused before anything runs, in
argparse's line naming the flag, with status 2. Ctrl-C ends in one line
`minigen: interrupted`, status 130.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from minigen import __version__, backend, mpi
from minigen import cli_args as num

__all__ = ["main", "build_parser", "TRAINING_COMMANDS"]

# the commands that train a model: each takes --backend (default "auto", `backend.choose`) and
# says once, at its start, what it runs on
TRAINING_COMMANDS = ("train-gpt", "train-icl", "train-diffusion", "train-text2im")


def _cmd_demo(args: argparse.Namespace) -> int:
    from minigen import demo

    demo.run(args.out, fast=args.fast, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minigen",
        description=(
            "Chapter 7 (Synthesis) of The Little Book of Deep Learning, from scratch in NumPy: "
            "GPT text generation, few-shot prediction, RLHF, denoising diffusion and "
            "text-conditioned image synthesis."
        ),
    )
    parser.add_argument("--version", action="version", version=f"minigen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "demo",
        help="a short tour: trains small models and writes their figures",
        description=(
            "Train a small MLP on two interleaved spirals with minigen's autograd and write its "
            "decision boundary as a PNG (more steps join as the chapter's parts land)."
        ),
    )
    p.add_argument("--out", default="minigen-demo", help="output folder (default: %(default)s)")
    p.add_argument("--fast", action="store_true", help="fewer training steps (for a quick check)")
    p.add_argument("--seed", type=num.seed, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(func=_cmd_demo)

    # -- §7.1 text generation: train-gpt, generate (minigen/text/commands.py) -----------------
    from minigen.text.commands import add_commands as add_text_commands

    add_text_commands(sub)
    # -- end of §7.1 ---------------------------------------------------------------------------
    # -- §7.1 RLHF: rlhf pretrain|sft|reward|ppo|dpo|eval|all (minigen/rlhf/commands.py) ------
    from minigen.rlhf.commands import add_commands as add_rlhf_commands

    add_rlhf_commands(sub)
    # -- end of RLHF ---------------------------------------------------------------------------

    # -- §7.2 image generation: train-diffusion, sample-diffusion (minigen/diffusion/commands.py) --
    from minigen.diffusion.commands import add_commands as add_diffusion_commands

    add_diffusion_commands(sub)
    # -- end of §7.2 ---------------------------------------------------------------------------

    # -- §7.1 few-shot: fewshot, train-icl, eval-icl (minigen/text/fewshot/commands.py) -------
    from minigen.text.fewshot.commands import add_commands as add_fewshot_commands

    add_fewshot_commands(sub)
    # -- end of §7.1 few-shot ------------------------------------------------------------------

    # -- §7.2 text-to-image: text2im, train-text2im (minigen/synthesis/commands.py) ------------
    from minigen.synthesis.commands import add_commands as add_text2im_commands

    add_text2im_commands(sub)
    # -- end of §7.2 text-to-image -------------------------------------------------------------

    for name in TRAINING_COMMANDS:
        sub.choices[name].add_argument(
            "--backend", choices=("auto", *backend.BACKENDS), default="auto",
            help="numpy, numba or cupy; auto: MINIGEN_BACKEND if set, else numba where its "
            "kernels run (the faster on CPUs, measured: benchmarks/README.md) (default: auto)",
        )  # fmt: skip
    return parser


@contextlib.contextmanager
def _training_backend(args: argparse.Namespace) -> Iterator[None]:
    """For a training command, its --backend for the length of the command (the one before
    afterwards), said once at the start (by rank 0 alone under MPI; not with --quiet); for
    another command, nothing."""
    requested = getattr(args, "backend", None)
    if requested is None:
        yield
        return
    with backend.using(backend.resolve(requested)):
        comm = mpi.world()  # None outside an MPI job of several ranks
        if (comm is None or comm.Get_rank() == 0) and not getattr(args, "quiet", False):
            how = " (auto)" if requested == "auto" else ""
            print(f"minigen: {backend.describe()}{how}", flush=True)
        yield


def _interrupts_not_ignored(hook: Any) -> Any:
    """An unraisable-exception hook that does not let Ctrl-C be lost: a KeyboardInterrupt that
    lands where Python ignores exceptions (a ctypes callback such as Numba's compiler's, a
    __del__) would print a traceback and let the command run on; it is raised again instead,
    in the main thread, a moment later (once out of the place that ignores it)."""

    def on_unraisable(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            again = threading.Timer(0.05, _thread.interrupt_main)
            again.daemon = True
            again.start()
        else:
            hook(unraisable)

    return on_unraisable


def main(argv: Sequence[str] | None = None) -> int:
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _interrupts_not_ignored(previous_hook)
    try:
        args = build_parser().parse_args(argv)  # a bad flag: argparse's line, exit status 2
        with _training_backend(args):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:  # worker processes ignore Ctrl-C: this is the one report
        # an interrupt that went through exec(<string>) (SciPy's imports run some) leaves
        # CPython marked to kill itself with SIGINT at exit, even once caught (exit status -2,
        # not 130); running a string resets the mark
        exec("pass")
        print("minigen: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, RuntimeError, MemoryError) as e:
        if os.environ.get("MINIGEN_DEBUG"):
            raise
        why = str(e)
        if isinstance(e, MemoryError):
            why = f"out of memory ({why})" if why else "out of memory"
        print(f"minigen: error: {why}", file=sys.stderr)
        return 1
    finally:
        sys.unraisablehook = previous_hook


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
