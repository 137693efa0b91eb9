"""What a run reports, in files a reader can quote: the results table with everything that
made it, and the summary of one pipeline run per seed.

    <run>/results.md, results.json     `rlhf eval`: the seed, the machine (CPU threads, BLAS,
                                       NumPy and Numba versions), the reward model's held-out
                                       accuracy, and the table of every policy
    <out>/summary.md, summary.json     `rlhf all --seeds 0,1,2`: each number of the above as
                                       mean ± spread over the seeds (<out>/seed<k>/ each)

The spread is the standard deviation over seeds (n - 1 in the denominator), with the
smallest and the largest value beside it in the JSON.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from minigen.checkpoint import atomic_write
from minigen.rlhf.evaluate import results_table

__all__ = [
    "machine", "reward_summary", "write_results", "read_results", "seed_folder", "summarise_seeds",
    "summary_table", "write_summary", "plot_ppo",
]  # fmt: skip

# the columns of the results table: (title, how a cell prints)
COLUMNS = {
    "rater": ("rater score", ".3f"), "win_vs_sft": ("win rate vs SFT", ".2f"),
    "kl_to_sft": ("KL to SFT (nats)", ".2f"), "rm": ("RM score", "+.2f"),
    "correct": ("correct", ".1%"), "polite": ("polite", ".1%"), "finished": ("finished", ".1%"),
}  # fmt: skip
ACCURACY = ("held_out", "held_out forum", "held_out sampled")  # the reward model's, reported


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the numbers may depend on: CPU threads, BLAS library and version, NumPy, Numba."""
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        threads = os.cpu_count() or 1
    try:
        from threadpoolctl import threadpool_info

        blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')})"
                for i in threadpool_info() if i.get("user_api") == "blas"]  # fmt: skip
    except ImportError:
        blas = []
    return {
        "cpu_threads": threads, "blas": ", ".join(blas) or "unknown", "numpy": np.__version__,
        "numba": _version("numba"), "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
    }  # fmt: skip


def reward_summary(history: Mapping[str, Any] | None) -> dict[str, float]:
    """The reward model's held-out pairwise accuracy (all, forum, sampled) from its history."""
    acc = (history or {}).get("accuracy", {})
    return {k: float(acc[k]) for k in ACCURACY if k in acc}


def _header(seed: int, n: int, prompts: int, mach: Mapping[str, Any], acc: Mapping[str, float]):
    lines = [
        f"{n} responses to {prompts} held-out prompts per model; seed {seed}",
        "",
        f"machine: {mach['cpu_threads']} CPU threads, BLAS {mach['blas']}, NumPy {mach['numpy']}, "
        f"Numba {mach['numba'] or 'not installed'}, Python {mach['python']}, {mach['platform']}",
    ]
    if acc:
        parts = ", ".join(f"{k.split()[-1]} {v:.1%}" for k, v in acc.items() if k != "held_out")
        lines.append(f"reward model: held-out pairwise accuracy {acc['held_out']:.1%} ({parts})")
    return lines


