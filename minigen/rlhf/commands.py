"""The `minigen rlhf` command: one sub-command per stage of the pipeline.

    minigen rlhf pretrain --out rlhf-run      # forum corpus -> pretrained GPT
    minigen rlhf sft      --out rlhf-run      # + the rater's demonstrations
    minigen rlhf reward   --out rlhf-run      # + the rater's comparisons -> reward model
    minigen rlhf ppo      --out rlhf-run      # PPO with the KL penalty (--beta 0: without)
    minigen rlhf dpo      --out rlhf-run      # DPO on the same comparisons
    minigen rlhf eval     --out rlhf-run      # the results table on held-out prompts
    minigen rlhf all      --out rlhf-run      # all of the above, both PPO runs
    minigen rlhf all --seeds 0,1,2 --out r    # once per seed (r/seed0 ...), r/summary.md

Every stage takes --seed (default: the seed of its input checkpoint; pretrain and all: 0).

`minigen.cli` registers it with `add_commands`; heavy imports wait until a command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from minigen import cli_args as num

__all__ = ["add_commands"]

_STAGES = {
    "pretrain": "pretrain a GPT on forum exchanges (helpful, wrong, rude, unhelpful replies)",
    "sft": "fine-tune the pretrained GPT on the rater's demonstrations (loss on responses only)",
    "reward": "train a reward model on the rater's comparisons (Bradley-Terry loss)",
    "ppo": "fine-tune the SFT model by PPO against the reward model, with a KL penalty",
    "dpo": "fine-tune the SFT model by DPO on the rater's comparisons",
    "eval": "the results table: rater score, win rate against SFT, KL to SFT",
    "all": "the whole pipeline: pretrain, sft, reward, ppo (beta and 0), dpo, eval",
}


def add_commands(sub: Any) -> None:
    """Add `rlhf` and its stages to an argparse sub-parsers object."""
    # each command declares its own parser and flags: alike in shape only
    p = sub.add_parser(
        "rlhf",
        help="RLHF on a small GPT: pretrain, SFT, reward model, PPO, DPO, eval (§7.1)",
        description=(
            "Reinforcement learning from human feedback (Ouyang et al. 2022) and DPO (Rafailov "
            "et al. 2023) on minigen's GPT, for a synthetic assistant task whose 'human' is a "
            "documented, deterministic rater program. Each stage reads and writes checkpoints "
            "in --out; the full pipeline takes about 20 minutes on two CPU cores, --fast (tiny "
            "model, few steps) under a minute."
        ),
    )
    stages = p.add_subparsers(dest="stage", metavar="STAGE")
    stages.required = True
    for name, text in _STAGES.items():
        s = stages.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        s.add_argument("--out", default="rlhf-run", help="the run folder (default: %(default)s)")
        s.add_argument("--quiet", action="store_true", help="no progress bars (summaries only)")
        if name != "eval":
            s.add_argument("--force", action="store_true", help="overwrite existing checkpoints")
        if name in ("pretrain", "all"):
            s.add_argument("--fast", action="store_true", help="tiny model, few steps (< 1 min)")
        seeds = s.add_mutually_exclusive_group() if name == "all" else s
        seeds.add_argument("--seed", type=num.seed, default=None,
                           help="the seed of the run (default: 0)" if name in ("pretrain", "all") else
                                "the stage's seed: its data, batches and samples (default: its "
                                "input checkpoint's; another is allowed, said, and recorded)")  # fmt: skip
        if name == "all":
            seeds.add_argument("--seeds", type=num.int_list(0), default=None,
                               help="run the pipeline once per seed (e.g. 0,1,2) into OUT/seed<k>/ "
                                    "and write OUT/summary.md, .json: mean ± spread over seeds")  # fmt: skip
            s.add_argument("--jobs", type=int, choices=(1, 2), default=2,
                           help="lanes: 2 trains DPO in a second process beside the reward model "
                                "and PPO (the same checkpoints as 1; default: %(default)s)")  # fmt: skip
        if name == "ppo":
            s.add_argument("--beta", type=num.nonneg_float, default=None,
                           help="KL penalty weight, >= 0 (default: the run's, 0.1); 0 shows reward hacking")  # fmt: skip
            s.add_argument("--name", default=None,
                           help="output checkpoint name (default: ppo, or ppo_beta0 with --beta 0)")  # fmt: skip
            s.add_argument("--iters", type=num.positive_int, default=None,
                           help="PPO iterations (default: the run's)")  # fmt: skip
        if name == "eval":
            s.add_argument("--models", default="pretrained,sft,ppo,dpo,ppo_beta0",
                           help="comma-separated checkpoints to compare (default: %(default)s)")  # fmt: skip
        s.set_defaults(func=run_stage)


def run_stage(args: argparse.Namespace) -> int:
    from minigen.rlhf import pipeline
    from minigen.rlhf.config import RLHFConfig
    from minigen.runs import RunLock

    progress = not args.quiet
    force = getattr(args, "force", False)
    # one run at a time writes into a run folder (a second stops at once, naming the first)
    with RunLock(args.out), pipeline.blas_threads(1):
        seed = args.seed
        if args.stage in ("pretrain", "all"):
            cfg = (RLHFConfig.fast if args.fast else RLHFConfig)(seed=0 if seed is None else seed)
            if args.stage == "pretrain":
                pipeline.run_pretrain(args.out, cfg, force, progress=progress)
            elif args.seeds is not None:
                pipeline.run_seeds(args.out, cfg, _seeds(args.seeds), force, progress=progress,
                                   jobs=args.jobs)  # fmt: skip
            else:
                pipeline.run_all(args.out, cfg, force, progress=progress, jobs=args.jobs)
        elif args.stage == "sft":
            pipeline.run_sft(args.out, force, progress=progress, seed=seed)
        elif args.stage == "reward":
            pipeline.run_reward(args.out, force, progress=progress, seed=seed)
        elif args.stage == "ppo":
            if args.name is not None and not args.name.isidentifier():
                raise ValueError(
                    f"--name must be a plain name (letters, digits, _), got {args.name!r}"
                )
            pipeline.run_ppo(args.out, args.beta, args.name, args.iters, force, progress=progress,
                             seed=seed)  # fmt: skip
        elif args.stage == "dpo":
            pipeline.run_dpo(args.out, force, progress=progress, seed=seed)
        else:
            models = [m.strip() for m in args.models.split(",") if m.strip()]
            if not models:
                raise ValueError("--models names no checkpoint")
            pipeline.run_eval(args.out, models, progress=progress, seed=seed)
    return 0


def _seeds(text: str) -> list[int]:
    """--seeds "0,1,2" (checked integers >= 0 by argparse) as a list, refused if one repeats."""
    seeds = [int(k) for k in text.split(",")]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must not repeat a seed, got {text!r}")
    return seeds
