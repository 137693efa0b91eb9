"""§7.1 text synthesis: tokenizers and corpora (the GPT, its training and sampling follow)."""

from minigen.text.corpus import (
    check_corpus_length,
    load_corpus,
    shakespeare_corpus,
    stdlib_corpus,
    train_val_split,
)

__all__ = [
    "load_corpus",
    "stdlib_corpus",
    "shakespeare_corpus",
    "train_val_split",
    "check_corpus_length",
]
