"""§7.1 text synthesis: tokenizers, corpora, the GPT, its training and sampling."""

from minigen.text.bpe import ByteBPETokenizer
from minigen.text.char_tokenizers import CharTokenizer
from minigen.text.corpus import (
    check_corpus_length,
    load_corpus,
    shakespeare_corpus,
    stdlib_corpus,
    train_val_split,
)
from minigen.text.gpt import GPT, PRESETS, GPTConfig, KVCache, flops_per_token, preset
from minigen.text.gpt_io import LOSS_LABEL, load_checkpoint, load_gpt
from minigen.text.hf.gpt2_tokenizer import train_bpe
from minigen.text.sampling import generate, generate_ids, next_token_probs, stream_text
from minigen.text.tokenizers import load_tokenizer, tokenizer_from_dict
from minigen.text.train import TrainConfig, Trainer

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
    "GPT",
    "GPTConfig",
    "PRESETS",
    "preset",
    "flops_per_token",
    "KVCache",
    "Trainer",
    "TrainConfig",
    "load_gpt",
    "load_checkpoint",
    "LOSS_LABEL",
    "generate",
    "stream_text",
    "generate_ids",
    "next_token_probs",
]
