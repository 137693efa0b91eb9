"""In-context learning (minigen.text.icl): the episodes, their tokens, the trainer's blocks,
the accuracy-against-shots measure, and the small model shipped in minigen/assets/icl-gpt."""

from __future__ import annotations

from collections import Counter
from math import comb

import numpy as np
import pytest
from hypothesis import given

from minigen.cli import main
from minigen.text import load_gpt
from minigen.text.icl import (
    ICL_CHECKPOINT,
    MAX_SHOTS,
    ICLTask,
    episode_ids,
    head_scores,
    icl_recipe,
    make_splits,
    sample_episode,
    shot_accuracy,
    train_icl,
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
    from minigen.text.icl import EpisodeTrainer

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


def test_shipped_model_has_an_induction_head(shipped):
    scores = head_scores(shipped[0], TASK)  # (layer, head, [previous token, induction])
    assert scores.shape == (2, 4, 2) and ((scores >= 0) & (scores <= 1 + 1e-6)).all()
    assert scores[0, :, 0].max() > 0.5  # layer 1: an answer attends to its own question
    assert scores[1, :, 1].max() > 0.5  # layer 2: a question attends to its earlier answers


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
    assert "2-way ranked" in out and "4-way ideal" in out and "induction" in out
    for name in ("shots.png", "attention.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_episode_ids_stack_equal_episodes():
    gen = np.random.default_rng(2)
    eps = [sample_episode(TASK, gen, 3, 9) for _ in range(4)]
    ids = episode_ids(TOK, eps)
    assert ids.shape == (4, 18) and [TOK.decode(r) for r in ids] == [e.text for e in eps]
