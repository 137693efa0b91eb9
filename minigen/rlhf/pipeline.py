"""The RLHF pipeline stage by stage, each reading and writing checkpoints in a run folder.

    pretrain   forum corpus            -> pretrained.safetensors   (fixes the run's RLHFConfig)
    sft        pretrained + demos      -> sft.safetensors
    reward     sft + comparisons       -> reward.safetensors       (held-out pairwise accuracy)
    ppo        sft + reward            -> ppo.safetensors, or ppo_beta0.safetensors (beta = 0)
    dpo        sft + comparisons       -> dpo.safetensors
    eval       every policy            -> results.md, results.json (and ppo_curves.png)

A stage uses the RLHFConfig stored in its input checkpoint, so a run is one world: the same
tokenizer, model shape and seeds throughout. A stage given its own seed (`seed=`, the
commands' --seed) draws its data, batches and samples with it: allowed, to redraw one stage
over fixed inputs (the reward model of another draw on the same SFT model); the stage says
so, its checkpoint records its seed in its config and its inputs' in "input_seeds". BLAS runs
on one thread (small matrices: more threads only contend, the more so on a shared machine).
`run_seeds` runs the whole pipeline once per seed and summarises them (`minigen.rlhf.report`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from minigen import backend
from minigen.backend import blas_threads
from minigen.checkpoint import atomic_write
from minigen.lane import Lane
from minigen.rlhf import io, report
from minigen.rlhf.config import RLHFConfig
from minigen.rlhf.evaluate import evaluate
from minigen.rlhf.ppo import ppo
from minigen.rlhf.rater import Pair, preference_pairs, with_near_misses
from minigen.rlhf.report import plot_ppo
from minigen.rlhf.task import sample_requests
from minigen.rlhf.train import (
    dpo,
    make_tokenizer,
    pretrain,
    reward_accuracy,
    sampled_pairs,
    sft,
    train_reward_model,
)  # fmt: skip
from minigen.runs import refuse_overwrite

__all__ = [
    "blas_threads", "fast_kernels", "rater_pairs", "save_pairs", "load_pairs", "run_pretrain", "run_sft", "run_pairs", "run_reward", "run_ppo", "run_dpo",
    "run_eval", "run_all", "run_seeds", "plot_ppo",
]  # fmt: skip


def rater_pairs(
    cfg: RLHFConfig, sft_model: Any, tokenizer: Any, held_out: bool = False
) -> dict[str, list[Pair]]:
    """The rater's comparisons, on training prompts or on held-out ones (for the accuracy):
    of forum replies in different styles ("forum"), and of samples of the SFT model
    ("sampled"). For training the rater ranks `cfg.rm_group` responses per prompt (every two
    of them compared), and with `cfg.rm_near_misses` also compares each sampled response with a
    copy that has one slip in its answer (`rater.with_near_misses`); the held-out comparisons
    are of two responses, one per prompt."""
    group = 2 if held_out else cfg.rm_group
    seed = cfg.seed + (200 if held_out else 2)
    n_forum, n_sampled = (
        (cfg.held_out_pair_prompts,) * 2
        if held_out
        else (cfg.pair_prompts, cfg.sampled_pair_prompts)
    )
    forum = sample_requests(n_forum, seed, held_out)
    sampled = sample_requests(n_sampled, seed + 1, held_out)
    samples = sampled_pairs(sft_model, tokenizer, sampled, cfg.max_new_tokens, seed, group)
    if cfg.rm_near_misses and not held_out:
        samples = with_near_misses(samples, seed)
    return {"forum": preference_pairs(forum, seed, k=group), "sampled": samples}


def save_pairs(
    path: Path, pairs: dict[str, dict[str, list[Pair]]], seed: int | None = None
) -> None:
    """The comparisons as JSON {split: {kind: [[prompt, chosen, rejected], ...]}}, and the
    seed they were drawn with ("seed")."""
    data: dict[str, Any] = {split: {k: [[p.prompt, p.chosen, p.rejected] for p in v]
                                    for k, v in d.items()} for split, d in pairs.items()}  # fmt: skip
    if seed is not None:
        data["seed"] = seed
    atomic_write(path, json.dumps(data))


def read_pairs(path: Path) -> tuple[dict[str, dict[str, list[Pair]]], int | None]:
    """The comparisons of `save_pairs`, and their seed (None if the file has none)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `minigen rlhf reward` first (it writes the comparisons)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        seed = data.pop("seed", None)
        pairs = {
            split: {k: [Pair(*p) for p in v] for k, v in d.items()} for split, d in data.items()
        }
        return pairs, seed
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a file of comparisons ({e})") from None


def load_pairs(path: Path) -> dict[str, dict[str, list[Pair]]]:
    return read_pairs(path)[0]