def write_results(run: str | Path, rows: Mapping[str, Any], seed: int, prompts: int,
                  samples: int, reward_history: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """results.md and results.json of `rlhf eval`; returns the Markdown."""
    run, mach, acc = Path(run), machine(), reward_summary(reward_history)
    text = "\n".join([*_header(seed, prompts * samples, prompts, mach, acc), "",
                      results_table(rows), ""])  # fmt: skip
    atomic_write(run / "results.md", text)
    data = {"seed": seed, "eval_prompts": prompts, "eval_samples": samples, "machine": mach,
            "reward_accuracy": acc, "models": dict(rows)}  # fmt: skip
    atomic_write(run / "results.json", json.dumps(data, indent=1))
    return text


def read_results(run: str | Path) -> dict[str, Any]:
    path = Path(run) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `minigen rlhf eval` there first")
    data = json.loads(path.read_text(encoding="utf-8"))
    if "models" not in data:
        raise ValueError(f"{path}: written by an older minigen (no 'models'); rerun `rlhf eval`")
    return data


def seed_folder(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    # the spread: the standard deviation over seeds, sqrt(sum (v - mean)^2 / (n - 1))
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "sd": sd, "min": float(v.min()), "max": float(v.max())}


def summarise_seeds(out: str | Path, seeds: Sequence[int]) -> dict[str, Any]:
    """Mean ± spread over the seeds' runs of the reward model's accuracy and of every cell of
    the results table (the models every seed evaluated)."""
    runs = {k: read_results(seed_folder(out, k)) for k in seeds}
    first = runs[seeds[0]]
    models = [m for m in first["models"] if all(m in r["models"] for r in runs.values())]
    acc = {k: _stats([r["reward_accuracy"][k] for r in runs.values()])
           for k in first["reward_accuracy"] if all(k in r["reward_accuracy"] for r in runs.values())}  # fmt: skip
    rows = {m: {c: _stats([r["models"][m][c] for r in runs.values()])
                for c in COLUMNS if all(c in r["models"][m] for r in runs.values())}
            for m in models}  # fmt: skip
    return {"seeds": list(seeds), "machine": first["machine"], "reward_accuracy": acc,
            "models": rows, "per_seed": {str(k): r for k, r in runs.items()}}  # fmt: skip


def _cell(s: Mapping[str, float], fmt: str) -> str:
    if fmt.endswith("%"):  # percentages: the spread in points
        return f"{s['mean']:{fmt}} ± {100 * s['sd']:.1f}"
    return f"{s['mean']:{fmt}} ± {s['sd']:{fmt.lstrip('+')}}"


def summary_table(summary: Mapping[str, Any]) -> str:
    """The summary as Markdown: the reward model's accuracy, then the results table, each
    cell mean ± standard deviation over the seeds."""
    seeds, mach = summary["seeds"], summary["machine"]
    lines = [f"{len(seeds)} runs of `minigen rlhf all`, seeds {', '.join(map(str, seeds))}; "
             "each cell: mean ± standard deviation over the seeds (of a percentage: in points)",
             "",
             f"machine: {mach['cpu_threads']} CPU threads, BLAS {mach['blas']}, NumPy "
             f"{mach['numpy']}, Numba {mach['numba'] or 'not installed'}", ""]  # fmt: skip
    if summary["reward_accuracy"]:
        lines += ["| reward model, held-out pairwise accuracy | mean ± sd | lowest | highest |",
                  "|---|---|---|---|"]  # fmt: skip
        for k, s in summary["reward_accuracy"].items():
            lines.append(f"| {k.replace('held_out', 'held-out').strip()} | {_cell(s, '.1%')} | "
                         f"{s['min']:.1%} | {s['max']:.1%} |")  # fmt: skip
        lines.append("")
    cols = [c for c in COLUMNS if all(c in r for r in summary["models"].values())]
    lines += ["| model | " + " | ".join(COLUMNS[c][0] for c in cols) + " |",
              "|" + "---|" * (len(cols) + 1)]  # fmt: skip
    for m, r in summary["models"].items():
        lines.append(f"| {m} | " + " | ".join(_cell(r[c], COLUMNS[c][1]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: str | Path, seeds: Sequence[int]) -> str:
    """summary.md and summary.json over the seeds' runs in `out`; returns the Markdown."""
    summary = summarise_seeds(out, seeds)
    text = summary_table(summary)
    atomic_write(Path(out) / "summary.md", text)
    atomic_write(Path(out) / "summary.json", json.dumps(summary, indent=1))
    return text


def plot_ppo(histories: dict[str, list[dict[str, Any]]], path: str | Path | None = None) -> Any:
    """The rater's score, the reward model's score and the KL per PPO iteration, one line per
    run; written to `path` if given. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, h in histories.items():
        it = [r["iter"] for r in h]
        for ax, key in zip(axes, ("rater", "rm", "kl"), strict=True):
            ax.plot(it, [r[key] for r in h], label=name)
    titles = (
        "rater's mean score (never seen by the policy)",
        "reward model's score",
        "KL to SFT (nats)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO iteration")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    if path is not None:
        from minigen.plotting import save_figure

        save_figure(fig, path)
    return fig
