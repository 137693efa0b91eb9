"""The RLHF pipeline end to end in fast mode, through `minigen rlhf`, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minigen.cli import main
from minigen.rlhf import io
from minigen.rlhf.config import RLHFConfig


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One fast run of every stage (a few seconds), shared by the tests below."""
    out = tmp_path_factory.mktemp("rlhf") / "run"
    assert main(["rlhf", "all", "--fast", "--quiet", "--out", str(out)]) == 0
    return out


def test_every_stage_writes_its_checkpoint(run):
    for stage in io.STAGES:
        assert io.stage_path(run, stage).is_file(), stage
    assert (run / "pairs.json").is_file() and (run / "ppo_curves.png").read_bytes()[
        :4
    ] == b"\x89PNG"
    # one world: every checkpoint carries the run's config
    for s in ("sft", "ppo", "dpo"):
        assert io.load_policy(io.stage_path(run, s)).config == RLHFConfig.fast()


def test_two_lanes_give_the_checkpoints_of_one(run, tmp_path):
    """`rlhf all` trains DPO in a second process by default (--jobs 2); every stage seeds
    itself, so one lane, stage after stage, writes the same weights and the same table."""
    one = tmp_path / "one"
    assert main(["rlhf", "all", "--fast", "--quiet", "--jobs", "1", "--out", str(one)]) == 0
    for stage in io.STAGES:
        a = io.load_policy if stage != "reward" else io.load_reward
        got, want = a(io.stage_path(one, stage)).model, a(io.stage_path(run, stage)).model
        for (name, x), (_, y) in zip(
            sorted(got.state_dict().items()), sorted(want.state_dict().items()), strict=True
        ):
            np.testing.assert_array_equal(x, y, err_msg=f"{stage}: {name}")
    assert json.loads((one / "results.json").read_text()) == json.loads(
        (run / "results.json").read_text()
    )


def test_ppo_logs_rater_rm_and_kl_every_iteration(run):
    for name, beta in (("ppo", RLHFConfig.fast().beta), ("ppo_beta0", 0.0)):
        h = io.load_policy(io.stage_path(run, name)).history
        assert h["beta"] == beta and len(h["iters"]) == RLHFConfig.fast().ppo_iters
        for it in h["iters"]:
            assert 0 <= it["rater"] <= 1 and np.isfinite(it["rm"]) and it["kl"] >= 0


def test_the_results_table(run):
    rows = json.loads((run / "results.json").read_text())["models"]
    assert list(rows) == ["pretrained", "sft", "ppo", "dpo", "ppo_beta0"]
    for r in rows.values():
        assert 0 <= r["rater"] <= 1 and 0 <= r["win_vs_sft"] <= 1 and r["kl_to_sft"] >= 0
    table = (run / "results.md").read_text()
    assert "| model | rater score | win rate vs SFT | KL to SFT (nats) |" in table
    assert rows["sft"]["kl_to_sft"] == 0.0  # the SFT model against itself
    acc = io.load_reward(io.stage_path(run, "reward")).history["accuracy"]
    assert 0 <= acc["held_out"] <= 1


def test_pairs_are_the_raters_and_dpo_uses_them(run):
    from minigen.rlhf.pipeline import load_pairs
    from minigen.rlhf.rater import score

    pairs = load_pairs(run / "pairs.json")
    for d in pairs.values():
        for p in (p for v in d.values() for p in v):
            assert score(p.prompt, p.chosen) > score(p.prompt, p.rejected)
    # the training comparisons of samples include near misses (same length, a slip apart);
    # the held-out ones are the rater's comparisons of two samples only

    def slips(split):
        return sum(
            len(q.chosen) == len(q.rejected)
            and sum(a != b for a, b in zip(q.chosen, q.rejected, strict=True)) <= 2
            for q in pairs[split]["sampled"]
        )

    assert slips("train") > 0  # (few in fast mode: an unfinished reply and its copy tie)
    held = pairs["held_out"]["sampled"]
    assert len(held) <= RLHFConfig.fast().held_out_pair_prompts  # at most one per prompt


