"""Figures of in-context learning: accuracy against shots, its emergence during training, and
the attention maps of the two heads of its look-up (`minigen.text.fewshot.icl_circuit`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minigen.text.fewshot.icl import Episode, ICLTask, ShotAccuracy, episode_ids
from minigen.text.fewshot.icl_circuit import GROUPS, query_attention
from minigen.text.gpt import GPT

__all__ = ["accuracy_table", "plot_shot_accuracy", "plot_emergence", "plot_attention"]


# the rows of `accuracy_table`: ShotAccuracy's field -> its name in the table
ROWS = {"ranked": "ranked", "greedy": "greedy", "ideal": "ideal reader"}
ROWS_LEGEND = (
    "ranked: the GPT's likeliest of the n labels; greedy: its likeliest token of all; "
    "ideal reader: knows each label seen in the context, guesses among the unseen"
)


def accuracy_table(results: Sequence[ShotAccuracy]) -> str:
    """A text table: one row per (n-way, score), one column per number of shots."""
    shots = len(results[0].ranked)
    lines = ["shots" + " " * 14 + "".join(f"{k:>6}" for k in range(shots))]
    for r in results:
        for field, name in ROWS.items():
            row = getattr(r, field)
            lines.append(f"{r.n_way}-way {name:<13}" + "".join(f"{v:>6.2f}" for v in row))
    return "\n".join(lines)


def _save_or_return(fig: Any, path: str | Path | None) -> Any:
    if path is None:
        return fig
    from minigen.plotting import save_figure

    return save_figure(fig, path)


def plot_shot_accuracy(results: Sequence[ShotAccuracy], path: str | Path | None = None) -> Any:
    """Accuracy against the number of shots: the model (ranked, solid; greedy, dotted), the
    ideal reader (dashed) and chance 1/n, one colour per task."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, r in enumerate(results):
        k = np.arange(len(r.ranked))
        c = f"C{i}"
        ax.plot(k, r.ranked, "o-", color=c, label=f"{r.n_way}-way, the GPT (ranked)")
        ax.plot(k, r.greedy, ":", color=c, label=f"{r.n_way}-way, the GPT (greedy)")
        ax.plot(k, r.ideal, "--", color=c, alpha=0.6, label=f"{r.n_way}-way, ideal reader")
        ax.axhline(1 / r.n_way, color=c, lw=0.8, alpha=0.4)
    ax.set_xlabel("shots (examples in the prompt)")
    ax.set_ylabel(f"accuracy ({results[0].episodes} held-out mappings)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("In-context learning: accuracy against shots (thin lines: chance)", fontsize=9)
    return _save_or_return(fig, path)


def plot_emergence(curve: Sequence[dict[str, Any]], path: str | Path | None = None) -> Any:
    """Accuracy at 1 and 8 shots against the training step (from `train_icl`'s meta)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    steps = [p["step"] for p in curve]
    for i, n in enumerate((2, 4)):
        for j, (shots, style) in enumerate(((1, ":"), (8, "-"))):
            acc = [p[f"{n}-way"][j] for p in curve]
            ax.plot(steps, acc, style, color=f"C{i}", label=f"{n}-way, {shots} shot{'s' * (shots > 1)}")  # fmt: skip
        ax.axhline(1 / n, color=f"C{i}", lw=0.8, alpha=0.4)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (ranked)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("In-context learning appears during training", fontsize=9)
    return _save_or_return(fig, path)


def plot_attention(
    model: GPT, task: ICLTask, episode: Episode, path: str | Path | None = None
) -> Any:
    """The attention of two heads on one episode (rows: the attending position, columns: the
    attended one): in block 1 the head whose query looks most at the answers of its letter
    (it gathers the answers), in the last block the head whose query looks most at the
    earlier questions of its letter (it finds the letter)."""
    import matplotlib.pyplot as plt

    tok = task.tokenizer()
    ids = episode_ids(tok, [episode])[:, :-1]
    maps = [np.asarray(m)[0] for m in model.attention_maps(ids)]  # L x (H, T, T)
    where = query_attention(model, task, episodes=100)  # (L, H, 4)
    gather = (0, int(where[0, :, 1].argmax()))  # block 1: same-letter answers
    find = (len(maps) - 1, int(where[-1, :, 0].argmax()))  # last block: same-letter questions
    names = [tok.decode([i]).replace(", O:", "").replace("I: ", "I:").strip() for i in ids[0]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4))
    for ax, (layer, head), g in zip(axes, (gather, find), (1, 0), strict=True):
        ax.imshow(maps[layer][head], cmap="Blues", vmin=0, vmax=1)
        ax.set_title(
            f"block {layer + 1}, head {head + 1}: the query's attention on {GROUPS[g]}: "
            f"{where[layer, head, g]:.2f}",
            fontsize=9,
        )
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_xlabel("attended token")
        ax.set_ylabel("attending token")
    fig.tight_layout()
    return _save_or_return(fig, path)
