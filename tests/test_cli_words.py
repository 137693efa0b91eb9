"""Help texts print values, not Python objects; an unknown word is answered with the known
ones a typo away (by edit distance), or with none rather than a guess."""

from __future__ import annotations

import re

import pytest

from minigen import checks
from minigen.cli import build_parser


# ----------------------------------------------------------------------------- help and words
def test_help_texts_print_values_not_python_objects():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        text = parser.format_help()  # a dict's or a tuple's repr: {'clip': 100.0}, ('a', 'b')
        assert not re.search(r"\{['\"]|['\"]: |\(['\"]", text), (name, text)
    assert "(default: clip 100, cfg 3, none 0)" in " ".join(
        sub.choices["text2im"].format_help().split()
    )


def test_an_unknown_caption_word_gets_the_words_a_typo_away_or_none(capsys):
    from minigen.synthesis import captions

    with pytest.raises(ValueError) as err:
        captions.words("a purple circle")
    assert "closest" not in str(err.value) and "red green blue" in str(err.value)
    for typo, word in [("circel", "circle"), ("bleu", "blue"), ("rde", "red"), ("sqare", "square")]:
        with pytest.raises(ValueError, match=f"closest: {word};"):
            captions.words(f"a {typo}")


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [("", "", 0), ("", "abc", 3), ("kitten", "sitting", 3), ("rde", "red", 1), ("ab", "ba", 1),
     ("purple", "circle", 3), ("ca", "abc", 3), ("flaw", "lawn", 2)],
)  # fmt: skip
def test_edit_distance_known_values(a, b, d):
    assert checks.edit_distance(a, b) == d == checks.edit_distance(b, a)


def test_closest_needs_a_typo_not_a_guess():
    vocab = ["red", "green", "circle", "a"]
    assert checks.closest("purple", vocab) == []
    assert checks.closest("x", vocab) == []  # one character is one edit from any other
    assert checks.closest("gren", vocab) == ["green"] and checks.closest("red", vocab) == []
