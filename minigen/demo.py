"""`minigen demo`: a short tour of what minigen does, each step writing a figure.

Step 1 (the foundation): a small MLP learns to separate two interleaved spirals;
the tour writes its decision boundary. Step 2 (§7.1): a character-level GPT trains on
the standard library's sources, writes its loss curve and a sample, and is kept in gpt/.
Steps 3-4 (§7.2): a short denoising-diffusion run on two moons, then digits and Figure 7.2
sampled from the shipped checkpoint. Step 5 (§7.2, text to image): scenes for a caption,
sampled with CLIP guidance and with classifier-free guidance from the shipped checkpoints,
side by side, each scored by the checker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import minigen
from minigen import Tensor, nn, no_grad, optim
from minigen import functional as F
from minigen.plotting import plot_losses, save_figure
from minigen.toy2d import spirals

__all__ = ["MLP", "train_classifier", "plot_decision_boundary", "run"]


class MLP(nn.Module):
    """x -> Linear -> ReLU -> ... -> Linear: logits for `classes` classes."""

    def __init__(self, sizes: list[int]) -> None:
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with no_grad():
        return float((model(Tensor(X)).data.argmax(-1) == y).mean())


def train_classifier(
    X: np.ndarray,
    y: np.ndarray,
    hidden: int = 64,
    steps: int = 1500,
    lr: float = 1e-2,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> tuple[MLP, list[float]]:
    """Train an MLP classifier with AdamW and warm-up + cosine decay; returns (model, losses)."""
    minigen.manual_seed(seed)
    classes = int(y.max()) + 1
    model = MLP([X.shape[1], hidden, hidden, hidden, classes])
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = np.random.default_rng(seed)
    losses = []
    bar = tqdm(range(steps), desc="MLP on spirals", disable=not progress, leave=False)
    for step in bar:
        idx = gen.integers(0, len(X), batch_size)
        opt.set_lr(optim.warmup_cosine(step, lr, steps // 20, steps, lr / 20))
        loss = F.cross_entropy(model(Tensor(X[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    return model, losses


def plot_decision_boundary(model: nn.Module, X: np.ndarray, y: np.ndarray, title: str = "") -> Any:
    """A figure: the predicted class over the plane, with the data on top."""
    import matplotlib.pyplot as plt

    lo, hi = X.min(0) - 0.2, X.max(0) + 0.2
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)  # (40000, 2)
    with no_grad():
        pred = model(Tensor(grid)).data.argmax(-1).reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.contourf(gx, gy, pred, alpha=0.3, cmap="coolwarm")
    ax.scatter(X[:, 0], X[:, 1], c=y, s=6, cmap="coolwarm", edgecolors="none")
    ax.set_title(title)
    ax.set_aspect("equal")
    return fig


def run(out_dir: str | os.PathLike = "minigen-demo", fast: bool = False, seed: int = 0) -> dict:
    """Run the tour; returns a summary dict (figures written, accuracies)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}

    print("[1] An MLP trained with minigen's autograd separates two spirals")
    X, y = spirals(2000, seed=seed)
    Xte, yte = spirals(1000, seed=seed + 1)
    model, losses = train_classifier(X, y, steps=400 if fast else 1500, seed=seed)
    acc = accuracy(model, Xte, yte)
    title = f"MLP decision boundary (test accuracy {acc:.1%})"
    path = save_figure(plot_decision_boundary(model, Xte, yte, title), out / "mlp_spirals.png")
    print(f"    final loss {np.mean(losses[-50:]):.3f}, test accuracy {acc:.1%} -> {path}")
    summary["mlp_test_accuracy"] = acc
    summary["figures"] = [str(path)]

    print("[2] A GPT learns Python from the standard library's sources, then writes some (§7.1)")
    summary.update(gpt_step(out, fast, seed))
    summary["figures"].append(summary.pop("gpt_figure"))
    _diffusion_steps(out, fast, seed, summary)
    _text2im_step(out, fast, seed, summary)
    return summary


