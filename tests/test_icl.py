"""In-context learning (minigen.text.fewshot.icl): the episodes, their tokens, the trainer's blocks,
the accuracy-against-shots measure, and the small model shipped in minigen/assets/icl-gpt."""

from __future__ import annotations

from collections import Counter
from math import comb

import numpy as np
import pytest
from hypothesis import given

from minigen.cli import main
from minigen.text import load_gpt
from minigen.text.fewshot.icl import (
    ICL_CHECKPOINT,
    MAX_SHOTS,
    ICLTask,
    episode_ids,
    icl_recipe,
    make_splits,
    sample_episode,
    shot_accuracy,
    train_icl,
)
from minigen.text.fewshot.icl_circuit import (
    GROUPS,
    ablation,
    forward_with_attention,
    query_attention,
    seen_queries,
)
from minigen.text.tokenizers import PieceTokenizer, load_tokenizer
from tests.strategies import piece_texts

TASK = ICLTask()
TOK = TASK.tokenizer()


# ----------------------------------------------------------------------------- tokens
@given(piece_texts(tuple(TOK.pieces) + ("I", ", O", "a")))
def test_piece_tokenizer_round_trips_what_it_can_write(text):
    tok = PieceTokenizer([*TOK.pieces, "I", ", O", "a"])
    assert tok.decode(tok.encode(text)) == text


def test_piece_tokenizer_is_greedy_and_names_what_it_cannot_write(tmp_path):
    tok = PieceTokenizer(["a", "ab", "abc", "c"])
    assert tok.encode("abcab") == [2, 1] and tok.encode("ac") == [0, 3]
    with pytest.raises(ValueError, match=r"position 2 \('x'\) starts with none"):
        tok.encode("abx")
    with pytest.raises(ValueError, match="appears twice"):
        PieceTokenizer(["a", "a"])
    tok.save(tmp_path / "t.json")
    assert load_tokenizer(tmp_path / "t.json") == tok


# ----------------------------------------------------------------------------- episodes
def test_an_episode_is_a_consistent_mapping_written_as_figure_7_1():
    gen = np.random.default_rng(0)
    for _ in range(50):
        e = sample_episode(TASK, gen)
        assert len(set(e.inputs)) == len(e.inputs) == len(set(e.labels)) and len(e.inputs) in TASK.ways  # fmt: skip
        assert all(dict(e.pairs)[x] == y for x, y in e.pairs)  # one label per input
        assert e.text.startswith(f"I: {e.pairs[0][0]}, O: {e.pairs[0][1]}, I: ")
        ids = TOK.encode(e.text)
        assert len(ids) == 2 * TASK.pairs and TOK.decode(ids) == e.text
        assert [TOK.decode([i]) for i in ids[:2]] == [f"I: {e.pairs[0][0]}, O:", f" {e.pairs[0][1]}, "]  # fmt: skip


def test_labels_mean_nothing_across_episodes():
    """The label of a letter is uniform over the ten digits: only the context tells it."""
    gen = np.random.default_rng(1)
    labels = Counter()
    for _ in range(3000):
        e = sample_episode(TASK, gen)
        labels.update(y for x, y in zip(e.inputs, e.labels, strict=True) if x == "a")
    counts = np.array([labels[d] for d in TASK.labels])
    expected = counts.sum() / 10
    assert ((counts - expected) ** 2 / expected).sum() < 27.9  # chi-square, 9 dof, p = 0.001


def test_trainer_blocks_are_whole_episodes():
    from minigen.text.fewshot.icl import EpisodeTrainer

    cfg, tc = icl_recipe(fast=True)
    train, val = make_splits(TASK, 40, 10, seed=0)
    trainer = EpisodeTrainer(cfg, tc, TOK, train, val)
    x, y = trainer.batch(train, np.random.default_rng(0))
    assert x.shape == y.shape == (tc.batch_size, TASK.block_size)
    questions = {TOK.encode(f"I: {c}, O:")[0] for c in TASK.inputs}
    assert set(x[:, 0]) <= questions  # every block starts on an episode's first question
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    answers = {TOK.encode(f" {d}, ")[0] for d in TASK.labels}
    assert set(y[:, -1]) <= answers  # and ends on its last answer


# ----------------------------------------------------------------------------- measures
@pytest.fixture(scope="module")
def shipped():
    model, tokenizer, ck = load_gpt(ICL_CHECKPOINT)
    return model, tokenizer, ck


def test_ideal_reader_and_chance_at_zero_shots(shipped):
    """With no shot nothing is known: chance 1/n for the reader; with a shot a 2-way reader
    knows everything (the query's label, or the other one)."""
    model = shipped[0]
    two = shot_accuracy(model, TASK, 2, episodes=200)
    assert two.ideal[0] == 0.5 and (two.ideal[1:] == 1).all()
    four = shot_accuracy(model, TASK, 4, episodes=200)
    # P(right | m letters seen) = m/n + 1{m < n}/n, with E[m_k] = n (1 - (1 - 1/n)^k) and
    # P(m_k = n) = sum_j (-1)^j C(n, j) (1 - j/n)^k (inclusion-exclusion): 4 sigma of 200
    k = np.arange(MAX_SHOTS + 1)
    all_seen = sum((-1) ** j * comb(4, j) * (1 - j / 4) ** k for j in range(5))
    exact = (1 - 0.75**k) + (1 - all_seen) / 4
    assert four.ideal[0] == 0.25
    np.testing.assert_allclose(four.ideal, exact, atol=4 * np.sqrt(0.25 / 200))
    # the labels are a random permutation: any rule scores 1/n at 0 shots (3 sigma)
    for r, n in ((two, 2), (four, 4)):
        assert abs(r.ranked[0] - 1 / n) < 3 * np.sqrt(1 / n * (1 - 1 / n) / 200)


