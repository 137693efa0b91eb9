"""The RLHF pipeline stage by stage, each reading and writing checkpoints in a run folder.

    pretrain   forum corpus            -> pretrained.safetensors   (fixes the run's RLHFConfig)
    sft        pretrained + demos      -> sft.safetensors
    reward     sft + comparisons       -> reward.safetensors       (held-out pairwise accuracy)
    ppo        sft + reward            -> ppo.safetensors, or ppo_beta0.safetensors (beta = 0)
    dpo        sft + comparisons       -> dpo.safetensors
    eval       every policy            -> results.md, results.json (and ppo_curves.png)

A stage uses the RLHFConfig stored in its input checkpoint, so a run is one world: the same
tokenizer, model shape and seeds throughout. BLAS runs on one thread (small matrices: more
threads only contend, the more so on a shared machine).
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
from minigen.rlhf import io
from minigen.rlhf.config import RLHFConfig
from minigen.rlhf.evaluate import evaluate, results_table
from minigen.rlhf.ppo import ppo
from minigen.rlhf.rater import Pair, preference_pairs, with_near_misses
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
    "run_eval", "run_all", "plot_ppo",
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


def save_pairs(path: Path, pairs: dict[str, dict[str, list[Pair]]]) -> None:
    data = {split: {k: [[p.prompt, p.chosen, p.rejected] for p in v] for k, v in d.items()}
            for split, d in pairs.items()}  # fmt: skip
    atomic_write(path, json.dumps(data))


def load_pairs(path: Path) -> dict[str, dict[str, list[Pair]]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `minigen rlhf reward` first (it writes the comparisons)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {
            split: {k: [Pair(*p) for p in v] for k, v in d.items()} for split, d in data.items()
        }
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a file of comparisons ({e})") from None


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
    io.save_policy(path, model, tok, cfg, "pretrained", {"loss": losses})
    _say(verbose, f"pretrained on {cfg.corpus_size:,} forum exchanges, {cfg.pretrain_steps} steps "
         f"in {time.perf_counter() - t0:.0f}s, final loss {_final(losses):.3f} -> {path}")  # fmt: skip
    return {"loss": losses}


def run_sft(
    run: str | Path, force: bool = False, verbose: bool = True, progress: bool = True
) -> dict:
    base, path = _from(run, "pretrained", "sft", force)
    cfg, t0 = base.config, time.perf_counter()
    model, losses = sft(cfg, base.model, base.tokenizer, progress=progress)
    io.save_policy(path, model, base.tokenizer, cfg, "sft", {"loss": losses})
    _say(verbose, f"fine-tuned on {cfg.sft_size:,} demonstrations in "
         f"{time.perf_counter() - t0:.0f}s, final loss {_final(losses):.3f} -> {path}")  # fmt: skip
    return {"loss": losses}


def run_pairs(run: str | Path, verbose: bool = True) -> dict[str, dict[str, list[Pair]]]:
    """The rater's comparisons (training and held-out) -> pairs.json, which the reward model
    and DPO both read."""
    base = io.load_policy(io.stage_path(run, "sft"))
    cfg, tok, t0 = base.config, base.tokenizer, time.perf_counter()
    pairs = {
        "train": rater_pairs(cfg, base.model, tok),
        "held_out": rater_pairs(cfg, base.model, tok, True),
    }
    save_pairs(Path(run) / "pairs.json", pairs)
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
) -> dict:
    """The reward model; the comparisons are made first (or, with `reuse_pairs`, read from
    the run's pairs.json)."""
    base, path = _from(run, "sft", "reward", force)
    cfg, tok, t0 = base.config, base.tokenizer, time.perf_counter()
    pairs = load_pairs(Path(run) / "pairs.json") if reuse_pairs else run_pairs(run, verbose)
    train_pairs = [p for v in pairs["train"].values() for p in v]
    with fast_kernels():
        rm, losses = train_reward_model(cfg, base.model, tok, train_pairs, progress=progress)
    acc = {f"{split} {kind}": reward_accuracy(rm, tok, v[:1000])
           for split, d in pairs.items() for kind, v in d.items() if v}  # fmt: skip
    held = [p for v in pairs["held_out"].values() for p in v]
    acc["held_out"] = reward_accuracy(rm, tok, held)
    io.save_reward(path, rm, tok, cfg, {"loss": losses, "accuracy": acc})
    _say(verbose, f"reward model on {len(train_pairs):,} comparisons in {time.perf_counter() - t0:.0f}s: "
         f"held-out pairwise accuracy {acc['held_out']:.1%} ({len(held)} comparisons) -> {path}",
         "  " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()))  # fmt: skip
    return {"loss": losses, "accuracy": acc}


