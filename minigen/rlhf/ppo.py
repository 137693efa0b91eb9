"""Reinforcement learning from the reward model: PPO with a KL leash to the SFT model.

One iteration, as InstructGPT (Ouyang et al. 2022) runs it:

1. *rollouts*: sample a response y ~ pi_old(. | x) for each of a batch of training prompts;
2. *score*: the reward model's r(x, y); the old policy's and the frozen SFT model's
   log-probabilities of every response token; the value head's V(s_t);
3. *rewards*: r_t = -beta log(pi_old(y_t|s_t) / pi_SFT(y_t|s_t)), plus r(x, y) at the last
   token; advantages and returns by GAE (`minigen.rlhf.losses`), advantages whitened;
4. *update*: a few epochs of minibatch steps on L_clip + c_V L_V.

Each iteration logs the rater's mean score of the rollouts (the policy never sees it: it is
only written down, to watch what the reward model's score hides), the reward model's mean
score, and KL(pi || pi_SFT) per response (exact per state, summed over the response).

With beta = 0 nothing holds the policy near the SFT model, and it climbs the reward model
into regions the rater's comparisons never covered: the reward model's score keeps rising
while the rater's falls (over-optimisation, Gao et al. 2023).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from minigen import optim, rng
from minigen.rlhf.config import RLHFConfig
from minigen.rlhf.data import encode, token_logprobs
from minigen.rlhf.losses import gae, kl_rewards, ppo_clip_loss, sequence_kl, value_loss, whiten
from minigen.rlhf.models import PolicyWithValue, RewardModel, sample_responses
from minigen.rlhf.rater import rate
from minigen.rlhf.task import sample_requests
from minigen.rlhf.train import copy_gpt, logits_of
from minigen.tensor import no_grad
from minigen.text import GPT
from minigen.training import Every, Loop, Schedule

__all__ = ["ppo"]


def _rows(arrays: dict[str, np.ndarray], idx: np.ndarray, T: int) -> dict[str, np.ndarray]:
    return {k: (v[idx, :T] if v.ndim == 2 else v[idx]) for k, v in arrays.items()}


def ppo(
    cfg: RLHFConfig,
    sft_model: GPT,
    rm: RewardModel,
    tokenizer: Any,
    beta: float | None = None,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[GPT, list[dict[str, Any]]]:
    """Fine-tune a copy of the SFT model by PPO against `rm`; returns the policy and the
    per-iteration log. `beta` (default `cfg.beta`) weighs the KL penalty.

    Each iteration is one step of the one training loop (`minigen.training.Loop`, constant
    learning rate, gradients clipped to norm 1): its rollouts, then its minibatch updates, each
    through `loop.update`. The loop records, as the iteration's loss, the mean over its
    minibatches of L_clip + c_V L_V; the per-iteration log (`callback(log)` after each) is
    PPO's own. A non-finite loss or gradient stops the run before that update with
    `TrainingDiverged`."""
    if rm.config.vocab_size != sft_model.config.vocab_size:
        raise ValueError(
            f"the reward model's vocabulary ({rm.config.vocab_size} tokens) is not the "
            f"policy's ({sft_model.config.vocab_size})"
        )
    beta = cfg.beta if beta is None else beta
    if beta < 0:
        raise ValueError(f"the KL weight beta must be >= 0, got {beta}")
    rng.manual_seed(cfg.seed + 3)
    gen = np.random.default_rng([cfg.seed, 3])  # the rollouts' sampling
    pool = [r.prompt for r in sample_requests(max(1000, cfg.ppo_batch * 4), cfg.seed + 3)]
    agent = PolicyWithValue(copy_gpt(sft_model))
    ref = sft_model
    ref.eval()
    rm.eval()
    opt = optim.AdamW(agent.parameters(), lr=cfg.ppo_lr, betas=(0.9, 0.95), weight_decay=0.0)
    loop = Loop(agent, opt, cfg.ppo_iters, Schedule.constant(cfg.ppo_lr), grad_clip=1.0,
                generators={"rollouts": gen}, desc=f"ppo beta={beta:g}", progress=progress,
                leave=False)  # fmt: skip
    history: list[dict[str, Any]] = []

    def iteration(it: int) -> float:
        t0 = time.perf_counter()
        prompts = [pool[i] for i in gen.integers(0, len(pool), cfg.ppo_batch)]
        # 1. rollouts from the current policy
        agent.eval()
        responses = sample_responses(
            agent.gpt, tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, gen
        )
        b = encode(tokenizer, prompts, responses, cfg.block_size)
        # 2. score them: reward model, log-probabilities, values
        with no_grad():
            logits, values = agent(b.ids)  # (B, T, V), (B, T)
            ref_logits = logits_of(ref, b.ids)  # (B, T, V)
            scores = rm.score(b.ids, b.last).numpy().astype(np.float64)  # (B,)
            logp_old = token_logprobs(logits, b.targets).numpy().astype(np.float64)
            logp_ref = token_logprobs(ref_logits, b.targets).numpy().astype(np.float64)
        kl = sequence_kl(logits.data, ref_logits.data, b.mask)  # (B,)
        # 3. per-token rewards (KL penalty, then the score at the end) and advantages
        rewards = kl_rewards(scores, logp_old, logp_ref, b.mask, beta)
        adv, returns = gae(rewards, values.numpy().astype(np.float64), b.mask, cfg.gamma, cfg.lam)
        adv = whiten(adv, b.mask)
        arrays = {
            "ids": b.ids, "targets": b.targets, "mask": b.mask, "last": b.last,
            "logp_old": logp_old, "values_old": values.numpy(), "adv": adv, "returns": returns,
        }  # fmt: skip
        # 4. PPO epochs over minibatches, each one update of the loop
        agent.train()
        losses, pg_losses, v_losses, clipped = [], [], [], []
        for _ in range(cfg.ppo_epochs):
            order = gen.permutation(len(b))
            for s in range(0, len(b), cfg.ppo_minibatch):
                idx = order[s : s + cfg.ppo_minibatch]
                m = _rows(arrays, idx, int(b.last[idx].max()) + 1)
                new_logits, new_values = agent(m["ids"])
                logp = token_logprobs(new_logits, m["targets"])  # (b, T)
                pg = ppo_clip_loss(logp, m["logp_old"], m["adv"], m["mask"], cfg.ppo_clip)
                vl = value_loss(new_values, m["values_old"], m["returns"], m["mask"], cfg.ppo_clip)
                # L = L_clip + c_V L_V
                losses.append(loop.update(pg + vl * cfg.vf_coef))
                ratio = np.exp(logp.numpy() - m["logp_old"])
                clipped.append(float((np.abs(ratio - 1) > cfg.ppo_clip)[m["mask"] > 0].mean()))
                pg_losses.append(pg.item())
                v_losses.append(vl.item())
        ratings = [rate(p, r) for p, r in zip(prompts, responses, strict=True)]
        log = {
            "iter": it + 1,
            "rater": float(np.mean([r.score for r in ratings])),
            "rm": float(scores.mean()),
            "kl": float(kl.mean()),
            "correct": float(np.mean([r.correct for r in ratings])),
            "finished": float(np.mean([r.finished for r in ratings])),
            "length": float(np.mean([len(r) for r in responses])),
            "pg_loss": float(np.mean(pg_losses)),
            "v_loss": float(np.mean(v_losses)),
            "clip_frac": float(np.mean(clipped)),
            "seconds": time.perf_counter() - t0,
            "samples": [[prompts[i], responses[i]] for i in range(2)],
        }
        history.append(log)
        loop.postfix.update(
            rater=f"{log['rater']:.3f}", rm=f"{log['rm']:.2f}", kl=f"{log['kl']:.2f}"
        )
        return float(np.mean(losses))  # the iteration's loss: its minibatches' mean

    hooks = [] if callback is None else [Every(1, lambda _: callback(history[-1]))]
    loop.run(iteration, hooks)
    agent.gpt.eval()
    return agent.gpt, history
