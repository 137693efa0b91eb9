"""CLIP on the captioned scenes: training time and zero-shot retrieval, clean and noised.

    python benchmarks/bench_clip.py                       # train (~5 min on 2 cores), evaluate
    python benchmarks/bench_clip.py --save clip.safetensors
    python benchmarks/bench_clip.py --load clip.safetensors   # evaluate a checkpoint only
    python benchmarks/bench_clip.py --hard-negatives 4        # with 4 minimal edits per image

Retrieval is image -> text on scenes never trained on, at timesteps t (x_t = add_noise(x_0,
eps, t); t = 0 is the clean x_0), for two sets:

- held-out: the test scenes of `make_split` (every caption names a colour-shape or a
  colour-relation-colour combination the training set never shows: zero-shot composition);
- in-dist: fresh scenes of the training distribution (new scenes, seen combinations).

Columns: k-way (own caption vs k - 1 random captions that do not describe the image; chance
1/k), hard (vs k - 1 minimal edits of its own caption: one word changed, a relation reversed,
two colours swapped), top-1 over a batch (chance: the share of the batch's captions that
describe the image). BLAS threads: on a loaded machine, OPENBLAS_NUM_THREADS=1 is faster.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from minigen.synthesis import make_split
from minigen.synthesis.clip import CLIPConfig
from minigen.synthesis.clip_train import (
    in_distribution_scenes,
    load_clip,
    plot_similarity,
    retrieval_accuracy,
    save_clip,
    similarity,
    train_clip,
    training_data,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hard-negatives", type=int, default=0, help="minimal edits per image")
    ap.add_argument("--width", type=int, help="text width and embed_dim (default: CLIPConfig's)")
    ap.add_argument("--n-test", type=int, default=512)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64, help="batch of the top-1 retrieval")
    ap.add_argument("--ts", default="0,100,250,500,750", help="timesteps to evaluate at")
    ap.add_argument("--load", help="evaluate this checkpoint instead of training")
    ap.add_argument("--save", help="write the trained model here (safetensors)")
    ap.add_argument("--figure", help="write a similarity-matrix PNG of 8 held-out scenes here")
    args = ap.parse_args()

    if args.load:
        model = load_clip(args.load)
        cfg = model.config
    else:
        cfg = CLIPConfig()
        if args.width:
            cfg = replace(cfg, width=args.width, embed_dim=args.width)
        data = training_data(cfg, args.n_train)
        start = time.perf_counter()
        result = train_clip(
            cfg, data=data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, hard_negatives=args.hard_negatives,
        )  # fmt: skip
        took = time.perf_counter() - start
        model = result.model
        print(
            f"trained {model.num_parameters():,} parameters, {args.steps} steps of "
            f"{args.batch_size} in {took:.0f} s ({took / args.steps * 1000:.0f} ms/step); "
            f"last 50 steps: loss {np.mean(result.losses[-50:]):.3f}, "
            f"in-batch accuracy (all t) {np.mean(result.accuracies[-50:]):.3f}"
        )
        if args.save:
            print("saved", save_clip(model, args.save, {**result.settings, "seconds": took}))

    held = make_split(0, args.n_test, 0, size=cfg.image_size, value_range=cfg.value_range).test
    ind = in_distribution_scenes(cfg, args.n_test)
    sets = {"held-out": held, "in-dist": ind}
    head = f"{'t':>4} | " + " | ".join(
        f"{name:>8} {args.k}-way   hard  top-1 (chance)" for name in sets
    )
    print(head)
    print("-" * len(head))
    for t in (int(v) for v in args.ts.split(",")):
        row = [f"{t:>4}"]
        for data in sets.values():
            r = retrieval_accuracy(model, data, t, k=args.k, batch=args.batch)
            row.append(
                f"{'':>8} {r['k_way']:5.3f}  {r['k_way_hard']:5.3f}  {r['top1']:5.3f} "
                f"({r['top1_chance']:.3f})"
            )
        print(" | ".join(row), flush=True)

    if args.figure:
        from minigen.plotting import save_figure

        sub = held[np.arange(8)]
        fig = plot_similarity(
            similarity(model, sub.images, 0, sub.captions), sub.images, sub.captions,
            value_range=cfg.value_range, title="cosine similarity, held-out scenes, t = 0",
        )  # fmt: skip
        print("wrote", save_figure(fig, args.figure))


if __name__ == "__main__":
    main()
