"""Few-shot prediction (§7.1, Figure 7.1): a task given as a handful of examples in the prompt.

A language model trained on enough text continues

    I: I love apples, O: positive, I: music is my passion, O: positive,
    I: my job is boring, O: negative, I: frozen pizzas are awesome, O:

with " positive,": from k demonstrations (x_i, y_i) and a query x, the prompt is

    prompt(x) = "I: x_1, O: y_1, ... , I: x_k, O: y_k, I: x, O:"

and the prediction is the greedy continuation, argmax_v p(v | prompt, tokens so far) one token
at a time, up to the separator:

    y_hat(x) = continuation of prompt(x) up to the first ","  (stripped)

Scoring a labelled set {(x_j, y_j)} with the same demonstrations gives the accuracy
(1/m) sum_j [y_hat(x_j) = y_j]. No weight changes: the task is read from the context.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from minigen.text.sampling import generate_ids

__all__ = [
    "PromptFormat",
    "FIGURE_7_1",
    "FewShotPrompt",
    "Prediction",
    "build_prompt",
    "predict",
    "score",
    "load_prompts",
    "prompt_names",
    "show",
]

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "fewshot"


@dataclass(frozen=True)
class PromptFormat:
    """How a demonstration is written: input_prefix x separator output_prefix y."""

    input_prefix: str = "I: "
    output_prefix: str = "O: "
    separator: str = ", "

    @property
    def stop(self) -> str:
        """Where an answer ends: the separator without its spaces (",")."""
        return self.separator.strip() or self.separator

    def pair(self, x: str, y: str) -> str:
        return f"{self.input_prefix}{x}{self.separator}{self.output_prefix}{y}"

    def query(self, x: str) -> str:
        # the prompt ends on "O:", the space is the model's to write (GPT-2 writes " positive")
        return f"{self.input_prefix}{x}{self.separator}{self.output_prefix.rstrip()}"


FIGURE_7_1 = PromptFormat()


@dataclass(frozen=True)
class FewShotPrompt:
    """Demonstrations, a query and (optionally) the expected answer."""

    demos: tuple[tuple[str, str], ...]
    query: str
    label: str | None = None
    name: str = ""


@dataclass
class Prediction:
    """What the model wrote after the prompt: `continuation` (up to and with the stop, what
    Figure 7.1 shows in bold), `answer` (before the stop, stripped), and the expected label."""

    prompt: str
    continuation: str
    answer: str
    label: str | None = None
    tokens: list[int] = field(default_factory=list)

    @property
    def correct(self) -> bool | None:
        return None if self.label is None else self.answer == self.label.strip()


def build_prompt(
    demos: Sequence[tuple[str, str]], query: str, fmt: PromptFormat = FIGURE_7_1
) -> str:
    """'I: x_1, O: y_1, ..., I: x_k, O: y_k, I: query, O:' (Figure 7.1's prompt)."""
    return fmt.separator.join([*(fmt.pair(x, y) for x, y in demos), fmt.query(query)])


def predict(
    model: Any,
    tokenizer: Any,
    demos: Sequence[tuple[str, str]],
    query: str,
    label: str | None = None,
    fmt: PromptFormat = FIGURE_7_1,
    max_new_tokens: int = 16,
) -> Prediction:
    """Greedy continuation of the few-shot prompt, up to the separator (or max_new_tokens).
    A prompt longer than the model's context is refused (cropping it would drop demos)."""
    prompt = build_prompt(demos, query, fmt)
    ids = tokenizer.encode(prompt)
    if len(ids) > model.config.block_size:
        raise ValueError(
            f"the prompt is {len(ids)} tokens, the model's context {model.config.block_size}: "
            f"give fewer demonstrations ({len(demos)} here)"
        )
    new: list[int] = []
    text = ""
    for tok in generate_ids(model, ids, max_new_tokens, temperature=0.0):
        new.append(int(tok[0]))
        text = tokenizer.decode(new)
        if fmt.stop in text:
            text = text[: text.index(fmt.stop) + len(fmt.stop)]
            break
    answer = text.split(fmt.stop, 1)[0].strip()
    return Prediction(prompt, text, answer, label, new)


def score(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[FewShotPrompt],
    fmt: PromptFormat = FIGURE_7_1,
    max_new_tokens: int = 16,
) -> tuple[float, list[Prediction]]:
    """(accuracy over the prompts that have a label, every prediction)."""
    preds = [predict(model, tokenizer, p.demos, p.query, p.label, fmt, max_new_tokens) for p in prompts]  # fmt: skip
    graded = [p.correct for p in preds if p.correct is not None]
    return (float(np.mean(graded)) if graded else float("nan")), preds


# ----------------------------------------------------------------------------- prompt files
def prompt_names() -> list[str]:
    """The example files shipped with minigen (`load_prompts` takes these names)."""
    return sorted(p.stem for p in ASSETS.glob("*.json"))


def load_prompts(name_or_path: str | Path) -> list[FewShotPrompt]:
    """Prompts from a JSON file, or a shipped example by name ("figure-7.1"):

        {"prompts": [{"name": "...", "demos": [["x", "y"], ...], "query": "...",
                      "label": "..."}, ...]}

    (`label` and `name` optional). Errors name the file and the entry.
    """
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in prompt_names():
        path = ASSETS / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt file not found: {path} (give a JSON file, or one of: "
            f"{', '.join(prompt_names())})"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    entries = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{path}: expected {{"prompts": [...]}} with at least one prompt')
    out = []
    for i, e in enumerate(entries):
        where = f"{path}: prompts[{i}]"
        demos = e.get("demos") if isinstance(e, dict) else None
        ok = isinstance(demos, list) and all(
            isinstance(d, list) and len(d) == 2 and all(isinstance(s, str) for s in d)
            for d in demos
        )
        if not ok:
            raise ValueError(f"{where}: 'demos' must be a list of [input, output] strings")
        if not isinstance(e.get("query"), str):
            raise ValueError(f"{where}: 'query' must be a string")
        label = e.get("label")
        if label is not None and not isinstance(label, str):
            raise ValueError(f"{where}: 'label' must be a string")
        demo_pairs = tuple((x, y) for x, y in demos)
        out.append(FewShotPrompt(demo_pairs, e["query"], label, str(e.get("name", ""))))
    return out


# ----------------------------------------------------------------------------- terminal
def _use_ansi(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def show(pred: Prediction, stream: TextIO, bold: bool | None = None) -> None:
    """Write the prompt, then the model's continuation in bold (ANSI, on a terminal only),
    as Figure 7.1 prints it; a mark after it when the prediction is graded."""
    bold = _use_ansi(stream) if bold is None else bold
    cont = f"\033[1m{pred.continuation}\033[0m" if bold else pred.continuation
    mark = {True: "  [correct]", False: f"  [expected {pred.label}]", None: ""}[pred.correct]
    stream.write(f"{pred.prompt}{cont}{mark}\n")
