"""The §7.1 sub-commands of `minigen`: `train-gpt` and `generate`.

    minigen train-gpt --corpus shakespeare --out shakespeare-gpt
    minigen generate --ckpt shakespeare-gpt --prompt "ROMEO:" --temperature 0.8 --top-k 40
    minigen generate --prompt "ROMEO:"      the shipped shakespeare-char, no training needed

`minigen.cli` registers them with `add_commands`; heavy imports wait until a command runs.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from typing import Any

from minigen import cli_args as num
from minigen.text.gpt_io import SHIPPED

__all__ = ["add_commands", "train_gpt", "generate_cmd"]

_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")  # CLI overrides


def add_commands(sub: Any) -> None:
    """Add `train-gpt` and `generate` to an argparse sub-parsers object."""
    # each command declares its own parser and flags: alike in shape only
    p = sub.add_parser(
        "train-gpt",
        help="train a GPT on a corpus, checkpointing as it goes",
        description=(
            "Train a GPT from scratch (minigen's autograd, AdamW, warm-up + cosine decay) on a "
            "corpus tokenized by characters or by byte-level BPE. The defaults are nanoGPT's CPU "
            "recipe (4 blocks, 4 heads, 128-dim tokens, context 64, batch 12, 2000 steps). "
            "Writes model.safetensors, config.json, tokenizer.json, optimizer state and loss.png "
            "into --out; refuses a folder that holds a checkpoint unless --resume or --force."
        ),
    )
    p.add_argument("--corpus", default="stdlib",
                   help="stdlib (Python's own sources, offline), shakespeare, or a text file")  # fmt: skip
    p.add_argument(
        "--tokenizer", choices=("char", "bpe"), help="characters or byte-level BPE (char)"
    )
    p.add_argument("--vocab-size", type=num.int_at_least(257),
                   help="BPE vocabulary size, >= 257: the 256 bytes and <|endoftext|> (512)")  # fmt: skip
    p.add_argument("--out", default="minigen-gpt", help="checkpoint folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--force", action="store_true", help="overwrite a checkpoint in --out")
    p.add_argument("--preset", help="model preset: small, gpt2, ... (small)")
    model_help = {
        "n_layer": "attention blocks",
        "n_head": "heads per block",
        "n_embd": "token dimension",
        "block_size": "context length",
        "dropout": "dropout probability, in [0, 1)",
    }
    for name, text in model_help.items():
        kind = num.unit_interval_open if name == "dropout" else num.positive_int
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=text + " (the preset's)")
    p.add_argument("--no-bias", action="store_true", help="no biases in linear and norm layers")
    train = {
        "max_iters": (num.positive_int, "training steps (2000)"),
        "batch_size": (num.positive_int, "blocks per step (12)"),
        "learning_rate": (num.positive_float, "peak learning rate (1e-3)"),
        "min_lr": (num.nonneg_float, "learning rate at the end of the cosine decay (1e-4)"),
        "warmup_iters": (num.nonneg_int, "steps of linear warm-up, 0 for none (100)"),
        "lr_decay_iters": (num.positive_int, "steps of the cosine decay (max-iters)"),
        "weight_decay": (num.nonneg_float, "AdamW weight decay on matrices and embeddings (0.1)"),
        "beta2": (num.unit_interval_open, "AdamW beta2, in [0, 1) (0.99)"),
        "grad_clip": (num.nonneg_float, "maximum gradient norm, 0 for none (1.0)"),
        "eval_interval": (num.nonneg_int, "steps between loss estimates, 0: at the end only (250)"),
        "eval_iters": (num.positive_int, "batches per loss estimate (20)"),
        "checkpoint_interval": (num.nonneg_int, "steps between saves, 0: at the end only (500)"),
        "seed": (num.seed, "the one seed: weights, batches, dropout (1337)"),
        "shards": (num.positive_int, "each step's gradient summed over this many shards (1)"),
    }
    for name, (kind, text) in train.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    p.add_argument(
        "--workers", type=num.positive_int,
        help="processes computing the shards, 1 .. shards; the losses do not depend on it "
        "(default: shards, at most the number of CPUs)",
    )  # fmt: skip
    p.add_argument("--sample", type=num.nonneg_int, default=300,
                   help="tokens to sample at the end, 0 for none (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=train_gpt, train_args=tuple(train))

    g = sub.add_parser(
        "generate",
        help="sample text from a trained GPT",
        description=(
            "Continue a prompt with a GPT checkpoint, streaming tokens to the terminal: greedy "
            "(--temperature 0), temperature, top-k and nucleus (top-p) sampling, stop strings, "
            "with a KV cache (--no-cache to recompute the whole context at each token)."
        ),
    )
    g.add_argument("--ckpt", default="shakespeare-char",
                   help="a checkpoint folder, or a shipped model: " + ", ".join(SHIPPED)
                   + " (default: %(default)s, a character-level GPT of tiny Shakespeare)")  # fmt: skip
    g.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    g.add_argument("--max-new-tokens", type=num.positive_int, default=300,
                   help="tokens to sample (default: %(default)s)")  # fmt: skip
    g.add_argument("--temperature", type=num.nonneg_float, default=0.8,
                   help="softmax temperature, >= 0; 0 for greedy decoding (default: %(default)s)")  # fmt: skip
    g.add_argument("--top-k", type=num.positive_int, default=None,
                   help="sample among the k likeliest tokens (default: all)")  # fmt: skip
    g.add_argument("--top-p", type=num.top_p, default=None,
                   help="nucleus sampling: the likeliest tokens of total probability p, in (0, 1]")  # fmt: skip
    g.add_argument("--stop", action="append", default=[], help="stop before this text (repeatable)")
    g.add_argument("--num-samples", type=num.positive_int, default=1,
                   help="samples to draw (default: %(default)s)")  # fmt: skip
    g.add_argument("--seed", type=num.seed, default=0, help="random seed (default: %(default)s)")
    g.add_argument("--no-cache", action="store_true", help="do not use the KV cache")
    g.set_defaults(func=generate_cmd)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


def train_gpt(args: argparse.Namespace) -> int:
    import numpy as np

    from minigen import mpi
    from minigen.parallel import default_workers
    from minigen.text.corpus import load_corpus, train_val_split
    from minigen.text.gpt import preset
    from minigen.text.gpt_io import check_writable, load_checkpoint, load_gpt
    from minigen.text.sampling import generate
    from minigen.text.tokenizers import ByteBPETokenizer, CharTokenizer
    from minigen.text.train import TrainConfig, Trainer

    if args.resume and args.force:
        raise ValueError("--resume and --force contradict each other: choose one")

    def workers(train_config: dict) -> int:
        shards = int(train_config.get("shards", 1))
        return default_workers(shards) if args.workers is None else args.workers

    kind = "char" if args.tokenizer is None else args.tokenizer
    vocab_size = 512 if args.vocab_size is None else args.vocab_size
    name = "small" if args.preset is None else args.preset
    given = {n: getattr(args, n) for n in _MODEL_ARGS if getattr(args, n) is not None}
    train_given = {n: getattr(args, n) for n in args.train_args if getattr(args, n) is not None}
    comm = mpi.world()  # under mpiexec -n N: N shards, one per rank; rank 0 alone prints
    root = mpi.quiet_unless_root(comm)
    if comm is not None and not args.resume:
        train_given.setdefault("shards", comm.Get_size())
    if not args.resume:  # a preset or a shape that cannot be fails before the corpus is read
        preset(name, **given)
        TrainConfig(**train_given)
    text = load_corpus(args.corpus)
    if args.resume:
        ck = load_checkpoint(args.out)
        model_cfg = ck.config.to_dict()
        for key, value in given.items():
            if model_cfg[key] != value:
                raise ValueError(
                    f"--{key.replace('_', '-')} {value} does not match the checkpoint in "
                    f"{args.out}, which has {key}={model_cfg[key]}"
                )
        if ck.meta.get("corpus_md5") not in (None, _md5(text)):
            raise ValueError(
                f"the corpus {args.corpus!r} is not the one the checkpoint in {args.out} was "
                f"trained on ({ck.meta.get('corpus')!r}, md5 {ck.meta['corpus_md5']})"
            )
        _check_resume(args, ck, train_given)
        tokenizer = ck.tokenizer
    else:
        if not args.force:
            check_writable(args.out)  # before the slow part: tokenizing
        if kind == "char":
            tokenizer = CharTokenizer.from_text(text)
        else:
            tokenizer = ByteBPETokenizer.train(text, vocab_size, progress=True)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    train_ids, val_ids = train_val_split(ids)
    if args.resume:
        trainer = Trainer.resume(
            args.out, train_ids, val_ids, train_given.get("max_iters"), workers(ck.train_config)
        )
    else:
        config = preset(name, vocab_size=tokenizer.vocab_size, bias=not args.no_bias, **given)
        meta = {"corpus": str(args.corpus), "corpus_md5": _md5(text), "tokenizer": kind,
                "preset": name, **({"vocab_size": vocab_size} if kind == "bpe" else {})}  # fmt: skip
        tc = TrainConfig(**train_given)
        trainer = Trainer(
            config, tc, tokenizer, train_ids, val_ids, args.out, args.force, meta,
            workers({"shards": tc.shards}),
        )  # fmt: skip
    n = trainer.config.num_params()
    print(
        f"GPT of {n:,} parameters, {len(train_ids):,} training tokens, vocabulary {tokenizer.vocab_size}"
    )
    trainer.run()
    print(f"checkpoint and loss curve in {args.out}; sample it: minigen generate --ckpt {args.out}")
    if args.sample and root:
        model, tok, _ = load_gpt(args.out)
        print("--- a sample (temperature 0.8, top-k 40) ---")
        start = "\n" if "\n" in text else text[0]
        generate(model, tok, start, args.sample, 0.8, 40, on_text=_print)
        print()
    return 0


def _check_resume(args: argparse.Namespace, ck: Any, train_given: dict[str, Any]) -> None:
    """Refuse, in one line naming them and both values, the flags of a `--resume` whose values
    differ from the checkpoint's (the same command that started a run continues it); only
    --max-iters may change, and --workers (which does not change the losses)."""
    from minigen.text.gpt import PRESETS
    from minigen.text.tokenizers import CharTokenizer

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    stored = ck.train_config
    if stored is None and set(train_given) - {"max_iters"}:
        raise ValueError(
            f"the checkpoint in {args.out} records no training settings; with --resume only "
            f"--max-iters may be given, got {sorted(map(flag, set(train_given) - {'max_iters'}))}"
        )
    differ = [
        f"{flag(k)} {v} (the checkpoint has {stored.get(k)})"
        for k, v in train_given.items()
        if k != "max_iters" and (k not in stored or stored[k] != v)
    ]
    meta, model_cfg = ck.meta, ck.config.to_dict()
    kind = meta.get("tokenizer") or ("char" if isinstance(ck.tokenizer, CharTokenizer) else "bpe")
    if args.tokenizer is not None and args.tokenizer != kind:
        differ.append(f"--tokenizer {args.tokenizer} (the checkpoint has {kind})")
    if args.vocab_size is not None and kind == "bpe":  # a char tokenizer ignores it
        vocab = meta.get("vocab_size", ck.tokenizer.vocab_size)
        if args.vocab_size != vocab:
            differ.append(f"--vocab-size {args.vocab_size} (the checkpoint has {vocab})")
    if args.no_bias and model_cfg.get("bias", True):
        differ.append("--no-bias (the checkpoint has biases)")
    if args.preset is not None:
        if "preset" in meta:
            if args.preset != meta["preset"]:
                differ.append(f"--preset {args.preset} (the checkpoint has {meta['preset']})")
        elif args.preset not in PRESETS:
            differ.append(
                f"--preset {args.preset} (not a preset; choose one of {', '.join(PRESETS)})"
            )
        else:  # not recorded: the preset's shape, where no flag sets it, must be the checkpoint's
            shape = PRESETS[args.preset].to_dict()
            fixed = [k for k in _MODEL_ARGS if getattr(args, k) is None]
            if any(shape[k] != model_cfg[k] for k in fixed):
                differ.append(
                    f"--preset {args.preset} (the checkpoint's shape is not the preset's)"
                )
    if differ:
        raise ValueError(
            f"--resume continues the checkpoint in {args.out} with its settings (only --max-iters "
            f"may change); these differ: {', '.join(differ)}"
        )


def _print(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def generate_cmd(args: argparse.Namespace) -> int:
    import numpy as np

    from minigen import rng
    from minigen.text.gpt_io import load_gpt
    from minigen.text.sampling import generate

    model, tokenizer, _ = load_gpt(args.ckpt)
    tokenizer.encode(args.prompt)  # a character the tokenizer does not know: fail first
    rng.manual_seed(args.seed)
    gen = np.random.default_rng(args.seed)
    for i in range(args.num_samples):
        if i:
            print("\n---")
        _print(args.prompt)
        generate(
            model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
            args.top_p, args.stop, not args.no_cache, gen, on_text=_print,
        )  # fmt: skip
    print()
    return 0
