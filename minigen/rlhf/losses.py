"""The objectives of RLHF and DPO, and the estimates PPO needs.

Reward model (Bradley & Terry 1952; Ouyang et al. 2022), for a prompt x and the rater's
preferred and rejected responses y+, y-:

    P(y+ > y- | x) = sigmoid(r(x, y+) - r(x, y-)),   L_RM = -log sigmoid(r(x, y+) - r(x, y-))

PPO (Schulman et al. 2017), per response token t with ratio rho_t = pi(y_t | s_t) / pi_old(y_t | s_t)
and advantage A_t:

    L_clip = -E[ min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) ]
    L_V    = 1/2 E[ max((V(s_t) - R_t)^2, (clip(V, V_old - eps, V_old + eps) - R_t)^2) ]

with the per-token reward of InstructGPT: the reward model's score at the last token, and a
KL penalty to the frozen SFT model at every token,

    r_t = -beta (log pi_old(y_t | s_t) - log pi_SFT(y_t | s_t))  + [t = last] r(x, y)

and generalised advantage estimation (Schulman et al. 2016), V(s_n) = 0 past the end:

    delta_t = r_t + gamma V(s_{t+1}) - V(s_t),   A_t = delta_t + gamma lambda A_{t+1},   R_t = A_t + V(s_t)

DPO (Rafailov et al. 2023), with the frozen reference pi_ref (the SFT model):

    L_DPO = -log sigmoid(beta [(log pi(y+|x) - log pi_ref(y+|x)) - (log pi(y-|x) - log pi_ref(y-|x))])

KL to the reference, per visited state s_t, exactly over the vocabulary:

    KL(pi || pi_ref)(s_t) = sum_v pi(v | s_t) (log pi(v | s_t) - log pi_ref(v | s_t))  >= 0
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minigen import functional as F
from minigen import ops
from minigen.functional import log_softmax_forward
from minigen.tensor import Tensor

__all__ = [
    "bradley_terry_loss", "dpo_loss", "ppo_clip_loss", "value_loss", "masked_mean",
    "kl_rewards", "gae", "whiten", "kl_per_token", "sequence_kl",
]  # fmt: skip


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """mean over pairs of -log sigmoid(r(x, y+) - r(x, y-)); both (B,)."""
    r_chosen, r_rejected = _as_tensor(r_chosen), _as_tensor(r_rejected)
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(
            f"bradley_terry_loss: rewards of shapes {r_chosen.shape} and {r_rejected.shape}"
        )
    if r_chosen.size == 0:
        raise ValueError("bradley_terry_loss: no preference pairs (empty batch)")
    # -log sigmoid(r+ - r-)
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def dpo_loss(
    logp_chosen: Tensor,
    logp_rejected: Tensor,
    ref_chosen: Any,
    ref_rejected: Any,
    beta: float = 0.1,
) -> Tensor:
    """The DPO loss, mean over pairs; each argument is a sequence log-probability (B,)."""
    shapes = {
        np.shape(getattr(a, "data", a))
        for a in (logp_chosen, logp_rejected, ref_chosen, ref_rejected)
    }
    if len(shapes) != 1:
        raise ValueError(f"dpo_loss: log-probabilities of different shapes {sorted(shapes)}")
    if np.prod(shapes.pop()) == 0:
        raise ValueError("dpo_loss: no preference pairs (empty batch)")
    # the implicit rewards beta log(pi / pi_ref) of each response, and their margin
    margin = (_as_tensor(logp_chosen) - ref_chosen) - (_as_tensor(logp_rejected) - ref_rejected)
    # -log sigmoid(beta [log pi(y+)/pi_ref(y+) - log pi(y-)/pi_ref(y-)])
    return -F.logsigmoid(margin * beta).mean()


def masked_mean(x: Tensor, mask: np.ndarray) -> Tensor:
    """sum(x * mask) / sum(mask): the mean over the counted entries."""
    n = float(np.sum(mask))
    if n == 0:
        raise ValueError("masked_mean: the mask selects nothing")
    return (x * mask).sum() / n


def ppo_clip_loss(
    logp: Tensor, logp_old: np.ndarray, advantages: np.ndarray, mask: np.ndarray, eps: float = 0.2
) -> Tensor:
    """L_clip, the negated clipped surrogate, averaged over the counted tokens; all (B, T)."""
    # rho_t = pi(y_t | s_t) / pi_old(y_t | s_t) = exp(log pi - log pi_old)
    ratio = ops.exp(_as_tensor(logp) - logp_old)  # (B, T)
    # min(rho A, clip(rho, 1 - eps, 1 + eps) A): no gain from moving rho outside the range
    surrogate = ops.minimum(ratio * advantages, ratio.clip(1 - eps, 1 + eps) * advantages)
    return -masked_mean(surrogate, mask)


def value_loss(
    values: Tensor, values_old: np.ndarray, returns: np.ndarray, mask: np.ndarray, eps: float = 0.2
) -> Tensor:
    """L_V: the squared error of V against the returns, clipped around the old values."""
    # clip(V, V_old - eps, V_old + eps) = V_old + clip(V - V_old, -eps, eps)
    clipped = (values - values_old).clip(-eps, eps) + values_old  # (B, T)
    err = ops.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return masked_mean(err, mask) * 0.5


def kl_rewards(
    scores: np.ndarray, logp_old: np.ndarray, logp_ref: np.ndarray, mask: np.ndarray, beta: float
) -> np.ndarray:
    """Per-token rewards (B, T): -beta log(pi_old / pi_ref) at every response token, plus the
    reward model's score (B,) at each response's last token."""
    rewards = -beta * (logp_old - logp_ref) * mask  # (B, T)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)  # (B,) last counted position
    rewards[np.arange(len(scores)), last] += scores
    return rewards


def gae(
    rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float = 1.0, lam: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and returns (both (B, T)) over the counted tokens of
    each row (a response's tokens are contiguous; V = 0 after its last)."""
    rewards, values = rewards * mask, values * mask
    B, T = rewards.shape
    adv = np.zeros((B, T))
    next_adv, next_value = np.zeros(B), np.zeros(B)
    for t in range(T - 1, -1, -1):
        # delta_t = r_t + gamma V(s_{t+1}) - V(s_t);  A_t = delta_t + gamma lambda A_{t+1}
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv[:, t] = (delta + gamma * lam * next_adv) * mask[:, t]
        next_adv = np.where(mask[:, t] > 0, adv[:, t], next_adv)
        next_value = np.where(mask[:, t] > 0, values[:, t], next_value)
    return adv, adv + values  # A_t, R_t = A_t + V(s_t)


def whiten(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the counted entries (advantages of unit scale); 0 elsewhere."""
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    return (x - mean) / np.sqrt(var + 1e-8) * mask


def kl_per_token(logits: Any, ref_logits: Any) -> np.ndarray:
    """KL(pi || pi_ref) of the next-token distributions at every position: (B, T, V) -> (B, T).
    Exact over the vocabulary, so >= 0, and 0 where the two distributions agree."""
    lp = log_softmax_forward(np.asarray(getattr(logits, "data", logits), dtype=np.float64))
    lq = log_softmax_forward(np.asarray(getattr(ref_logits, "data", ref_logits), dtype=np.float64))
    # sum_v pi(v) (log pi(v) - log pi_ref(v)), clipped at 0 against rounding
    return np.maximum((np.exp(lp) * (lp - lq)).sum(axis=-1), 0.0)


def sequence_kl(logits: Any, ref_logits: Any, mask: np.ndarray) -> np.ndarray:
    """KL(pi || pi_ref) of whole responses, estimated on the sampled ones: the exact per-state
    KL summed over each response's tokens, (B,)."""
    return (kl_per_token(logits, ref_logits) * mask).sum(axis=1)
