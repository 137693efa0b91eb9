"""Solutions to lesson 03's exercises (few-shot prompts)."""

import re


def my_build_prompt(demos: list[tuple[str, str]], query: str) -> str:
    pairs = [f"I: {x}, O: {y}" for x, y in demos]
    return ", ".join([*pairs, f"I: {query}, O:"])


def my_ideal_reader(order: list[int], n: int, k: int) -> float:
    seen = set(order[:k])
    return 1.0 if order[k] in seen else 1.0 / (n - len(seen))


def my_pieces(text: str) -> list[str]:
    return re.findall(r"I: [^,]*, O:| [^,]*, ", text)
