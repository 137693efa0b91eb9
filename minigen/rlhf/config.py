"""Every setting of the RLHF pipeline in one place: the full run and the fast one.

The full run (`minigen rlhf all`) takes about 19 minutes on two CPU cores (BLAS on one thread
per process; DPO in a second lane beside the reward model and PPO; the reward model on the Numba
kernels); the fast one
(`RLHFConfig.fast()`, for tests and CI) about 10 seconds, with a tiny model that learns little.
A config travels with every checkpoint, so stages refuse checkpoints made with a different
model shape or task (`minigen.rlhf.io`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from minigen import checks

__all__ = ["RLHFConfig"]


@dataclass(frozen=True)
class RLHFConfig(checks.DictConfig):
    # each stage's settings (steps, batch, lr, ...): alike in shape, one block per stage
    seed: int = 0
    # the GPT (every stage's network has this shape; the vocabulary is the task's alphabet)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 80
    # 1. pretraining on forum exchanges, loss on every token
    corpus_size: int = 30_000
    pretrain_steps: int = 3_000
    pretrain_batch: int = 32
    pretrain_lr: float = 2e-3
    # 2. supervised fine-tuning on the rater's demonstrations, loss on the response only
    sft_size: int = 10_000
    sft_steps: int = 1_200
    sft_batch: int = 32
    sft_lr: float = 1e-3
    # 3. the reward model, from the rater's comparisons (Bradley-Terry)
    pair_prompts: int = 12_000  # training prompts the rater ranks rm_group forum replies to
    sampled_pair_prompts: int = 12_000  # ... and rm_group samples of the SFT model to
    held_out_pair_prompts: int = 600  # held-out prompts of each kind, two responses each
    rm_group: int = 4  # responses the rater ranks per training prompt (K of InstructGPT)
    rm_near_misses: bool = True  # also compare each sampled response with a near-miss copy
    rm_steps: int = 6_000
    rm_batch: int = 16  # prompts per step, with all the comparisons of their K responses
    rm_lr: float = 1e-3
    # 4. PPO against the reward model, with a KL penalty to the SFT model
    ppo_iters: int = 80
    ppo_batch: int = 64  # prompts (one response each) per iteration
    ppo_epochs: int = 2
    ppo_minibatch: int = 32
    ppo_lr: float = 1e-4
    ppo_clip: float = 0.2
    vf_coef: float = 0.5
    beta: float = 0.1  # the KL penalty's weight
    gamma: float = 1.0
    lam: float = 0.95
    max_new_tokens: int = 40
    temperature: float = 1.0
    # 5. DPO on the same comparisons
    dpo_steps: int = 300
    dpo_batch: int = 32
    dpo_lr: float = 1e-4
    dpo_beta: float = 0.5  # the rater never errs: a small beta lets DPO push the margins far
    # evaluation on held-out prompts
    eval_prompts: int = 1_000  # 200 left differences of 0.03 in score to chance
    eval_samples: int = 2  # responses per prompt and model

    def __post_init__(self) -> None:
        positive = [f.name for f in fields(self) if f.name not in ("seed", "beta", "gamma", "lam")]
        checks.require(self, positive, lambda v: not v <= 0, "be positive", "RLHFConfig: ")
        checks.require(self, ("beta",), lambda v: not v < 0, "be >= 0", "RLHFConfig: ")

    @classmethod
    def fast(cls, **changes: Any) -> RLHFConfig:
        """A tiny model and a few steps of everything: the whole pipeline in well under a
        minute (for tests and CI; it shows the mechanics, not the results)."""
        small = dict(
            n_layer=1, n_head=2, n_embd=32, corpus_size=600, pretrain_steps=60,
            pretrain_batch=16, sft_size=200, sft_steps=20, sft_batch=16, pair_prompts=200,
            sampled_pair_prompts=100, held_out_pair_prompts=50, rm_steps=20, rm_batch=16, ppo_iters=3, ppo_batch=16, ppo_minibatch=16,
            ppo_epochs=1, max_new_tokens=24, dpo_steps=10, dpo_batch=16, eval_prompts=16,
            eval_samples=1,
        )  # fmt: skip
        return cls(**{**small, **changes})

    def model_shape(self) -> dict[str, int]:
        """The fields a checkpoint must share with the config to be used by it."""
        return {k: getattr(self, k) for k in ("n_layer", "n_head", "n_embd", "block_size")}