def test_the_reward_stage_runs_on_numba_and_puts_the_backend_back():
    from minigen import backend
    from minigen.rlhf.pipeline import fast_kernels

    assert backend.current() == "numpy"
    with fast_kernels():
        assert backend.current() == ("numba" if "numba" in backend.available() else "numpy")
    assert backend.current() == "numpy"
    with pytest.raises(RuntimeError), fast_kernels():
        raise RuntimeError("a failing stage")
    assert backend.current() == "numpy"


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigen: error:")
    return err[0]


def test_nothing_is_overwritten_without_force(run, capsys, monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    assert "--force" in _error(capsys, ["rlhf", "sft", "--quiet", "--out", str(run)])


def test_stages_need_their_inputs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    assert "pretrained.safetensors" in _error(capsys, ["rlhf", "sft", "--out", str(tmp_path)])
    assert "sft.safetensors" in _error(capsys, ["rlhf", "eval", "--out", str(tmp_path)])


def test_mismatched_checkpoints_in_a_run_are_refused(run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    import shutil

    from minigen.rlhf.train import make_tokenizer
    from minigen.text import GPT, GPTConfig

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(io.stage_path(run, "reward"), io.stage_path(other, "reward"))
    tok = make_tokenizer()
    wide = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=80, n_layer=1, n_head=2, n_embd=64))
    io.save_policy(io.stage_path(other, "sft"), wide, tok, RLHFConfig.fast(n_embd=64), "sft")
    assert "different model shapes" in _error(
        capsys, ["rlhf", "ppo", "--quiet", "--out", str(other)]
    )
    assert "pairs.json" in _error(capsys, ["rlhf", "dpo", "--quiet", "--out", str(other)])


def test_bad_arguments(run, capsys, monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    assert "--name" in _error(
        capsys, ["rlhf", "ppo", "--quiet", "--name", "../x", "--out", str(run)]
    )
    assert "--models" in _error(
        capsys, ["rlhf", "eval", "--quiet", "--models", ",", "--out", str(run)]
    )


def test_empty_preference_sets_are_refused(run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINIGEN_DEBUG", raising=False)
    import shutil

    from minigen.rlhf.train import dpo, train_reward_model

    sft = io.load_policy(io.stage_path(run, "sft"))
    for train in (train_reward_model, dpo):
        with pytest.raises(ValueError, match="no preference pairs"):
            train(sft.config, sft.model, sft.tokenizer, [], progress=False)
    # a run whose comparisons file holds none
    other = tmp_path / "empty"
    other.mkdir()
    shutil.copy(io.stage_path(run, "sft"), io.stage_path(other, "sft"))
    empty = {"forum": [], "sampled": []}
    (other / "pairs.json").write_text(json.dumps({"train": empty, "held_out": empty}))
    assert "no preference pairs" in _error(capsys, ["rlhf", "dpo", "--quiet", "--out", str(other)])


def test_comparison_groups_keep_each_prompts_comparisons_together():
    from minigen.rlhf.rater import Pair
    from minigen.rlhf.train import comparison_groups

    p, q = "Q: shout cat\nA:", "Q: reverse pots\nA:"
    pairs = [
        Pair(p, " CAT.\n", " cat.\n"), Pair(p, " CAT.\n", " No idea.\n"),
        Pair(p, " No idea.\n", " cat.\n"), Pair(q, " stop.\n", " pots.\n"),
    ]  # fmt: skip
    prompts, responses, groups = comparison_groups(pairs)
    assert [len(g) for g in groups] == [3, 1] and len(responses) == 5  # each reply read once
    rebuilt = [Pair(prompts[c], responses[c], responses[r]) for g in groups for c, r in g]
    assert rebuilt == pairs
    assert all(prompts[c] == prompts[r] for g in groups for c, r in g)
