"""§7.1 RLHF: supervised fine-tuning, a reward model from ratings, PPO with a KL leash, and DPO.

"[Fine-tuning] by creating small labeled training sets by asking users to either write
responses or provide ratings of generated responses. The former can be used as-is to
fine-tune the language model, and the latter can be used to train a reward network that
predicts the rating and use it as a target to fine-tune the language model with a standard
Reinforcement Learning approach." (The Little Book of Deep Learning, §7.1)

- `task`: a synthetic assistant task and its forum corpus;
- `rater`: the simulated rater, the only source of feedback (demonstrations, comparisons);
- `data`, `models`, `losses`: response-masked batches; reward model and value head on the
  GPT trunk; Bradley-Terry, PPO, GAE, KL and DPO;
- `train`, `ppo`: the stages; `evaluate`: the results table; `io`: checkpoints; `report`:
  the results files (with the seed and the machine) and the summary over seeds;
- `pipeline`, `commands`: `minigen rlhf pretrain|sft|reward|ppo|dpo|eval|all`.

`SHIPPED` is the folder of the small checkpoints the lesson uses (made by
`minigen rlhf all`, see the README).
"""

from pathlib import Path

from minigen.rlhf.config import RLHFConfig
from minigen.rlhf.data import encode, sequence_logprob, token_logprobs
from minigen.rlhf.evaluate import evaluate, results_table
from minigen.rlhf.io import check_same_world, load_policy, load_reward, save_policy, save_reward
from minigen.rlhf.losses import (
    bradley_terry_loss,
    dpo_loss,
    gae,
    kl_per_token,
    kl_rewards,
    ppo_clip_loss,
    sequence_kl,
    value_loss,
)
from minigen.rlhf.models import PolicyWithValue, RewardModel, hidden_states, sample_responses
from minigen.rlhf.ppo import ppo
from minigen.rlhf.rater import Pair, Rating, compare, demonstrate, preference_pairs, rate, score
from minigen.rlhf.task import Request, forum_corpus, parse_prompt, sample_requests
from minigen.rlhf.train import (
    dpo,
    make_tokenizer,
    pretrain,
    reward_accuracy,
    sft,
    train_reward_model,
)

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "rlhf"

__all__ = [
    "SHIPPED", "RLHFConfig", "Request", "sample_requests", "parse_prompt", "forum_corpus",
    "Rating", "Pair", "rate", "score", "compare", "demonstrate", "preference_pairs",
    "encode", "token_logprobs", "sequence_logprob", "hidden_states", "RewardModel",
    "PolicyWithValue", "sample_responses", "bradley_terry_loss", "dpo_loss", "ppo_clip_loss",
    "value_loss", "kl_rewards", "gae", "kl_per_token", "sequence_kl", "make_tokenizer",
    "pretrain", "sft", "train_reward_model", "reward_accuracy", "dpo", "ppo", "evaluate",
    "results_table", "save_policy", "save_reward", "load_policy", "load_reward",
    "check_same_world",
]  # fmt: skip
