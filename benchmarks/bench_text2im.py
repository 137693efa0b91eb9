"""Text to image on the scenes: how often the samples satisfy their captions, and how diverse.

    python benchmarks/bench_text2im.py                         # the shipped checkpoints
    python benchmarks/bench_text2im.py --captions 32 --clip-scales 100,300 --cfg-scales 3
    python benchmarks/bench_text2im.py --grids runs/text2im    # also sample grids per method
    python benchmarks/bench_text2im.py --captions 16 --cfg-scales "" --target x0   # a variant

For captions of held-out scenes (`make_split`, seed 0: every caption names a colour-shape pair
or a colour-relation-colour triple that no training scene shows) and, for comparison, of fresh
in-distribution scenes, `--per-caption` images are sampled per caption by each method:
unguided (the unconditional scene model), CLIP-guided at several s, classifier-free guided at
several w; every method starts from the same noise x_T. Columns:

- satisfied: the checker's score (the share of the caption's properties that hold, picoclvr's
  measure), averaged over images; all: the share of images that satisfy every property;
- relations: the share of the relation properties ("a left of b") that hold, over all images;
- distinct: the number of different scenes (as the checker reads them: colour, shape and cell
  of each object) among the images of one caption, averaged over captions (at most
  --per-caption): guidance that collapsed onto one image would score 1;
- spread: the root-mean-square pixel distance between two images of one caption, in [0, 1]
  units (0: identical images).

BLAS runs on one thread; times are wall times on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from minigen.synthesis import make_split, parse_batch, score_batch
from minigen.synthesis.captions import Relation
from minigen.synthesis.checker import check
from minigen.synthesis.clip import CLIPConfig
from minigen.synthesis.clip_train import in_distribution_scenes
from minigen.synthesis.guidance import SCHEDULES, SCORES, TARGETS
from minigen.synthesis.sampling import DEFAULT_GUIDANCE, Text2Im, plot_samples
from minigen.synthesis.scenes import to_unit

RANGE = (-1.0, 1.0)


def captions_of(split: str, n: int) -> list[str]:
    """n distinct captions of held-out or in-distribution scenes (deterministic)."""
    if split == "held-out":
        data = make_split(0, 4 * n, 0, value_range=RANGE).test
    else:
        data = in_distribution_scenes(CLIPConfig(), 4 * n, seed=1)
    return list(dict.fromkeys(data.captions))[:n]


def diversity(images: np.ndarray, k: int) -> tuple[float, float]:
    """(distinct scenes per caption, RMS pixel distance between two images of a caption) for
    images grouped k by k."""
    found = parse_batch(images, value_range=RANGE)
    scenes = [frozenset((d.colour, d.shape, d.row, d.col) for d in f) for f in found]
    x = to_unit(images, RANGE).reshape(len(images) // k, k, -1)  # (captions, k, pixels)
    distinct = np.mean([len(set(scenes[i : i + k])) for i in range(0, len(scenes), k)])
    d2 = ((x[:, :, None] - x[:, None, :]) ** 2).mean(-1)  # (captions, k, k)
    iu = np.triu_indices(k, 1)
    return float(distinct), float(np.sqrt(d2[:, iu[0], iu[1]]).mean())


def relations_held(images: np.ndarray, captions: list[str]) -> float:
    """The share of the captions' relation properties that hold in their images."""
    found = parse_batch(images, value_range=RANGE)
    held = []
    for f, c in zip(found, captions, strict=True):
        score = check(f, c, images.shape[-1])
        held += [ok for p, ok in zip(score.properties, score.holds, strict=True)
                 if isinstance(p, Relation)]  # fmt: skip
    return float(np.mean(held)) if held else float("nan")


