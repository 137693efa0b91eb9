"""§7.1 RLHF: supervised fine-tuning, a reward model from ratings, PPO with a KL leash, and DPO."""
