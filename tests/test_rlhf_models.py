"""Batches with response-only masks, the networks built on the GPT, sampling, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

import minigen
from minigen import Tensor, default_dtype, no_grad
from minigen import functional as F
from minigen.checkpoint import CheckpointError
from minigen.rlhf import io
from minigen.rlhf.config import RLHFConfig
from minigen.rlhf.data import IGNORE, encode, sequence_logprob, token_logprobs
from minigen.rlhf.models import (
    PolicyWithValue,
    RewardModel,
    hidden_states,
    lm_logits,
    sample_responses,
)
from minigen.rlhf.train import make_tokenizer
from minigen.text import GPT, GPTConfig

TOK = make_tokenizer()
CFG = GPTConfig(vocab_size=TOK.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)


def tiny_gpt(seed: int = 0) -> GPT:
    minigen.manual_seed(seed)
    model = GPT(CFG)
    for p in model.parameters():  # far from uniform, so samples and scores vary
        p.data[...] += 0.3 * minigen.rng.randn(*p.shape)
    return model


# ----------------------------------------------------------------------------- masking


def test_response_mask_leaves_the_prompt_out():
    prompts, responses = ["Q: shout cat\nA:", "Q: reverse pots\nA:"], [" CAT.\n", " It is stop.\n"]
    b = encode(TOK, prompts, responses, 32)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        P, R = len(p), len(r)
        counted = np.flatnonzero(b.mask[i])
        # the targets counted are exactly the response's tokens, in order
        np.testing.assert_array_equal(counted, np.arange(P - 1, P + R - 1))
        assert TOK.decode(b.targets[i, counted]) == r
        assert np.all(b.targets[i, b.mask[i] == 0] == IGNORE)
        assert b.last[i] == P + R - 1 and TOK.decode(b.ids[i, : P + R]) == p + r


def test_pretraining_mask_counts_every_token_after_the_first():
    b = encode(TOK, ["Q: shout cat\nA:"], [" CAT.\n"], 32, loss_on="all")
    assert b.mask.sum() == len("Q: shout cat\nA: CAT.\n") - 1


def test_the_sft_loss_has_no_gradient_on_prompt_positions():
    model = tiny_gpt()
    b = encode(TOK, ["Q: shout cat\nA:"], [" CAT.\n"], 32)
    with default_dtype(np.float64):
        logits = Tensor(lm_logits(model, hidden_states(model, b.ids)).numpy(), requires_grad=True)
        loss = F.cross_entropy(logits, b.targets, ignore_index=IGNORE)
        loss.backward()
    prompt_rows = b.mask[0] == 0
    assert np.all(logits.grad[0, prompt_rows] == 0) and np.all(
        np.abs(logits.grad[0, ~prompt_rows]).sum(-1) > 0
    )
    # and it is the mean of -log p over the response's tokens
    logp = token_logprobs(logits, b.targets).numpy()
    assert loss.item() == pytest.approx(-logp[0, ~prompt_rows].mean())


def test_bad_sequences_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match=r"longer than the model's context \(block_size=32\)"):
        encode(TOK, ["Q: shout cat\nA:"], [" CAT" * 10 + "\n"], 32)
    with pytest.raises(ValueError, match="empty"):
        encode(TOK, [], [], 32)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        encode(TOK, ["a", "b"], ["c"], 32)
    with pytest.raises(ValueError, match="not in this CharTokenizer"):
        encode(TOK, ["Q: shout cat\nA:"], [" \u00e9\n"], 32)


# ----------------------------------------------------------------------------- networks


def test_the_trunk_and_tied_head_are_the_gpts_forward():
    model = tiny_gpt()
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, (3, 10))
    with no_grad():
        np.testing.assert_allclose(
            lm_logits(model, hidden_states(model, ids)).numpy(), model(ids).numpy(), atol=1e-5
        )
    with pytest.raises(ValueError, match="longer than the model's context"):
        hidden_states(model, np.zeros((1, 33), dtype=np.int64))


def test_the_reward_is_read_at_the_last_token_and_ignores_padding():
    rm = RewardModel.from_policy(tiny_gpt())
    rm.head.weight.data[...] = minigen.rng.randn(*rm.head.weight.shape)
    a = encode(TOK, ["Q: shout cat\nA:"], [" CAT.\n"], 32)
    b = encode(TOK, ["Q: shout cat\nA:"] * 2, [" CAT.\n", " It is CAT, lol.\n"], 32)  # padded
    with no_grad():
        np.testing.assert_allclose(
            rm(a.ids, a.last).numpy()[0], rm(b.ids, b.last).numpy()[0], rtol=1e-5
        )
    # from_policy copies the trunk: the same features as the policy
    assert all(
        np.array_equal(v, rm.gpt.state_dict()[k]) for k, v in tiny_gpt().state_dict().items()
    )


def test_policy_with_value_starts_at_zero_value_and_the_policys_logits():
    gpt = tiny_gpt()
    agent = PolicyWithValue(gpt)
    ids = np.arange(8)[None]
    with no_grad():
        logits, values = agent(ids)
        np.testing.assert_allclose(logits.numpy(), gpt(ids).numpy(), atol=1e-5)
    assert values.shape == (1, 8) and np.all(values.numpy() == 0)


def test_sequence_logprob_is_the_sum_of_the_response_tokens():
    model = tiny_gpt()
    b = encode(TOK, ["Q: shout cat\nA:"], [" CAT.\n"], 32)
    with no_grad():
        logits = model(b.ids)
        lp = F.log_softmax(logits).numpy()
    want = sum(lp[0, t, b.targets[0, t]] for t in np.flatnonzero(b.mask[0]))
    assert sequence_logprob(logits, b).item() == pytest.approx(want, rel=1e-5)


def test_sampled_responses_stop_at_the_newline_and_are_reproducible():
    model = tiny_gpt(1)
    prompts = ["Q: shout cat\nA:", "Q: reverse pots\nA:", "Q: shout dog\nA:"]
    a = sample_responses(model, TOK, prompts, 12, gen=np.random.default_rng(3))
    assert a == sample_responses(model, TOK, prompts, 12, gen=np.random.default_rng(3))
    for r in a:
        assert ("\n" not in r and len(r) == 12) or (r.endswith("\n") and r.count("\n") == 1)
    with pytest.raises(ValueError, match="exceed the model's context"):
        sample_responses(model, TOK, prompts, 30)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_round_trip_and_refuse_the_wrong_kind(tmp_path):
    cfg = RLHFConfig.fast()
    gpt = tiny_gpt()
    rm = RewardModel.from_policy(gpt)
    rm.mean, rm.std = 0.5, 2.0
    io.save_policy(tmp_path / "sft.safetensors", gpt, TOK, cfg, "sft", {"loss": [1.0]})
    io.save_reward(tmp_path / "reward.safetensors", rm, TOK, cfg)
    pol, rew = (
        io.load_policy(tmp_path / "sft.safetensors"),
        io.load_reward(tmp_path / "reward.safetensors"),
    )
    assert (
        pol.config == cfg
        and pol.history == {"loss": [1.0]}
        and (rew.model.mean, rew.model.std) == (0.5, 2.0)
    )
    ids = np.arange(6)[None]
    with no_grad():
        np.testing.assert_array_equal(pol.model(ids).numpy(), gpt(ids).numpy())
    io.check_same_world(pol, rew)
    with pytest.raises(CheckpointError, match="holds a reward model"):
        io.load_policy(tmp_path / "reward.safetensors")
    with pytest.raises(CheckpointError, match="holds a policy model"):
        io.load_reward(tmp_path / "sft.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        io.load_policy(tmp_path / "ppo.safetensors")


def test_mismatched_checkpoints_are_refused(tmp_path):
    cfg = RLHFConfig.fast()
    io.save_policy(tmp_path / "a.safetensors", tiny_gpt(), TOK, cfg, "sft")
    minigen.manual_seed(0)
    wide = GPT(CFG.replace(n_embd=32))
    io.save_policy(tmp_path / "b.safetensors", wide, TOK, cfg, "sft")
    with pytest.raises(CheckpointError, match="different model shapes: n_embd 32 vs 16"):
        io.check_same_world(
            io.load_policy(tmp_path / "a.safetensors"), io.load_policy(tmp_path / "b.safetensors")
        )
    # weights that do not fit the config the metadata claims
    from minigen import checkpoint

    arrays, meta = checkpoint.load(tmp_path / "b.safetensors")
    checkpoint.save(tmp_path / "c.safetensors", arrays, {**meta, "model": CFG.to_dict()})
    with pytest.raises(CheckpointError, match="c.safetensors.*shape"):
        io.load_policy(tmp_path / "c.safetensors")
    # not an RLHF checkpoint at all
    checkpoint.save(tmp_path / "d.safetensors", arrays, {"something": "else"})
    with pytest.raises(CheckpointError, match="not a minigen RLHF checkpoint"):
        io.load_policy(tmp_path / "d.safetensors")


# ----------------------------------------------------------------------------- the training loop


def test_fit_stops_at_a_nan_loss_with_the_weights_of_the_step_before():
    from minigen.rlhf.train import fit
    from minigen.training import TrainingDiverged

    model = tiny_gpt()
    ids = np.random.default_rng(0).integers(0, TOK.vocab_size, (4, 9))
    before: dict[int, dict[str, np.ndarray]] = {}

    def loss_at(step: int) -> Tensor:
        before[step] = {k: v.copy() for k, v in model.state_dict().items()}
        loss = F.cross_entropy(model(ids[:, :-1]), ids[:, 1:])
        return loss * float("nan") if step == 2 else loss  # step 2 (0-based): the third

    with pytest.raises(TrainingDiverged, match="training diverged at step 3: the loss is nan"):
        fit(model, loss_at, 10, 1e-2, "fit", progress=False)
    assert sorted(before) == [0, 1, 2] and not model.training  # eval mode after, as on success
    for name, w in model.state_dict().items():  # those of step 2: step 3 never updated them
        np.testing.assert_array_equal(w, before[2][name], err_msg=name)
    assert any(not np.array_equal(before[1][k], before[2][k]) for k in before[2])  # step 2 did


def test_ppo_logs_every_iteration_in_the_same_shape():
    from minigen.rlhf.ppo import ppo
    from minigen.rlhf.train import gpt_config

    cfg = RLHFConfig.fast(ppo_iters=2, ppo_batch=8, ppo_minibatch=4, max_new_tokens=8)
    minigen.manual_seed(0)
    sft = GPT(gpt_config(cfg, TOK))
    rm = RewardModel.from_policy(sft)
    seen: list[dict] = []
    policy, history = ppo(cfg, sft, rm, TOK, progress=False, callback=seen.append)
    assert seen == history and [h["iter"] for h in history] == [1, 2]
    keys = {"iter", "rater", "rm", "kl", "correct", "finished", "length", "pg_loss", "v_loss",
            "clip_frac", "seconds", "samples"}  # fmt: skip
    for h in history:
        assert set(h) == keys
        assert all(
            isinstance(h[k], float) and np.isfinite(h[k]) for k in keys - {"iter", "samples"}
        )
        assert len(h["samples"]) == 2 and all(len(s) == 2 for s in h["samples"])
    assert isinstance(policy, GPT) and not policy.training