def run_ppo(run: str | Path, beta: float | None = None, name: str | None = None,
            iters: int | None = None, force: bool = False, verbose: bool = True, progress: bool = True) -> dict:  # fmt: skip
    base = io.load_policy(io.stage_path(run, "sft"))
    reward = io.load_reward(io.stage_path(run, "reward"))
    io.check_same_world(base, reward)
    cfg = base.config if iters is None else base.config.replace(ppo_iters=iters)
    beta = cfg.beta if beta is None else beta
    name = name or ("ppo_beta0" if beta == 0 else "ppo")
    path = io.stage_path(run, name)
    refuse_overwrite(path, force)
    t0 = time.perf_counter()
    policy, history = ppo(cfg, base.model, reward.model, base.tokenizer, beta, progress=progress)
    io.save_policy(path, policy, base.tokenizer, cfg, name, {"beta": beta, "iters": history})
    # the log alone too (small: the lesson's curves need no weights)
    atomic_write(Path(run) / f"{name}_history.json", json.dumps({"beta": beta, "iters": history}))
    last = history[-1]
    _say(verbose, f"PPO (beta={beta:g}), {len(history)} iterations in {time.perf_counter() - t0:.0f}s: "
         f"rater {history[0]['rater']:.3f} -> {last['rater']:.3f}, RM {history[0]['rm']:+.2f} -> "
         f"{last['rm']:+.2f}, KL {last['kl']:.2f} -> {path}")  # fmt: skip
    return {"beta": beta, "iters": history}


def run_dpo(
    run: str | Path, force: bool = False, verbose: bool = True, progress: bool = True
) -> dict:
    base, path = _from(run, "sft", "dpo", force)
    cfg, t0 = base.config, time.perf_counter()
    pairs = load_pairs(Path(run) / "pairs.json")
    train_pairs = [p for v in pairs["train"].values() for p in v]
    policy, losses = dpo(cfg, base.model, base.tokenizer, train_pairs, progress=progress)
    io.save_policy(path, policy, base.tokenizer, cfg, "dpo", {"loss": losses})
    _say(verbose, f"DPO on {len(train_pairs):,} comparisons in {time.perf_counter() - t0:.0f}s, "
         f"final loss {_final(losses):.3f} -> {path}")  # fmt: skip
    return {"loss": losses}


def _dpo_lane(run: str, force: bool, verbose: bool) -> None:
    """DPO in the second lane of `run_all` (its own process: BLAS on one thread, no bar)."""
    with blas_threads(1):
        run_dpo(run, force, verbose, progress=False)


def run_eval(run: str | Path, models: Sequence[str] = ("pretrained", "sft", "ppo", "dpo", "ppo_beta0"),
             force: bool = True, verbose: bool = True, progress: bool = True) -> dict:  # fmt: skip
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
    cfg = sft_ck.config
    rows = evaluate({k: v.model for k, v in loaded.items()}, sft_ck.model, sft_ck.tokenizer, cfg,
                    reward.model if reward else None, progress=progress)  # fmt: skip
    table = results_table(rows)
    n = cfg.eval_prompts * cfg.eval_samples
    atomic_write(
        run / "results.md",
        f"{n} responses to {cfg.eval_prompts} held-out prompts per model\n\n{table}\n",
    )
    atomic_write(run / "results.json", json.dumps(rows, indent=1))
    curves = {f.name[: -len("_history.json")]: json.loads(f.read_text())["iters"]
              for f in sorted(run.glob("*_history.json"))}  # fmt: skip
    if curves:
        plot_ppo(curves, run / "ppo_curves.png")
    _say(verbose, table)
    return rows


def plot_ppo(histories: dict[str, list[dict[str, Any]]], path: str | Path | None = None) -> Any:
    """The rater's score, the reward model's score and the KL per PPO iteration, one line per
    run; written to `path` if given. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, h in histories.items():
        it = [r["iter"] for r in h]
        for ax, key in zip(axes, ("rater", "rm", "kl"), strict=True):
            ax.plot(it, [r[key] for r in h], label=name)
    titles = (
        "rater's mean score (never seen by the policy)",
        "reward model's score",
        "KL to SFT (nats)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO iteration")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    if path is not None:
        from minigen.plotting import save_figure

        save_figure(fig, path)
    return fig


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
