"""The simulated rater: the stand-in for the people of RLHF, and the only source of feedback.

Ouyang et al. (2022) ask labelers to write responses to prompts and to rank a model's
responses. Here a short, deterministic program does both, by a rubric it applies exactly:

- **finished**: the reply ends (with "\\n") within the length the model was given; a reply
  that runs on is no reply, and scores 0.
- **correct** (0.5): the reply gives the right answer and no other. The rater finds the
  answers a reply gives with a pattern per request kind (numbers for bigger and count, digit
  lists for sort, anagrams of the word for reverse, upper-case words for shout), after
  striking out the request's argument if the reply quotes it ("3 or 8: 8" gives 8).
- **polite** (0.2): no rude word (`RUDE_WORDS`).
- **concise** (0.3): full credit up to len(answer) + 8 characters (" It is stop."), falling
  linearly to none at len(answer) + 24.

    score = 0                                        if the reply does not finish
          = 0.5 correct + 0.2 polite + 0.3 concise   otherwise, in [0, 1]

It writes demonstrations: a right and polite reply in one of four phrasings picked by a hash
of the prompt, as different people would write them (" Sure! It is stop.", " The answer is
stop.", " It is stop.", " stop. Hope this helps!"), most of them wordier than its
comparisons like: judging is easier than demonstrating, and the comparisons carry a
preference the demonstrations do not. It
scores replies, and compares two replies to one prompt (the higher score wins; equal scores
are a tie). The models never see this program: the policy learns from the demonstrations
(SFT) and from the reward model, which learns from the rater's comparisons only.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from minigen.rlhf.task import (
    DEMOS,
    RUDE_WORDS,
    STYLES,
    Request,
    forum_reply,
    parse_prompt,
)

__all__ = [
    "Rating", "Pair", "rate", "score", "compare", "demonstrate", "preference_pairs", "ordered_pairs",
    "near_miss", "with_near_misses",
]  # fmt: skip

W_CORRECT, W_POLITE, W_CONCISE = 0.5, 0.2, 0.3
CONCISE_FREE, CONCISE_ZERO = 8, 24  # characters beyond the answer's own length

_PATTERNS = {
    "bigger": re.compile(r"\d+"),
    "count": re.compile(r"\d+"),
    "sort": re.compile(r"\d(?: \d)+"),
    "reverse": re.compile(r"\b[a-z]+\b"),
    "shout": re.compile(r"\b[A-Z]{2,}\b"),
}
_RUDE = re.compile(r"\b(" + "|".join(RUDE_WORDS) + r")\b", re.IGNORECASE)


@dataclass(frozen=True)
class Rating:
    """The rater's verdict on one reply, with the parts of its score."""

    score: float
    finished: bool
    correct: bool
    polite: bool
    concise: float
    answers: tuple[str, ...]  # the answers the rater found in the reply


@dataclass(frozen=True)
class Pair:
    """A comparison: for `prompt`, the rater preferred `chosen` to `rejected` (both replies
    end with "\\n")."""

    prompt: str
    chosen: str
    rejected: str


def answers_in(req: Request, reply: str) -> tuple[str, ...]:
    """The answers a reply gives to `req`, in order (see the module docstring)."""
    # a quoted argument is not an answer (unless it is the answer: "sort 1 2 3")
    text = reply.replace(req.echo, " ", 1) if req.echo != req.answer else reply
    found = _PATTERNS[req.kind].findall(text)
    if req.kind == "reverse":  # only rearrangements of the word's letters count
        found = [w for w in found if sorted(w) == sorted(req.echo) and w != req.echo]
    return tuple(found)


def rate(prompt: str, response: str) -> Rating:
    """Rate a response (the text generated after the prompt; a finished one contains "\\n",
    and only the text before it counts)."""
    req = parse_prompt(prompt)
    finished = "\n" in response
    reply = response.split("\n", 1)[0]
    found = answers_in(req, reply)
    correct = set(found) == {req.answer}
    polite = _RUDE.search(reply) is None
    excess = len(reply) - len(req.answer) - CONCISE_FREE
    concise = float(np.clip(1 - excess / (CONCISE_ZERO - CONCISE_FREE), 0.0, 1.0))
    # score = 0.5 correct + 0.2 polite + 0.3 concise, and 0 for a reply that runs on
    s = W_CORRECT * correct + W_POLITE * polite + W_CONCISE * concise if finished else 0.0
    return Rating(round(s, 6), finished, correct, polite, concise, found)


def score(prompt: str, response: str) -> float:
    """The rater's score of a response, in [0, 1]."""
    return rate(prompt, response).score


def compare(prompt: str, a: str, b: str) -> int:
    """1 if the rater prefers response a, -1 if b, 0 for a tie."""
    sa, sb = score(prompt, a), score(prompt, b)
    return int(sa > sb) - int(sa < sb)


