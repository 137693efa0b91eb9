#!/usr/bin/env bash
# Sample grids for a few captions, three ways (unguided, CLIP-guided s = 300, classifier-free
# w = 5), with the shipped checkpoints, into benchmarks/results/text2im/ (each image labelled
# with the checker's score). Two of the captions are held out: no training scene shows a blue
# cross below a yellow triangle, or a magenta triangle with a green circle.
#     bash benchmarks/text2im_grids.sh
set -euo pipefail
out="$(dirname "$0")/results/text2im"
mkdir -p "$out"
for caption in "a red circle above a blue square" "a green cross left of a yellow triangle" \
    "a blue cross below a yellow triangle" "a magenta triangle and a green circle"; do
    slug="${caption// /_}"
    python -m minigen.cli text2im "$caption" --method none --n 8 --out "$out/none_$slug.png" --force --quiet
    python -m minigen.cli text2im "$caption" --method clip --scale 300 --n 8 --out "$out/clip300_$slug.png" --force --quiet
    python -m minigen.cli text2im "$caption" --method cfg --scale 5 --n 8 --out "$out/cfg5_$slug.png" --force --quiet
done
ls "$out"
