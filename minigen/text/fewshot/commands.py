"""The few-shot sub-commands of `minigen` (§7.1, Figure 7.1): `fewshot`, `train-icl`, `eval-icl`.

    minigen fewshot --model gpt2-dir --prompts figure-7.1     Figure 7.1 with GPT-2's weights
    minigen fewshot --model icl-gpt --prompts letters-to-digits   the small model shipped here
    minigen train-icl --out icl-gpt                            in-context learning, from scratch
    minigen eval-icl --ckpt icl-gpt --out figures              accuracy against shots, attention

`minigen.cli` registers them with `add_commands`; heavy imports wait until a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from minigen import cli_args as num

__all__ = ["add_commands", "load_model", "fewshot_cmd", "train_icl_cmd", "eval_icl_cmd"]


def add_commands(sub: Any) -> None:
    """Add `fewshot`, `train-icl` and `eval-icl` to an argparse sub-parsers object."""
    # each command declares its own parser and flags: alike in shape only
    p = sub.add_parser(
        "fewshot",
        help="few-shot prediction: a task given by examples in the prompt (Figure 7.1)",
        description=(
            "Build Figure 7.1's prompt 'I: x1, O: y1, ..., I: query, O:' from demonstrations, "
            "let the model continue it greedily up to the separator (shown in bold on a "
            "terminal), and score the answers against the labels. --model is a Hugging Face "
            "GPT-2 directory (config.json, model.safetensors, vocab.json, merges.txt), a hub name "
            "such as gpt2 (with huggingface_hub installed, online), a minigen checkpoint, or a "
            "model shipped with minigen: icl-gpt (the in-context learner; its prompts are "
            "'I: a, O: 3, I: b, O:'), shakespeare-char."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="GPT-2 directory, hub name, checkpoint, or a shipped model: icl-gpt, shakespeare-char",
    )
    p.add_argument("--prompts", default="figure-7.1",
                   help="a JSON prompt file or a shipped one: figure-7.1, letters-to-digits")  # fmt: skip
    p.add_argument("--demo", nargs=2, action="append", metavar=("INPUT", "OUTPUT"),
                   help="a demonstration (repeatable); with --query, replaces --prompts")  # fmt: skip
    p.add_argument("--query", action="append", help="an input to answer (repeatable)")
    p.add_argument("--max-new-tokens", type=num.positive_int, default=16,
                   help="the longest answer, in tokens (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=fewshot_cmd)

    t = sub.add_parser(
        "train-icl",
        help="train a small GPT in which in-context learning emerges",
        description=(
            "Train a 2-block GPT on episodes 'I: x, O: y, ...' whose mapping is drawn at random "
            "per episode (so answers can only be read from the context), then measure accuracy "
            "against the number of shots on held-out mappings and draw the attention maps. "
            "Writes model.safetensors, config.json, tokenizer.json, loss.png, emergence.png, "
            "shots.png and attention.png into --out (about 8 minutes on one CPU core)."
        ),
    )
    t.add_argument("--out", default="icl-gpt", help="output folder (default: %(default)s)")
    t.add_argument("--force", action="store_true", help="overwrite a checkpoint in --out")
    t.add_argument("--max-iters", type=num.positive_int, help="training steps (6000)")
    t.add_argument("--seed", type=num.seed, help="the one seed (1337)")
    t.add_argument("--fast", action="store_true", help="a tiny model, a few steps (a quick check)")
    t.set_defaults(func=train_icl_cmd)

    e = sub.add_parser(
        "eval-icl",
        help="accuracy against shots and attention maps of an in-context learner",
        description="Measure a train-icl checkpoint on held-out mappings (0 to 8 shots, 2-, 3- "
        "and 4-way) and, with --out, write shots.png and attention.png.",
    )
    e.add_argument("--ckpt", default="icl-gpt",
                   help="a train-icl checkpoint folder (default: %(default)s, the shipped one)")  # fmt: skip
    e.add_argument("--episodes", type=num.positive_int, default=1000,
                   help="held-out mappings per task (default: %(default)s)")  # fmt: skip
    e.add_argument("--out", help="folder for the figures")
    e.set_defaults(func=eval_icl_cmd)


def _is_minigen_checkpoint(path: Path) -> bool:
    """A directory whose config.json is minigen's (a "format" key, no Hugging Face
    "model_type"); anything else is read as GPT-2, whose loader says what is wrong."""
    import json

    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "format" in cfg and "model_type" not in cfg


def load_model(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) from a GPT-2 directory or hub name, a minigen checkpoint, or a shipped
    model by its short name (icl-gpt, shakespeare-char)."""
    from minigen.text.gpt_io import load_gpt, resolve_gpt
    from minigen.text.hf.gpt2 import load_gpt2

    path = resolve_gpt(name)
    if path.is_dir() and _is_minigen_checkpoint(path):
        model, tokenizer, _ = load_gpt(path)
        return model, tokenizer
    model, tokenizer = load_gpt2(path if path.exists() else name)
    if tokenizer is None:
        raise FileNotFoundError(f"{path}: no vocab.json / merges.txt beside the weights")
    return model, tokenizer