def gpt_step(out: Path, fast: bool, seed: int, steps: int | None = None) -> dict[str, Any]:
    """Train a small character-level GPT on the stdlib corpus; write its loss curve, sample."""
    from minigen import text as mt
    from minigen.text.gpt_io import save_checkpoint

    corpus = mt.stdlib_corpus(300_000 if fast else 1_500_000)
    tok = mt.CharTokenizer.from_text(corpus)
    ids = np.array(tok.encode(corpus))
    config = mt.GPTConfig(tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64)
    steps = (250 if fast else 1500) if steps is None else steps
    tc = mt.TrainConfig(steps, batch_size=12, warmup_iters=steps // 10, eval_interval=0, seed=seed)
    trainer = mt.Trainer(config, tc, tok, *mt.train_val_split(ids))
    trainer.run()
    h = trainer.history
    fig = plot_losses(h["loss"], ylabel=mt.LOSS_LABEL, estimates=h["eval"])
    path = save_figure(fig, out / "gpt_loss.png")
    sample = mt.generate(trainer.model, tok, "def ", 160, temperature=0.8, top_k=20)
    val = trainer.history["eval"][-1]["val"]
    meta = {"corpus": "stdlib", "tokenizer": "char"}
    ckpt = save_checkpoint(out / "gpt", trainer.model, tok, tc, meta=meta)  # kept, to sample
    print(f"    {config.num_params():,} parameters, val loss {val:.3f} -> {path}")
    print("    sample: " + ("def " + sample).replace("\n", "\n            "))
    print(f"    the model is kept in {ckpt}: minigen generate --ckpt {ckpt} --prompt 'def '")
    return {"gpt_val_loss": val, "gpt_sample": "def " + sample, "gpt_figure": str(path),
            "gpt_checkpoint": str(ckpt)}  # fmt: skip


def _diffusion_steps(out: Path, fast: bool, seed: int, summary: dict[str, Any]) -> None:
    """§7.2: train a 2-D denoiser briefly; sample digits and Figure 7.2 from the shipped model."""
    from minigen.diffusion import pipeline, plots, training
    from minigen.toy2d import two_moons

    print("[3] Denoising diffusion (§7.2) learns the density of two moons")
    cfg = training.TrainConfig(data="moons", steps=300 if fast else 3000, seed=seed)
    res = training.train(cfg)
    model = pipeline.DiffusionModel.from_training(res)
    s = model.sample(1000, sampler="ddim", steps=50, seed=seed)
    title = f"1000 samples after {cfg.steps} training steps (DDIM, 50 steps)"
    fig = plots.plot_points(s.x, two_moons(1000, seed=seed + 1)[0], title)
    p2 = save_figure(fig, out / "diffusion_moons.png")
    print(
        f"    {cfg.steps} steps in {res.seconds:.0f}s, final loss {np.mean(res.losses[-100:]):.3f} -> {p2}"
    )

    print("[4] Digits sampled from the shipped checkpoint, and Figure 7.2")
    digits = pipeline.load("digits")
    s = digits.sample(40, sampler="ddim", steps=20 if fast else 50, seed=seed)
    p3 = save_figure(plots.image_grid(s.x, title="40 samples (DDIM)"), out / "diffusion_digits.png")
    sampler, steps = ("ddim", 50) if fast else ("ddpm", None)  # Eq. 7.1 over all T steps
    t = digits.sample(8, sampler=sampler, steps=steps, seed=seed, record=10)
    p4 = save_figure(plots.figure_7_2(t.trajectory, t.frame_t), out / "figure_7_2.png")
    print(f"    -> {p3}\n    Figure 7.2 ({sampler.upper()}, {t.num_steps} steps) -> {p4}")
    summary["figures"] += [str(p2), str(p3), str(p4)]


def _text2im_step(out: Path, fast: bool, seed: int, summary: dict[str, Any]) -> None:
    """§7.2, text to image: one caption sampled by CLIP guidance and by classifier-free
    guidance from the shipped checkpoints, from the same noise, side by side and scored."""
    from minigen.synthesis import DEFAULT_SCALE, Text2Im, plot_side_by_side, score_batch

    caption = "a red circle above a blue square"
    print(f"[5] Text to image (§7.2): {caption!r}, CLIP guidance beside classifier-free guidance")
    steps, n = (50, 4) if fast else (100, 8)
    t2i, rows = Text2Im(), []
    for method, name in (("clip", "CLIP guidance"), ("cfg", "classifier-free")):
        s = DEFAULT_SCALE[method]
        x = t2i.sample(caption, n, method=method, scale=s, sampler="ddpm", steps=steps, seed=seed)
        scores = score_batch(x, [caption] * n, value_range=(-1.0, 1.0))
        rows.append((f"{name}\n{'s' if method == 'clip' else 'w'} = {s:g}", x, scores))
        summary[f"text2im_{method}_score"] = float(scores.mean())
        print(f"    {name}: {scores.mean():.0%} of the caption's properties hold on average")
    path = save_figure(plot_side_by_side(rows, caption), out / "text2im.png")
    print(f"    DDPM {steps} steps, {n} images each, the same noise for both -> {path}")
    summary["figures"].append(str(path))