def fast_kernels() -> AbstractContextManager[None]:
    """The Numba kernels (`minigen.backend`) for the stage where they pay most, the reward model
    (about 1.7x per step on one core), when Numba is there and the backend is NumPy's; the
    backend as it was afterwards."""
    if backend.current() == "numpy" and "numba" in backend.available():
        return backend.using("numba")
    return nullcontext()


def _say(verbose: bool, *lines: str) -> None:
    if verbose:
        print(*lines, sep="\n", flush=True)


def _from(run: str | Path, base: str, stage: str, force: bool) -> tuple[io.Loaded, Path]:
    """The policy of stage `base`, and the path `stage` writes (refused if it exists, unless
    `force`): how every stage after pretraining starts."""
    loaded = io.load_policy(io.stage_path(run, base))
    path = io.stage_path(run, stage)
    refuse_overwrite(path, force)
    return loaded, path


def _seeded(cfg: RLHFConfig, seed: int | None, stage: str, inputs: dict[str, int | None],
            verbose: bool) -> tuple[RLHFConfig, dict[str, int]]:  # fmt: skip
    """The stage's config (its input's, with `seed` if given) and its inputs' seeds; a seed
    other than an input's is said (it is allowed: see the module docstring)."""
    cfg = cfg if seed is None else cfg.replace(seed=seed)
    known = {k: s for k, s in inputs.items() if s is not None}
    other = {k: s for k, s in known.items() if s != cfg.seed}
    if other:
        _say(verbose, f"note: {stage} runs with seed {cfg.seed}, on "
             + ", ".join(f"{k} of seed {s}" for k, s in other.items()))  # fmt: skip
    return cfg, known


def _final(losses: Sequence[float]) -> float:
    """The loss a stage reports: the mean of its last 50 steps."""
    return sum(losses[-50:]) / len(losses[-50:])


def run_pretrain(
    run: str | Path, cfg: RLHFConfig, force: bool = False, verbose: bool = True,
    progress: bool = True,
) -> dict:  # fmt: skip
    path = io.stage_path(run, "pretrained")
    refuse_overwrite(path, force)
    tok = make_tokenizer()
    t0 = time.perf_counter()
    model, losses = pretrain(cfg, tok, progress=progress)
    io.save_policy(path, model, tok, cfg, "pretrained", {"loss": losses}, {})
    _say(verbose, f"pretrained on {cfg.corpus_size:,} forum exchanges, {cfg.pretrain_steps} steps "
         f"in {time.perf_counter() - t0:.0f}s, final loss {_final(losses):.3f} -> {path}")  # fmt: skip
    return {"loss": losses}


def run_sft(
    run: str | Path, force: bool = False, verbose: bool = True, progress: bool = True,
    seed: int | None = None,
) -> dict:  # fmt: skip
    base, path = _from(run, "pretrained", "sft", force)
    cfg, inputs = _seeded(base.config, seed, "sft", {"pretrained": base.seed}, verbose)
    t0 = time.perf_counter()
    model, losses = sft(cfg, base.model, base.tokenizer, progress=progress)
    io.save_policy(path, model, base.tokenizer, cfg, "sft", {"loss": losses}, inputs)
    _say(verbose, f"fine-tuned on {cfg.sft_size:,} demonstrations in "
         f"{time.perf_counter() - t0:.0f}s, final loss {_final(losses):.3f} -> {path}")  # fmt: skip
    return {"loss": losses}


def run_pairs(
    run: str | Path, verbose: bool = True, seed: int | None = None
) -> dict[str, dict[str, list[Pair]]]:
    """The rater's comparisons (training and held-out) -> pairs.json, which the reward model
    and DPO both read; drawn with `seed` (default: the SFT model's)."""
    base = io.load_policy(io.stage_path(run, "sft"))
    cfg, _ = _seeded(base.config, seed, "the comparisons", {"sft": base.seed}, verbose)
    tok, t0 = base.tokenizer, time.perf_counter()
    pairs = {
        "train": rater_pairs(cfg, base.model, tok),
        "held_out": rater_pairs(cfg, base.model, tok, True),
    }
    save_pairs(Path(run) / "pairs.json", pairs, cfg.seed)
    n = {split: sum(len(v) for v in d.values()) for split, d in pairs.items()}
    _say(verbose, f"{n['train']:,} training and {n['held_out']:,} held-out comparisons in "
         f"{time.perf_counter() - t0:.0f}s -> {Path(run) / 'pairs.json'}")  # fmt: skip
    return pairs