def demonstrate(prompt: str) -> str:
    """The rater's own response to a prompt: right and polite, in one of four phrasings
    (most of them wordier than its comparisons like), ending with "\n"."""
    req = parse_prompt(prompt)
    h = hashlib.md5(prompt.encode(), usedforsecurity=False).digest()[0]
    return DEMOS[h % len(DEMOS)].format(a=req.answer) + "\n"


def preference_pairs(
    requests: Sequence[Request], seed: int, per_prompt: int = 1, k: int = 2
) -> list[Pair]:
    """Comparisons the rater makes: for each request, `per_prompt` times, `k` forum replies in
    `k` different styles drawn at random, and every two of them ordered by the rater (ties are
    dropped): up to k (k - 1) / 2 comparisons of one prompt, consecutive in the list (the
    ranking of K responses of InstructGPT's labelers)."""
    styles = list(STYLES)
    if not 2 <= k <= len(styles):
        raise ValueError(f"preference_pairs: k must be in [2, {len(styles)}] styles, got {k}")
    gen = np.random.default_rng([seed, 11])
    pairs = []
    for req in requests:
        for _ in range(per_prompt):
            replies = [forum_reply(req, styles[i], gen) + "\n"
                       for i in gen.choice(len(styles), k, replace=False)]  # fmt: skip
            pairs += ordered_pairs(req.prompt, replies)
    return pairs


def ordered_pairs(prompt: str, responses: Sequence[str]) -> list[Pair]:
    """Every two of `responses` to one prompt, ordered by the rater (ties dropped), in the
    order (0, 1), (0, 2), ..., (1, 2), ..."""
    pairs = []
    for i, a in enumerate(responses):
        for b in responses[i + 1 :]:
            c = compare(prompt, a, b)
            if c:
                pairs.append(Pair(prompt, a, b) if c > 0 else Pair(prompt, b, a))
    return pairs


def near_miss(prompt: str, response: str, gen: np.random.Generator) -> str | None:
    """A copy of a response with one small slip in its answer, as a careless writer would
    make it: a digit changed, two neighbouring numbers of a sorted list swapped, or two
    neighbouring letters of the answer word swapped (of any word where the reply gives no
    answer). None if the reply has nothing to edit. The rater then compares the copy with the
    original like any two responses: the copy is sometimes right where the original was wrong.
    """
    req = parse_prompt(prompt)
    body, newline, rest = response.partition("\n")
    if req.kind in ("bigger", "count", "sort"):
        digits = [i for i, c in enumerate(body) if c.isdigit()]
        if not digits:
            return None
        swaps = [i for i in digits if body[i + 1 : i + 3] in {f" {d}" for d in "0123456789"}]
        swaps = [i for i in swaps if body[i] != body[i + 2]]
        if req.kind == "sort" and swaps and gen.random() < 0.5:  # 1 5 2 -> 1 2 5
            i = swaps[gen.integers(len(swaps))]
            return body[:i] + body[i + 2] + " " + body[i] + body[i + 3 :] + newline + rest
        i = digits[gen.integers(len(digits))]
        d = (int(body[i]) + int(gen.integers(1, 10))) % 10
        return body[:i] + str(d) + body[i + 1 :] + newline + rest
    # reverse, shout: two neighbouring letters of the answer word, else of any word
    words = [m.span() for m in _PATTERNS[req.kind].finditer(body)]
    words = [(a, b) for a, b in words if body[a:b] in answers_in(req, body)] or [
        m.span() for m in re.finditer(r"[A-Za-z]{2,}", body)
    ]
    spots = [i for a, b in words for i in range(a, b - 1) if body[i] != body[i + 1]]
    if not spots:
        return None
    i = spots[gen.integers(len(spots))]
    return body[:i] + body[i + 1] + body[i] + body[i + 2 :] + newline + rest


def with_near_misses(pairs: Sequence[Pair], seed: int) -> list[Pair]:
    """The comparisons with, after each prompt's own, those of each of its responses against
    a `near_miss` copy of it (ties dropped). Comparisons of one prompt stay consecutive, so a
    reward model reads them as one ranking. Like a labeler asked "is this reply exactly
    right?", these teach the answer's every character, which the comparisons of differently
    worded replies seldom do."""
    gen = np.random.default_rng([seed, 17])
    out: list[Pair] = []
    for prompt, group in itertools.groupby(pairs, key=lambda p: p.prompt):
        group = list(group)
        out += group
        for r in dict.fromkeys(r for p in group for r in (p.chosen, p.rejected)):
            edited = near_miss(prompt, r, gen)
            if edited is not None and edited != r:
                out += ordered_pairs(prompt, [r, edited])
    return out
