"""The results table: each policy against the rater, on prompts no stage trained on.

For every policy, responses are sampled (temperature 1, as in training) to held-out prompts
(`minigen.rlhf.task.is_held_out`), and measured by

- **rater score**: the simulated rater's mean score, in [0, 1], with its standard error
  (the standard deviation of the scores over the square root of their number);
- **win rate vs SFT**: how often the rater prefers the policy's response to a response of
  the SFT model to the same prompt (a win counts 1, a tie 1/2, a loss 0), so the SFT model
  itself, whose two responses are independent samples, scores about 0.5;
- **KL to SFT**: KL(pi || pi_SFT) of whole responses in nats, the per-state KL over the
  vocabulary summed along each sampled response, averaged;
- **RM score**: the reward model's normalised score, when one is given (what PPO maximised).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from minigen.rlhf.config import RLHFConfig
from minigen.rlhf.data import encode
from minigen.rlhf.losses import sequence_kl
from minigen.rlhf.models import RewardModel, sample_responses
from minigen.rlhf.rater import compare, rate
from minigen.rlhf.task import sample_requests
from minigen.rlhf.train import logits_of, reward_scores, take
from minigen.tensor import no_grad
from minigen.text import GPT

__all__ = ["eval_prompts", "response_kl", "evaluate", "results_table"]


def eval_prompts(cfg: RLHFConfig) -> list[str]:
    """The held-out prompts, each repeated `eval_samples` times."""
    reqs = sample_requests(cfg.eval_prompts, cfg.seed + 100, held_out=True)
    return [r.prompt for r in reqs] * cfg.eval_samples


def response_kl(
    model: GPT, ref: GPT, tokenizer: Any, prompts: list[str], responses: list[str], chunk: int = 128
) -> np.ndarray:
    """KL(pi || pi_ref) of each sampled response, (N,)."""
    data = encode(tokenizer, prompts, responses, model.config.block_size)
    out = []
    with no_grad():
        for i in range(0, len(data), chunk):
            b = take(data, np.arange(i, min(i + chunk, len(data))))
            out.append(
                sequence_kl(logits_of(model, b.ids).data, logits_of(ref, b.ids).data, b.mask)
            )
    return np.concatenate(out)


def evaluate(
    policies: Mapping[str, GPT],
    sft_model: GPT,
    tokenizer: Any,
    cfg: RLHFConfig,
    rm: RewardModel | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """The table's row of every policy (a dict of measures), and a few sample responses."""
    from tqdm.auto import tqdm

    prompts = eval_prompts(cfg)
    gen = lambda i: np.random.default_rng([cfg.seed, 5, i])  # noqa: E731
    baseline = sample_responses(
        sft_model, tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, gen(0)
    )
    rows: dict[str, dict[str, Any]] = {}
    for i, (name, model) in enumerate(
        tqdm(policies.items(), desc="eval", disable=not progress, leave=False)
    ):
        responses = sample_responses(
            model, tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, gen(i + 1)
        )
        ratings = [rate(p, r) for p, r in zip(prompts, responses, strict=True)]
        wins = [compare(p, a, b) for p, a, b in zip(prompts, responses, baseline, strict=True)]
        scores = np.array([r.score for r in ratings])
        row = {
            "rater": float(scores.mean()),
            "rater_se": float(scores.std() / np.sqrt(len(scores))),
            "win_vs_sft": float(np.mean([(w + 1) / 2 for w in wins])),
            "kl_to_sft": float(response_kl(model, sft_model, tokenizer, prompts, responses).mean()),
            "correct": float(np.mean([r.correct for r in ratings])),
            "polite": float(np.mean([r.polite for r in ratings])),
            "finished": float(np.mean([r.finished for r in ratings])),
            "samples": [[p, r] for p, r in zip(prompts[:6], responses[:6], strict=True)],
        }
        if rm is not None:
            data = encode(tokenizer, prompts, responses, rm.config.block_size)
            row["rm"] = float(reward_scores(rm, data).mean())
        rows[name] = row
    return rows


def results_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """The rows as a Markdown table."""
    has_rm = all("rm" in r for r in rows.values())
    head = "| model | rater score | win rate vs SFT | KL to SFT (nats) |"
    head += " RM score |" if has_rm else ""
    head += " correct | polite | finished |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        se = f" ± {r['rater_se']:.3f}" if "rater_se" in r else ""
        cells = [name, f"{r['rater']:.3f}{se}", f"{r['win_vs_sft']:.2f}", f"{r['kl_to_sft']:.2f}"]
        if has_rm:
            cells.append(f"{r['rm']:+.2f}")
        cells += [f"{r['correct']:.0%}", f"{r['polite']:.0%}", f"{r['finished']:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