def test_shipped_model_learns_in_context(shipped):
    model, tokenizer, ck = shipped
    size = sum(p.stat().st_size for p in ICL_CHECKPOINT.iterdir())
    assert size <= 5 * 2**20, f"the shipped checkpoint is {size / 2**20:.1f} MiB"
    assert tokenizer == TOK and model.config.block_size == TASK.block_size
    two = shot_accuracy(model, TASK, 2, episodes=300, seed=5)
    assert two.ranked[MAX_SHOTS] >= 0.9 and two.greedy[MAX_SHOTS] >= 0.9
    assert two.ranked[MAX_SHOTS] > two.ranked[0] + 0.3
    four = shot_accuracy(model, TASK, 4, episodes=300, seed=5)
    assert four.ranked[MAX_SHOTS] > four.ranked[1] > four.ranked[0]
    assert ck.meta["curve"][-1]["step"] == ck.train_config["max_iters"]


def test_shipped_model_looks_up_the_letter_in_two_steps(shipped):
    """Block 2 finds the earlier questions of the query's letter; block 1 gives the query the
    answers of that letter. Each is necessary; the textbook induction read (block 2 on the
    same-letter answers) is not."""
    model = shipped[0]
    where = query_attention(model, TASK)  # (block, head, group)
    assert where.shape == (2, 4, 4) and (where.sum(-1) <= 1 + 1e-5).all()
    assert where[1, :, 0].max() > 0.5  # a block-2 head on the same-letter questions
    full = ablation(model, TASK)
    assert full >= 0.8
    assert ablation(model, TASK, 0, 1) < full / 2  # block 1 without the same-letter answers
    assert ablation(model, TASK, 1, 0) < full - 0.3  # block 2 without the same-letter questions
    assert abs(ablation(model, TASK, 1, 1) - full) < 0.05  # block 2, same-letter answers


# ----------------------------------------------------------------------------- training
def test_train_icl_writes_an_inference_checkpoint(tmp_path):
    cfg, tc = icl_recipe(fast=True)
    trainer = train_icl(tmp_path / "icl", cfg, tc, progress=False, curve_every=10)
    names = sorted(p.name for p in (tmp_path / "icl").iterdir())
    assert names == ["config.json", "loss.png", "model.safetensors", "tokenizer.json"]
    assert [p["step"] for p in trainer.meta["curve"]] == [10, 20]
    model, tok, ck = load_gpt(tmp_path / "icl")
    assert tok == TOK and ck.meta["curve"] == trainer.meta["curve"]
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        train_icl(tmp_path / "icl", cfg, tc, progress=False)


def test_eval_icl_command_prints_the_table(tmp_path, capsys):
    assert main(["eval-icl", "--episodes", "50", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2-way ranked" in out and "4-way ideal" in out and "same-letter questions" in out
    for name in ("shots.png", "attention.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_episode_ids_stack_equal_episodes():
    gen = np.random.default_rng(2)
    eps = [sample_episode(TASK, gen, 3, 9) for _ in range(4)]
    ids = episode_ids(TOK, eps)
    assert ids.shape == (4, 18) and [TOK.decode(r) for r in ids] == [e.text for e in eps]


# ----------------------------------------------------------------------------- the circuit
def test_seen_queries_groups_partition_the_positions_before_the_query():
    ids, groups = seen_queries(TASK, 30, seed=4)
    assert ids.shape == (30, 18) and groups.shape == (30, len(GROUPS), 16)
    assert (groups.sum(1) == 1).all()  # every position in exactly one group
    q = ids[:, 16:17]
    np.testing.assert_array_equal(groups[:, 0, 0::2], ids[:, 0:16:2] == q)
    assert groups[:, 0].any(1).all()  # the query's letter was seen
    np.testing.assert_array_equal(groups[:, 1, 1::2], groups[:, 0, 0::2])


def test_forward_with_attention_is_the_model_and_edits_take_effect():
    from minigen import rng
    from minigen.tensor import no_grad
    from minigen.text import GPT

    rng.manual_seed(0)
    model = GPT(icl_recipe(fast=True)[0]).eval()
    ids = seen_queries(TASK, 5)[0][:, :-1]
    with no_grad():
        want = model(ids).data
    np.testing.assert_allclose(forward_with_attention(model, ids), want, atol=1e-5)

    def only_self(layer, att):  # every position attends to itself: no mixing at all
        return np.broadcast_to(np.eye(att.shape[-1], dtype=att.dtype), att.shape)

    other = ids.copy()
    other[:, 0] = (ids[:, 0] + 1) % len(TASK.inputs)  # another first question
    # without mixing, a position's logits depend on its own token and position only
    np.testing.assert_allclose(
        forward_with_attention(model, other, only_self)[:, 1:],
        forward_with_attention(model, ids, only_self)[:, 1:],
        atol=1e-5,
    )
    assert not np.allclose(forward_with_attention(model, other)[:, 1:], want[:, 1:], atol=1e-4)
