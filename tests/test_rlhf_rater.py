"""The synthetic assistant task and its simulated rater: exact, deterministic, documented."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigen.rlhf import rater
from minigen.rlhf.task import (
    KINDS,
    STYLES,
    WORDS,
    alphabet,
    forum_corpus,
    forum_reply,
    is_held_out,
    parse_prompt,
    sample_request,
    sample_requests,
)

seeds = st.integers(0, 2**32 - 1)


@given(seeds)
def test_a_prompt_parses_back_to_its_request(seed):
    req = sample_request(np.random.default_rng(seed))
    assert parse_prompt(req.prompt) == req


def test_every_kind_is_drawn_and_no_word_is_a_palindrome():
    reqs = sample_requests(300, 0)
    assert {r.kind for r in reqs} == set(KINDS)
    assert all(w != w[::-1] for w in WORDS)


def test_held_out_prompts_never_reach_training():
    train, held = sample_requests(300, 1), sample_requests(100, 1, held_out=True)
    assert not any(is_held_out(r.prompt) for r in train)
    assert all(is_held_out(r.prompt) for r in held)
    assert not {r.prompt for r in train} & {r.prompt for r in held}


def test_the_corpus_uses_the_alphabet_and_every_exchange_ends_its_reply():
    chars = set(alphabet())
    for ex in forum_corpus(300, 0):
        assert set(ex) <= chars
        prompt, reply = ex.split("\nA:", 1)
        assert reply.endswith("\n") and "\n" not in reply[:-1]


@pytest.mark.parametrize(
    "prompt, response, correct",
    [
        ("Q: which is bigger, 3 or 8?\nA:", " It is 8.\n", True),
        ("Q: which is bigger, 3 or 8?\nA:", " Of 3 or 8, 8.\n", True),  # the quote is no answer
        ("Q: which is bigger, 3 or 8?\nA:", " 8, or 3.\n", False),  # two answers
        ("Q: which is bigger, 3 or 8?\nA:", " It is 3.\n", False),
        ("Q: reverse pots\nA:", " pots reversed is stop.\n", True),
        ("Q: reverse pots\nA:", " It is spot.\n", False),
        ("Q: sort 5 2 9 1\nA:", " Sure! It is 1 2 5 9.\n", True),
        ("Q: sort 1 2 3\nA:", " It is 1 2 3.\n", True),  # already sorted: the answer is the echo
        ("Q: sort 5 2 9\nA:", " It is 2 9 5.\n", False),
        ("Q: how many a in banana?\nA:", " There are 3.\n", True),
        ("Q: shout cat\nA:", " Sure! It is CAT.\n", True),
        ("Q: shout cat\nA:", " It is CAR.\n", False),
    ],
)
def test_the_rater_finds_the_answer(prompt, response, correct):
    assert rater.rate(prompt, response).correct is correct


def test_the_rubric():
    p = "Q: shout cat\nA:"
    assert rater.score(p, " It is CAT.\n") == 1.0
    assert rater.score(p, " lol, CAT.\n") == pytest.approx(0.8)  # rude: no 0.2 for politeness
    assert rater.score(p, " No idea.\n") == pytest.approx(0.5)  # polite, concise, no answer
    assert rater.score(p, " It is CAT.") == 0.0  # never finishes
    # wordier: concise credit falls linearly from len(answer) + 8 to len(answer) + 24 chars
    r = rater.rate(p, " The answer is CAT.\n")  # 19 characters: 8 too many
    assert r.concise == pytest.approx(0.5) and r.score == pytest.approx(0.5 + 0.2 + 0.3 * 0.5)
    # only the text before the first newline counts
    assert rater.score(p, " It is CAT.\nlol idiot") == 1.0


@given(seeds, st.sampled_from(list(STYLES)))
def test_the_rater_is_deterministic(seed, style):
    req = sample_request(np.random.default_rng(seed))
    reply = forum_reply(req, style, np.random.default_rng(seed)) + "\n"
    assert rater.rate(req.prompt, reply) == rater.rate(req.prompt, reply)
    assert rater.demonstrate(req.prompt) == rater.demonstrate(req.prompt)
    assert 0.0 <= rater.score(req.prompt, reply) <= 1.0


@given(seeds)
def test_demonstrations_are_right_and_polite(seed):
    req = sample_request(np.random.default_rng(seed))
    r = rater.rate(req.prompt, rater.demonstrate(req.prompt))
    assert r.finished and r.correct and r.polite and r.score >= 0.75


def test_compare_is_antisymmetric_and_pairs_are_ordered_by_the_rater():
    p = "Q: which is bigger, 2 or 4?\nA:"
    assert rater.compare(p, " It is 4.\n", " Google it.\n") == 1
    assert rater.compare(p, " Google it.\n", " It is 4.\n") == -1
    assert rater.compare(p, " It is 4.\n", " Sure, 4.\n") == 0
    assert rater.compare(p, " It is 4.\n", " Sure! It is 4.\n") == 1  # more concise
    reqs = sample_requests(100, 3)
    pairs = rater.preference_pairs(reqs, seed=5)
    assert pairs == rater.preference_pairs(reqs, seed=5)  # reproducible
    assert all(rater.score(q.prompt, q.chosen) > rater.score(q.prompt, q.rejected) for q in pairs)


@given(seeds, st.integers(2, len(STYLES)))
def test_a_ranking_of_k_replies_gives_every_untied_two_of_them_in_order(seed, k):
    reqs = list({r.prompt: r for r in sample_requests(5, seed % 1000)}.values())  # distinct
    pairs = rater.preference_pairs(reqs, seed=seed, k=k)
    assert pairs == rater.preference_pairs(reqs, seed=seed, k=k)  # reproducible
    for req in reqs:
        mine = [q for q in pairs if q.prompt == req.prompt]
        replies = {q.chosen for q in mine} | {q.rejected for q in mine}
        assert len(replies) <= k and len(mine) <= k * (k - 1) // 2
        # the ordered pairs of those replies are exactly the comparisons the rater does not tie
        redone = rater.ordered_pairs(req.prompt, sorted(replies))
        assert {(q.chosen, q.rejected) for q in redone} == {(q.chosen, q.rejected) for q in mine}
    assert all(rater.score(q.prompt, q.chosen) > rater.score(q.prompt, q.rejected) for q in pairs)
    with pytest.raises(ValueError, match="k must be"):
        rater.preference_pairs(reqs, seed=seed, k=len(STYLES) + 1)


def test_helpful_replies_beat_the_forums_other_styles_on_average():
    gen = np.random.default_rng(0)
    reqs = sample_requests(200, 0)
    mean = {
        s: np.mean([rater.score(r.prompt, forum_reply(r, s, gen) + "\n") for r in reqs])
        for s in STYLES
    }
    assert max(mean, key=mean.get) == "helpful"
    assert mean["rude"] < mean["unhelpful"] and mean["wrong"] < mean["helpful"]


def test_bad_prompts_are_refused_with_the_prompt_named():
    with pytest.raises(ValueError, match="not a prompt"):
        rater.score("which is bigger, 2 or 4?", " 4.\n")
    with pytest.raises(ValueError, match="not a request"):
        rater.score("Q: tell me a joke\nA:", " no.\n")


def _one_slip(a: str, b: str) -> bool:
    """b is a with one character changed, or two neighbouring characters (maybe across a
    space: "1 5" -> "5 1") swapped."""
    if len(a) != len(b):
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    if len(diff) == 1:
        return True
    i, j = diff[0], diff[-1]
    return len(diff) == 2 and j - i <= 2 and a[i] == b[j] and a[j] == b[i]


@given(seeds, st.sampled_from(list(STYLES)))
def test_a_near_miss_has_one_slip_in_its_answer(seed, style):
    gen = np.random.default_rng(seed)
    req = sample_request(gen)
    reply = forum_reply(req, style, gen) + "\n"
    edit = rater.near_miss(req.prompt, reply, np.random.default_rng(seed))
    assert edit == rater.near_miss(req.prompt, reply, np.random.default_rng(seed))  # reproducible
    if edit is None:  # nothing to edit: no digit (bigger, count, sort) or no two letters
        return
    assert edit.endswith("\n") and _one_slip(reply, edit)
    if rater.rate(req.prompt, reply).correct and req.kind != "count":
        # a right answer with a slip in it is wrong (a count may slip to the same number)
        before = rater.rate(req.prompt, reply).answers
        after = rater.rate(req.prompt, edit).answers
        assert after != before or not set(before) & {req.answer}


def test_near_misses_follow_each_prompts_comparisons():
    reqs = list({r.prompt: r for r in sample_requests(40, 2)}.values())
    pairs = rater.preference_pairs(reqs, seed=1, k=3)
    more = rater.with_near_misses(pairs, seed=4)
    assert more == rater.with_near_misses(pairs, seed=4)
    # the rater's own comparisons, in order (a subsequence), and the near misses between them
    it, added = iter(range(len(pairs))), []
    nxt = next(it)
    for q in more:
        if nxt is not None and q == pairs[nxt]:
            nxt = next(it, None)
        else:
            added.append(q)
    assert nxt is None and len(added) > 0
    # each prompt's comparisons stay together (a reward model reads them as one ranking)
    prompts = [q.prompt for q in more]
    starts = [p for i, p in enumerate(prompts) if i == 0 or p != prompts[i - 1]]
    assert len(starts) == len(set(starts))
    for q in more:
        assert rater.score(q.prompt, q.chosen) > rater.score(q.prompt, q.rejected)
    assert all(_one_slip(q.chosen, q.rejected) for q in added)  # a response and its near miss
