"""A synthetic assistant task: requests whose answers a program can check exactly.

The chapter's point (§7.1): a model trained on "novels, encyclopedias, forum messages" does not
follow "the statistics of a helpful dialog with an assistant". This module builds a small world
where that is literally true, so that the whole RLHF pipeline runs on two CPU cores:

- **requests** of five kinds, each with exactly one right answer:

      Q: which is bigger, 3 or 8?\\nA:   8       (two different digits)
      Q: reverse pots\\nA:            stop          (a 3-5 letter word)
      Q: sort 5 2 9 1\\nA:            1 2 5 9       (3 or 4 digits)
      Q: how many a in banana?\\nA:   3             (a letter, a word)
      Q: shout cat\\nA:               CAT

- **forum replies**: the pretraining corpus answers each request the way a forum would, in one
  of six styles (`STYLES`): helpful (right, polite, short), wrong (polite but wrong), rude but
  right, rude, unhelpful, and rambling. A model trained on it answers the same way.

A reply is the text between "A:" and the next newline ("\\n" ends every reply). Prompts are
split once and for all into training and held-out prompts by a hash of their text
(`is_held_out`), so the evaluation asks questions no stage of training has seen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

__all__ = [
    "KINDS", "STYLES", "WORDS", "Request", "sample_request", "parse_prompt", "is_held_out",
    "sample_requests", "forum_reply", "forum_exchange", "forum_corpus", "alphabet",
]  # fmt: skip

KINDS = ("bigger", "reverse", "sort", "count", "shout")

# 3-5 letter words, none a palindrome (so "reverse" always changes the word)
WORDS = tuple(
    """
    ant ape arm art bag bat bed bee bell bird boat bone book bowl box bread brick brush bus
    cake camp cap car card cart cat chair chalk cloud coat cook corn cow crab crow cup
    desk dog door dove drum duck dust ear egg elf elm fan farm fish flag fog fork fox frog
    game gate gift goat gold golf grape grass hand hat hen hill horn horse hut ink iron jam
    jar jet key kid king kite lamb lamp leaf leg lime lion lip lock log map milk mint mole
    moon moth mouse mud mug nail nest net nose nut oak oar owl pan park pea pear pen pie pig
    pin pipe plum pond pot pots rain rat rice ring road robe rock roof rope rose rug salt
    sand seal seed ship shoe silk sink sky snow soap sock sofa soup star stop sun swan
    table tent tie toad toe tool toy tree tub van vase vine wall wasp web well whale wind
    wing wolf wood worm yak yarn zoo
    """.split()
)

RUDE_WORDS = ("idiot", "stupid", "lazy", "lol", "ugh", "yourself", "google")


@dataclass(frozen=True)
class Request:
    """One request: its kind, its argument as written in the prompt, and the right answer.

    `echo` is the argument as a reply may quote it back ("3 or 8", "pots", "5 2 9 1"); the
    rater ignores a quoted argument when it looks for the reply's answer.
    """

    kind: str
    echo: str
    answer: str
    text: str  # the request as the user writes it, e.g. "which is bigger, 3 or 8?"

    @property
    def prompt(self) -> str:
        """What the model is given: "Q: <request>\\nA:"; the reply follows."""
        return f"Q: {self.text}\nA:"


def _make(kind: str, *args: object) -> Request:
    if kind == "bigger":
        a, b = args
        return Request(kind, f"{a} or {b}", str(max(a, b)), f"which is bigger, {a} or {b}?")
    if kind == "reverse":
        (w,) = args
        return Request(kind, w, w[::-1], f"reverse {w}")
    if kind == "sort":
        digits = " ".join(str(d) for d in args)
        answer = " ".join(str(d) for d in sorted(args))
        return Request(kind, digits, answer, f"sort {digits}")
    if kind == "count":
        letter, w = args
        return Request(kind, w, str(w.count(letter)), f"how many {letter} in {w}?")
    if kind == "shout":
        (w,) = args
        return Request(kind, w, w.upper(), f"shout {w}")
    raise ValueError(f"unknown request kind {kind!r}; choose one of {', '.join(KINDS)}")


def parse_prompt(prompt: str) -> Request:
    """The request a prompt asks (the inverse of `Request.prompt`), or a ValueError."""
    if not (prompt.startswith("Q: ") and prompt.endswith("\nA:")):
        raise ValueError(f"not a prompt of the assistant task (Q: ...\\nA:): {prompt!r}")
    text = prompt[3:-3]
    words = text.split()
    try:
        if text.startswith("which is bigger, ") and text.endswith("?") and len(words) == 6:
            return _make("bigger", int(words[3]), int(words[5][:-1]))
        if words[0] == "reverse" and len(words) == 2:
            return _make("reverse", words[1])
        if words[0] == "sort" and len(words) > 1:
            return _make("sort", *(int(d) for d in words[1:]))
        if text.startswith("how many ") and text.endswith("?") and len(words) == 5:
            return _make("count", words[2], words[4][:-1])
        if words[0] == "shout" and len(words) == 2:
            return _make("shout", words[1])
    except (ValueError, IndexError):
        pass
    raise ValueError(f"not a request of the assistant task: {text!r}")


def is_held_out(prompt: str, fraction: float = 0.15) -> bool:
    """Whether a prompt belongs to the held-out set: a fixed hash of its text (md5), so the
    split is the same on every machine and in every run."""
    h = int.from_bytes(hashlib.md5(prompt.encode(), usedforsecurity=False).digest()[:4], "little")
    return h / 2**32 < fraction


def sample_request(gen: np.random.Generator, kind: str | None = None) -> Request:
    """One request drawn uniformly: a kind, then its arguments."""
    kind = kind or KINDS[gen.integers(len(KINDS))]
    if kind == "bigger":
        return _make("bigger", *(int(v) for v in gen.choice(10, 2, replace=False)))
    if kind == "sort":
        n = int(gen.integers(3, 5))
        return _make("sort", *(int(v) for v in gen.integers(0, 10, n)))
    w = WORDS[gen.integers(len(WORDS))]
    if kind == "count":  # mostly a letter of the word, sometimes one it lacks (answer 0)
        pool = w if gen.random() < 0.8 else "abcdefghijklmnopqrstuvwxyz"
        return _make("count", pool[gen.integers(len(pool))], w)
    return _make(kind, w)


def sample_requests(n: int, seed: int, held_out: bool = False) -> list[Request]:
    """`n` requests from the training prompts (or the held-out ones), reproducibly."""
    if n < 0:
        raise ValueError(f"sample_requests: n must be >= 0, got {n}")
    gen = np.random.default_rng([seed, int(held_out)])
    out: list[Request] = []
    while len(out) < n:
        r = sample_request(gen)
        if is_held_out(r.prompt) == held_out:
            out.append(r)
    return out


# ----------------------------------------------------------------------------- forum replies

# (style, probability in the forum corpus)
STYLES = {
    "helpful": 0.30,  # right answer, polite, short
    "wrong": 0.20,  # polite, a plausible wrong answer
    "rude_right": 0.10,  # right answer, rude
    "rude": 0.15,  # no answer, rude
    "unhelpful": 0.15,  # no answer, polite
    "ramble": 0.10,  # long, hedging, often wrong
}

# the rater's demonstrations: right and polite, not all of them as short as it likes
DEMOS = (" Sure! It is {a}.", " The answer is {a}.", " It is {a}.", " {a}. Hope this helps!")
HELPFUL = (
    " It is {a}.", " Sure! It is {a}.", " The answer is {a}.", " {a}. Hope this helps!",
    " Sure, {a}.", " That would be {a}. Happy to help!",
)  # fmt: skip
RUDE_RIGHT = (" {a}, obviously. Use your brain.", " lol it is {a}, idiot.", " Ugh. {a}.")
RUDE = (
    " Google it.", " Do it yourself.", " What a stupid question.", " lol, no.",
    " Ask someone else, I am busy.", " Too lazy to answer that.",
)  # fmt: skip
UNHELPFUL = (" No idea.", " Not sure, sorry.", " Why do you ask?", " I would rather not say.")
RAMBLE = (
    " Well, let me think. It might be {a}, or not.",
    " Hmm, my cousin said {a} once, but I forget.",
    " I think it is {a}, but I am often wrong.",
)  # fmt: skip


def wrong_answer(req: Request, gen: np.random.Generator) -> str:
    """A wrong answer, half the time from a misread request (the word as it is, the digits
    unsorted, every letter counted, the smaller digit), otherwise a near miss (off by a
    little, two characters swapped)."""
    if req.kind == "bigger":  # the smaller one
        a, b = (int(v) for v in req.echo.split(" or "))
        return str(min(a, b))
    right = req.answer
    if gen.random() < 0.5:  # misread
        misread = {
            "count": str(len(req.echo)), "sort": req.echo, "reverse": req.echo, "shout": req.echo,
        }[req.kind]  # fmt: skip
        if misread != right:
            return misread
    if req.kind == "count":
        delta = int(gen.choice([-2, -1, 1, 2] if int(right) >= 2 else [1, 2]))
        return str(int(right) + delta)
    chars = list(right.replace(" ", "")) if req.kind == "sort" else list(right)
    for _ in range(10):  # swap two different characters
        i, j = gen.choice(len(chars), 2, replace=False)
        if chars[i] != chars[j]:
            chars[i], chars[j] = chars[j], chars[i]
            break
    else:  # every character is the same ("1 1 1"): change one
        chars[0] = "9" if chars[0] != "9" else "8"
    return " ".join(chars) if req.kind == "sort" else "".join(chars)


def forum_reply(req: Request, style: str, gen: np.random.Generator) -> str:
    """A reply to `req` in one of the forum's `STYLES` (starting with a space, no newline)."""
    pick = lambda options: options[gen.integers(len(options))]  # noqa: E731
    if style == "helpful":
        return pick(HELPFUL).format(a=req.answer)
    if style == "wrong":
        return pick(HELPFUL).format(a=wrong_answer(req, gen))
    if style == "rude_right":
        return pick(RUDE_RIGHT).format(a=req.answer)
    if style == "rude":
        return pick(RUDE)
    if style == "unhelpful":
        return pick(UNHELPFUL)
    if style == "ramble":
        a = req.answer if gen.random() < 0.3 else wrong_answer(req, gen)
        return pick(RAMBLE).format(a=a)
    raise ValueError(f"unknown reply style {style!r}; choose one of {', '.join(STYLES)}")


def forum_exchange(req: Request, gen: np.random.Generator) -> str:
    """A request and a forum reply in a style drawn with the corpus's probabilities."""
    style = list(STYLES)[gen.choice(len(STYLES), p=list(STYLES.values()))]
    return req.prompt + forum_reply(req, style, gen) + "\n"


def forum_corpus(n: int, seed: int) -> list[str]:
    """`n` forum exchanges ("Q: ...\\nA: ...\\n") on training prompts: the pretraining data."""
    gen = np.random.default_rng([seed, 7])
    return [forum_exchange(r, gen) for r in sample_requests(n, seed)]


def alphabet() -> str:
    """Every character a prompt, a forum reply or a demonstration can contain (the
    vocabulary of the character tokenizer, fixed so every stage agrees on it)."""
    return "\n !',.+?:" + "0123456789" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"