def run(t2i: Text2Im, caps: list[str], k: int, method: str, scale: float, args) -> dict:
    """Sample k images per caption (in chunks), score them; same x_T for every method."""
    per_image = [c for c in caps for _ in range(k)]
    chunk = max(k, args.chunk // k * k)
    start = time.perf_counter()
    parts = []
    for i in range(0, len(per_image), chunk):
        part = per_image[i : i + chunk]
        parts.append(
            t2i.sample(
                part,
                len(part),
                method=method,
                scale=scale,
                sampler=args.sampler,
                steps=args.steps,
                seed=args.seed + i,
                guidance=args.guidance if method == "clip" else None,
            )  # fmt: skip
        )
    x = np.concatenate(parts)
    seconds = time.perf_counter() - start
    scores = score_batch(x, per_image, value_range=RANGE)
    distinct, spread = diversity(x, k)
    return {"x": x, "satisfied": float(scores.mean()), "all": float((scores == 1).mean()),
            "relations": relations_held(x, per_image), "distinct": distinct, "spread": spread,
            "seconds": seconds}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captions", type=int, default=64, help="captions per split")
    ap.add_argument("--per-caption", type=int, default=4, help="images per caption")
    ap.add_argument("--splits", default="held-out,in-dist")
    ap.add_argument("--clip-scales", default="100,300,1000")
    ap.add_argument("--cfg-scales", default="1,3,5")
    ap.add_argument("--sampler", default="ddpm")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=128, help="images per sampler call")
    ap.add_argument("--clip", default="clip")
    ap.add_argument("--scenes", default="scenes")
    ap.add_argument("--cond", default="cond")
    ap.add_argument("--grids", help="write a sample grid per method for 3 held-out captions here")
    ap.add_argument("--target", choices=TARGETS, help="CLIP guidance reads x_t or x0_hat")
    ap.add_argument("--schedule", choices=SCHEDULES, help="CLIP guidance's scale over t")
    ap.add_argument("--repeats", type=int, help="CLIP-guided steps per denoising step")
    ap.add_argument("--score", choices=SCORES, help="CLIP guidance follows this score")
    args = ap.parse_args()
    changes = {k: getattr(args, k) for k in ("target", "schedule", "repeats", "score")}
    args.guidance = replace(DEFAULT_GUIDANCE, **{k: v for k, v in changes.items() if v})

    t2i = Text2Im(clip=args.clip, scenes=args.scenes, cond=args.cond)
    configs = [("none", 0.0)]
    configs += [("clip", float(s)) for s in args.clip_scales.split(",") if s]
    configs += [("cfg", float(w)) for w in args.cfg_scales.split(",") if w]
    k = args.per_caption
    print(
        f"{args.captions} captions per split, {k} images each, "
        f"{args.sampler.upper()} {args.steps} steps; CLIP guidance: {args.guidance}\n"
    )
    for split in args.splits.split(","):
        caps = captions_of(split, args.captions)
        print(f"### {split} captions\n")
        print(
            f"| method | scale | satisfied | all | relations | distinct (of {k}) | spread | seconds |"
        )
        print("|---|---|---|---|---|---|---|---|")
        base = None
        for method, scale in configs:
            r = run(t2i, caps, k, method, scale, args)
            base = r["satisfied"] if method == "none" else base
            gain = f" ({r['satisfied'] / base:.1f}x)" if base and method != "none" else ""
            name = {"none": "unguided", "clip": "CLIP guidance", "cfg": "classifier-free"}[method]
            print(
                f"| {name} | {'-' if method == 'none' else f'{scale:g}'} | "
                f"{r['satisfied']:.1%}{gain} | {r['all']:.1%} | {r['relations']:.1%} | "
                f"{r['distinct']:.2f} | "
                f"{r['spread']:.3f} | {r['seconds']:.0f} |",
                flush=True,
            )
            if args.grids and split == "held-out":
                out = Path(args.grids)
                out.mkdir(parents=True, exist_ok=True)
                from minigen.plotting import save_figure

                for j, cap in enumerate(caps[:3]):
                    imgs = r["x"][j * k : (j + 1) * k]
                    sc = score_batch(imgs, [cap] * k, value_range=RANGE)
                    tag = "unguided" if method == "none" else f"{method}_{scale:g}"
                    fig = plot_samples(imgs, cap, f"{tag}, {args.sampler.upper()}", sc)
                    save_figure(fig, out / f"caption{j}_{tag}.png")
        print()


if __name__ == "__main__":
    main()