def run_reward(
    run: str | Path,
    force: bool = False,
    verbose: bool = True,
    progress: bool = True,
    reuse_pairs: bool = False,
    seed: int | None = None,
) -> dict:
    """The reward model; the comparisons are made first (or, with `reuse_pairs`, read from
    the run's pairs.json)."""
    base, path = _from(run, "sft", "reward", force)
    if reuse_pairs:
        pairs, pairs_seed = read_pairs(Path(run) / "pairs.json")
    else:
        pairs, pairs_seed = run_pairs(run, verbose, seed), seed if seed is not None else base.seed
    cfg, inputs = _seeded(base.config, seed, "reward", {"sft": base.seed, "pairs": pairs_seed},
                          verbose)  # fmt: skip
    tok, t0 = base.tokenizer, time.perf_counter()
    train_pairs = [p for v in pairs["train"].values() for p in v]
    with fast_kernels():
        rm, losses = train_reward_model(cfg, base.model, tok, train_pairs, progress=progress)
    acc = {f"{split} {kind}": reward_accuracy(rm, tok, v[:1000])
           for split, d in pairs.items() for kind, v in d.items() if v}  # fmt: skip
    held = [p for v in pairs["held_out"].values() for p in v]
    acc["held_out"] = reward_accuracy(rm, tok, held)
    counts = {f"held_out {k}": len(v) for k, v in pairs["held_out"].items()}
    counts["held_out"] = len(held)
    history = {"loss": losses, "accuracy": acc, "comparisons": counts}
    io.save_reward(path, rm, tok, cfg, history, inputs)
    _say(verbose, f"reward model on {len(train_pairs):,} comparisons in {time.perf_counter() - t0:.0f}s: "
         f"held-out pairwise accuracy {acc['held_out']:.1%} ({len(held)} comparisons) -> {path}",
         "  " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()))  # fmt: skip
    return history


def run_ppo(run: str | Path, beta: float | None = None, name: str | None = None,
            iters: int | None = None, force: bool = False, verbose: bool = True, progress: bool = True,
            seed: int | None = None) -> dict:  # fmt: skip
    base = io.load_policy(io.stage_path(run, "sft"))
    reward = io.load_reward(io.stage_path(run, "reward"))
    io.check_same_world(base, reward)
    cfg, inputs = _seeded(base.config, seed, "ppo", {"sft": base.seed, "reward": reward.seed},
                          verbose)  # fmt: skip
    cfg = cfg if iters is None else cfg.replace(ppo_iters=iters)
    beta = cfg.beta if beta is None else beta
    name = name or ("ppo_beta0" if beta == 0 else "ppo")
    path = io.stage_path(run, name)
    refuse_overwrite(path, force)
    t0 = time.perf_counter()
    policy, history = ppo(cfg, base.model, reward.model, base.tokenizer, beta, progress=progress)
    io.save_policy(path, policy, base.tokenizer, cfg, name, {"beta": beta, "iters": history},
                   inputs)  # fmt: skip
    # the log alone too (small: the lesson's curves need no weights)
    atomic_write(Path(run) / f"{name}_history.json", json.dumps({"beta": beta, "iters": history}))
    last = history[-1]
    _say(verbose, f"PPO (beta={beta:g}), {len(history)} iterations in {time.perf_counter() - t0:.0f}s: "
         f"rater {history[0]['rater']:.3f} -> {last['rater']:.3f}, RM {history[0]['rm']:+.2f} -> "
         f"{last['rm']:+.2f}, KL {last['kl']:.2f} -> {path}")  # fmt: skip
    return {"beta": beta, "iters": history}


def run_dpo(
    run: str | Path, force: bool = False, verbose: bool = True, progress: bool = True,
    seed: int | None = None,
) -> dict:  # fmt: skip
    base, path = _from(run, "sft", "dpo", force)
    pairs, pairs_seed = read_pairs(Path(run) / "pairs.json")
    cfg, inputs = _seeded(base.config, seed, "dpo", {"sft": base.seed, "pairs": pairs_seed},
                          verbose)  # fmt: skip
    t0 = time.perf_counter()
    train_pairs = [p for v in pairs["train"].values() for p in v]
    policy, losses = dpo(cfg, base.model, base.tokenizer, train_pairs, progress=progress)
    io.save_policy(path, policy, base.tokenizer, cfg, "dpo", {"loss": losses}, inputs)
    _say(verbose, f"DPO on {len(train_pairs):,} comparisons in {time.perf_counter() - t0:.0f}s, "
         f"final loss {_final(losses):.3f} -> {path}")  # fmt: skip
    return {"loss": losses}


def _dpo_lane(run: str, force: bool, verbose: bool) -> None:
    """DPO in the second lane of `run_all` (its own process: BLAS on one thread, no bar)."""
    with blas_threads(1):
        run_dpo(run, force, verbose, progress=False)


