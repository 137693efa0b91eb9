"""§7.1 text synthesis: tokenizers and corpora (the GPT, its training and sampling follow)."""

from minigen.text.corpus import (
    check_corpus_length,
    load_corpus,
    shakespeare_corpus,
    stdlib_corpus,
    train_val_split,
)
from minigen.text.tokenizers import (
    ByteBPETokenizer,
    CharTokenizer,
    load_tokenizer,
    tokenizer_from_dict,
    train_bpe,
)

__all__ = [
    "CharTokenizer",
    "ByteBPETokenizer",
    "train_bpe",
    "load_tokenizer",
    "tokenizer_from_dict",
    "load_corpus",
    "stdlib_corpus",
    "shakespeare_corpus",
    "train_val_split",
    "check_corpus_length",
]