def fewshot_cmd(args: argparse.Namespace) -> int:
    from minigen.text.fewshot.prompts import (
        FewShotPrompt,
        build_prompt,
        load_prompts,
        predict,
        show,
    )

    if args.query:
        prompts = [FewShotPrompt(tuple(map(tuple, args.demo or [])), q) for q in args.query]
    elif args.demo:
        raise ValueError("--demo needs at least one --query to answer")
    else:
        prompts = load_prompts(args.prompts)
    model, tokenizer = load_model(args.model)
    for p in prompts:  # a prompt the tokenizer cannot write fails before anything runs
        tokenizer.encode(build_prompt(p.demos, p.query))
    graded = []
    for p in prompts:
        pred = predict(model, tokenizer, p.demos, p.query, p.label, max_new_tokens=args.max_new_tokens)  # fmt: skip
        if p.name:
            print(f"# {p.name}")
        show(pred, sys.stdout)
        sys.stdout.flush()
        if pred.correct is not None:
            graded.append(pred.correct)
    if graded:
        print(f"{sum(graded)}/{len(graded)} correct")
    return 0


def _report(model: Any, task: Any, episodes: int, out: Path | None) -> None:
    import numpy as np

    from minigen.text.fewshot.icl import sample_episode, shot_accuracy
    from minigen.text.fewshot.icl_circuit import GROUPS, ablation, query_attention
    from minigen.text.fewshot.icl_plots import (
        ROWS_LEGEND,
        accuracy_table,
        plot_attention,
        plot_shot_accuracy,
    )

    model.eval()
    results = [shot_accuracy(model, task, n, episodes) for n in (2, 3, 4)]
    print(f"accuracy against shots, {episodes:,} held-out mappings per task ({ROWS_LEGEND}):")
    print(accuracy_table(results))
    where = query_attention(model, task)  # (L, H, 4)
    print("where a seen query looks (block.head: " + ", ".join(GROUPS) + "):")
    for i, j in np.ndindex(where.shape[:2]):
        print(f"  {i + 1}.{j + 1}: " + "  ".join(f"{a:.2f}" for a in where[i, j]))
    print(f"greedy accuracy on seen queries {ablation(model, task):.2f}; without the query's")
    for i in range(where.shape[0]):
        lost = [f"{g} {ablation(model, task, i, k):.2f}" for k, g in enumerate(GROUPS)]
        print(f"  attention in block {i + 1} to: " + ", ".join(lost))
    if out is not None:
        episode = sample_episode(task, np.random.default_rng(3), 4, task.pairs)
        plot_shot_accuracy(results, out / "shots.png")
        plot_attention(model, task, episode, out / "attention.png")
        print(f"figures in {out}")


def train_icl_cmd(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm.auto import tqdm

    from minigen.text.fewshot.icl import ICLTask, icl_recipe, train_icl
    from minigen.text.fewshot.icl_plots import plot_emergence

    config, tc = icl_recipe(fast=args.fast)
    changes = {k: v for k, v in (("max_iters", args.max_iters), ("seed", args.seed)) if v is not None}  # fmt: skip
    tc = replace(tc, **changes)
    out = Path(args.out)
    print(f"GPT of {config.num_params():,} parameters, {tc.max_iters} steps of {tc.batch_size} episodes")  # fmt: skip

    def progress(trainer: Any, point: dict[str, Any]) -> None:
        acc = ", ".join(f"{k} {v[0]:.2f} / {v[1]:.2f}" for k, v in point.items() if k != "step")
        tqdm.write(f"step {point['step']}: accuracy at 1 / 8 shots: {acc}")

    trainer = train_icl(out, config, tc, force=args.force, callback=progress)
    print(f"trained in {trainer.meta['train_seconds']:.0f} s")
    plot_emergence(trainer.meta["curve"], out / "emergence.png")
    _report(trainer.model, ICLTask(), 200 if args.fast else 1000, out)
    return 0


def eval_icl_cmd(args: argparse.Namespace) -> int:
    from minigen.text.fewshot.icl import ICLTask
    from minigen.text.gpt_io import load_gpt

    model, tokenizer, ck = load_gpt(args.ckpt)
    task = ICLTask(**{**ck.meta.get("task", {}), "ways": tuple(ck.meta.get("task", {}).get("ways", (2, 3, 4)))})  # fmt: skip
    if tokenizer != task.tokenizer():
        raise ValueError(
            f"{args.ckpt}: not a train-icl checkpoint (its tokenizer is not the task's)"
        )
    out = Path(args.out) if args.out else None
    _report(model, task, args.episodes, out)
    return 0
