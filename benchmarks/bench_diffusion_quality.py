"""Sample quality of the §7.2 diffusion models, measured (a benchmark, not a test).

    python benchmarks/bench_diffusion_quality.py                 # the shipped checkpoints
    python benchmarks/bench_diffusion_quality.py --train         # retrain both first, timed
    python benchmarks/bench_diffusion_quality.py --checkpoint-2d my.safetensors --skip-digits

2-D: the maximum mean discrepancy (sum of RBF kernels, bandwidths 0.05 .. 1 in
normalised units) and the sliced Wasserstein distance between 2,000 samples and
2,000 held-out points (drawn with another seed than the training set), beside
the *floor* (two halves of the held-out data, 2,000 points each) and the *ceiling*
(2,000 draws of N(0, I), the untouched x_T, against the same half).

Digits: the Fréchet distance on the last hidden layer of a digit classifier
trained with minigen on 80% of the real digits (its accuracy on the other 20% is
printed), between samples and one random half of the 1,797 digits; the floor is
the other half against it, the ceiling N(0, I) images. The classifier's label
histogram over the samples shows whether every digit is generated. The diffusion
model was trained on all the digits (as FID is usually measured against the
training set), so a model that copied its training images would sit at the floor.
The classifier's features are meant to ignore pixel noise, so the same distance on
the raw 64 pixels (standardised) is printed beside it: it sees noisy backgrounds.

Samplers: ancestral DDPM (Eq. 7.1) over all T = 1000 steps, and DDIM with 50
(trailing) steps, eta = 0. Targets (issue #6): 2-D within 2x the floor, digits
within 3x, DDIM-50 within 1.5x of DDPM-1000. Wall times on a shared machine are
inflated by the other jobs on it; the CPU time of this process is printed too.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from minigen.diffusion import load_digits, load_toy2d
from minigen.diffusion import pipeline as pl
from minigen.diffusion.metrics import (
    frechet_distance,
    mmd,
    sliced_wasserstein,
    train_digit_classifier,
)
from minigen.diffusion.training import TrainConfig, train

HELD_OUT_SEED = 10_000
# the shipped checkpoints' training runs (README: "Reproduce the shipped checkpoints")
RECIPES = {
    "swissroll": TrainConfig(data="swissroll", steps=6000, batch_size=256),
    "digits": TrainConfig(data="digits", steps=5000, batch_size=64, model={"base_channels": 16}),
}
SAMPLERS = {"DDPM, 1000 steps": ("ddpm", None), "DDIM, 50 steps": ("ddim", 50)}


def timed(f, *args, **kw):
    w, c = time.perf_counter(), time.process_time()
    out = f(*args, **kw)
    return out, time.perf_counter() - w, time.process_time() - c


def get_model(name: str, path: str | None, retrain: bool) -> tuple[pl.DiffusionModel, str]:
    if retrain:
        res, wall, cpu = timed(train, RECIPES[name], progress=True)
        return pl.DiffusionModel.from_training(
            res
        ), f"trained now: {wall:.0f}s wall, {cpu:.0f}s CPU"
    m = pl.load(path or name)
    t = m.config.get("train", {})
    return (
        m,
        f"checkpoint {path or name}: trained {t.get('steps')} steps in {t.get('seconds')}s wall",
    )


def bench_2d(model: pl.DiffusionModel, n: int, seed: int) -> None:
    norm = model.normalizer
    held = load_toy2d(model.data, n=2 * n, seed=HELD_OUT_SEED)
    h = norm.transform(held.normalizer.inverse(held.x))  # model units (n2, 2)
    a, b = h[:n], h[n:]
    noise = np.random.default_rng(seed + 1).standard_normal((n, 2))
    rows = [("floor: held-out half vs half", a, 0.0), ("ceiling: N(0, I) vs held-out", noise, 0.0)]
    for label, (sampler, steps) in SAMPLERS.items():
        s, wall, _ = timed(model.sample, n, sampler=sampler, steps=steps, seed=seed)
        rows.append((f"samples, {label}", norm.transform(s.x), wall))
    floor_mmd, floor_sw = mmd(a, b), sliced_wasserstein(a, b)
    print(f"\n## 2-D: {model.data}, {n} samples vs {n} held-out points\n")
    print("| | MMD | x floor | sliced W1 | x floor | sampling s |")
    print("|---|---|---|---|---|---|")
    scores = {}
    for label, x, wall in rows:
        m_, sw = mmd(x, b), sliced_wasserstein(x, b)
        scores[label] = m_
        print(f"| {label} | {m_:.4f} | {m_ / floor_mmd:.2f} | {sw:.4f} | {sw / floor_sw:.2f} |"
              f" {wall:.1f} |")  # fmt: skip
    ddpm, ddim = (scores[f"samples, {k}"] for k in SAMPLERS)
    print(f"\nTargets: DDPM {ddpm / floor_mmd:.2f}x floor (<= 2), DDIM {ddim / floor_mmd:.2f}x"
          f" (<= 2); DDIM/DDPM {ddim / ddpm:.2f} (<= 1.5)")  # fmt: skip


def bench_digits(model: pl.DiffusionModel, seed: int) -> None:
    data = load_digits("standard")
    clf, acc = train_digit_classifier(data.x, data.y, seed=seed)
    perm = np.random.default_rng(seed).permutation(len(data.x))
    half_a, half_b = data.x[perm[: len(perm) // 2]], data.x[perm[len(perm) // 2 :]]
    n = len(half_a)
    feats_b = clf.embed(half_b)
    noise = np.random.default_rng(seed + 1).standard_normal(half_a.shape).astype(np.float32)
    rows = [("floor: real half vs half", half_a, 0.0), ("ceiling: N(0, I) vs real", noise, 0.0)]
    hists = {}
    for label, (sampler, steps) in SAMPLERS.items():
        s, wall, _ = timed(model.sample, n, sampler=sampler, steps=steps, seed=seed, progress=True)
        x = data.normalizer.transform(s.x).astype(np.float32)  # standardised, like the data
        rows.append((f"samples, {label}", x, wall))
        hists[label] = np.bincount(clf.predict(x), minlength=10)
    print(f"\n## Digits: {n} samples vs {len(half_b)} real digits"
          f" (classifier accuracy on held-out digits: {acc:.1%})\n")  # fmt: skip
    print("| | Fréchet distance (classifier features) | x floor | FD (pixels) | x floor |"
          " sampling s |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    fds, pix = {}, {}
    for label, x, _ in rows:
        fds[label] = frechet_distance(clf.embed(x), feats_b)
        pix[label] = frechet_distance(x, half_b)
    floor, pfloor = fds["floor: real half vs half"], pix["floor: real half vs half"]
    for label, _, wall in rows:
        print(f"| {label} | {fds[label]:.3f} | {fds[label] / floor:.2f} | {pix[label]:.3f} |"
              f" {pix[label] / pfloor:.2f} | {wall:.1f} |")  # fmt: skip
    print("\nLabel histogram of the samples (digits 0..9):")
    for label, h in hists.items():
        print(f"  {label}: {h.tolist()}  (all ten present: {bool((h > 0).all())})")
    ddpm, ddim = (fds[f"samples, {k}"] for k in SAMPLERS)
    print(f"\nTargets: DDPM {ddpm / floor:.2f}x floor (<= 3), DDIM {ddim / floor:.2f}x (<= 3);"
          f" DDIM/DDPM {ddim / ddpm:.2f} (<= 1.5)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", action="store_true", help="retrain both models first (timed)")
    ap.add_argument("--checkpoint-2d", help="a 2-D checkpoint (default: shipped swissroll)")
    ap.add_argument("--checkpoint-digits", help="a digits checkpoint (default: shipped digits)")
    ap.add_argument("--skip-2d", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--n", type=int, default=2000, help="2-D samples (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')},"
          f" {os.cpu_count()} CPUs visible")  # fmt: skip
    if not args.skip_2d:
        name = "swissroll"
        if args.checkpoint_2d and not args.train:
            name = pl.load(args.checkpoint_2d).data
        model, how = get_model(name, args.checkpoint_2d, args.train)
        print(f"\n2-D model: {how}")
        bench_2d(model, args.n, args.seed)
    if not args.skip_digits:
        model, how = get_model("digits", args.checkpoint_digits, args.train)
        print(f"\nDigits model: {how}")
        bench_digits(model, args.seed)


if __name__ == "__main__":
    main()