def run_eval(run: str | Path, models: Sequence[str] = ("pretrained", "sft", "ppo", "dpo", "ppo_beta0"),
             force: bool = True, verbose: bool = True, progress: bool = True,
             seed: int | None = None) -> dict:  # fmt: skip
    """The results table of `models` (results.md, results.json: the seed, the machine, the
    reward model's held-out accuracy, every row; `minigen.rlhf.report`), with prompts and
    samples drawn with `seed` (default: the SFT model's)."""
    run = Path(run)
    sft_ck = io.load_policy(io.stage_path(run, "sft"))
    rm_path = io.stage_path(run, "reward")
    reward = io.load_reward(rm_path) if rm_path.exists() else None
    loaded = {}
    for m in models:
        p = io.stage_path(run, m)
        if not p.exists():
            if m in ("ppo_beta0",):  # optional
                continue
            raise FileNotFoundError(
                f"{p} not found: run `minigen rlhf {m.split('_')[0].replace('pretrained', 'pretrain')}` first"
            )
        loaded[m] = io.load_policy(p)
    io.check_same_world(sft_ck, *loaded.values(), *([reward] if reward else []))
    seeds = {k: v.seed for k, v in loaded.items()} | ({"reward": reward.seed} if reward else {})
    cfg, _ = _seeded(sft_ck.config, seed, "eval", seeds, verbose)
    rows = evaluate({k: v.model for k, v in loaded.items()}, sft_ck.model, sft_ck.tokenizer, cfg,
                    reward.model if reward else None, progress=progress)  # fmt: skip
    table = report.write_results(run, rows, cfg.seed, cfg.eval_prompts, cfg.eval_samples,
                                 reward.history if reward else None)  # fmt: skip
    curves = {f.name[: -len("_history.json")]: json.loads(f.read_text())["iters"]
              for f in sorted(run.glob("*_history.json"))}  # fmt: skip
    if curves:
        plot_ppo(curves, run / "ppo_curves.png")
    _say(verbose, table)
    return rows


def run_all(
    run: str | Path,
    cfg: RLHFConfig,
    force: bool = False,
    verbose: bool = True,
    progress: bool = True,
    jobs: int = 2,
) -> dict:
    """Every stage, both PPO runs (beta and 0), then the evaluation.

    With `jobs=2` the stages after the comparisons run in two lanes, one per core: the
    reward model then both PPO runs here, and DPO (which needs the comparisons, not the
    reward model) in a second process (`minigen.lane.Lane`: Ctrl-C stops it, and only this
    process reports it). Every stage seeds itself, so the checkpoints are the same as with
    `jobs=1`, one stage after another."""
    if jobs not in (1, 2):
        raise ValueError(f"run_all: jobs must be 1 or 2, got {jobs}")
    t0 = time.perf_counter()
    run_pretrain(run, cfg, force, verbose, progress)
    run_sft(run, force, verbose, progress)
    run_pairs(run, verbose)  # the comparisons, which the reward model and DPO both read

    def reward_lane() -> None:
        run_reward(run, force, verbose, progress, reuse_pairs=True)
        run_ppo(run, force=force, verbose=verbose, progress=progress)
        run_ppo(run, beta=0.0, force=force, verbose=verbose, progress=progress)

    if jobs == 1:
        reward_lane()
        run_dpo(run, force, verbose, progress)
    else:  # DPO in a fresh interpreter (no forked BLAS state), stopped at once on Ctrl-C
        with Lane(_dpo_lane, str(run), force, verbose) as dpo_lane:
            reward_lane()
            dpo_lane.result()  # re-raises an error of the DPO lane here
    rows = run_eval(run, verbose=verbose, progress=progress)
    _say(verbose, f"the whole pipeline took {time.perf_counter() - t0:.0f}s")
    return rows


def run_seeds(
    out: str | Path,
    cfg: RLHFConfig,
    seeds: Sequence[int],
    force: bool = False,
    verbose: bool = True,
    progress: bool = True,
    jobs: int = 2,
) -> dict:
    """`run_all` once per seed, into <out>/seed<k>/, then the summary over them
    (<out>/summary.md, summary.json: mean ± spread of the reward model's accuracy and of every
    cell of the results table). Every output is checked before the first stage starts."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(
            f"run_seeds: the seeds must be distinct and at least one, got {list(seeds)}"
        )
    out = Path(out)
    refuse_overwrite([out / "summary.md", out / "summary.json"]
                     + [io.stage_path(report.seed_folder(out, k), s) for k in seeds for s in io.STAGES],
                     force)  # fmt: skip
    for k in seeds:
        _say(verbose, f"== seed {k} -> {report.seed_folder(out, k)}")
        run_all(report.seed_folder(out, k), cfg.replace(seed=k), force, verbose, progress, jobs)
    text = report.write_summary(out, seeds)
    _say(verbose, text, f"-> {out / 'summary.md'}")
    return report.summarise_seeds(out, seeds)
