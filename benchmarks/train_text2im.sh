#!/usr/bin/env bash
# Train the three text-to-image models from scratch on two CPU cores, in two lanes at once
# (BLAS on one thread each), and say how long it took:
#   lane 1: CLIP (the guide of CLIP guidance), then the unconditional scene model it guides;
#   lane 2: the caption-conditioned model of classifier-free guidance (it needs neither), its
#     gradient in two half-batch shards computed by two processes (minigen.parallel), which
#     take the core lane 1 leaves and both once lane 1 is done.
#     bash benchmarks/train_text2im.sh [OUT_DIR]        (default: runs/text2im)
# Then evaluate them, e.g.
#     python benchmarks/bench_text2im.py --clip OUT/clip.safetensors \
#         --scenes OUT/scenes.safetensors --cond OUT/cond.safetensors
# Each lane's log (progress bars, final losses, seconds of CPU) is in OUT/lane1.log, lane2.log.
# The shipped checkpoints in minigen/assets/ are what this writes (cond.safetensors stored in
# float16 by --half).
set -euo pipefail
out="${1:-runs/text2im}"
mkdir -p "$out"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
py="${PYTHON:-python}"
start=$(date +%s)
(
    $py -m minigen.cli train-text2im --model clip --steps 1000 --batch-size 128 --seed 0 \
        --out "$out/clip.safetensors" --force
    $py -m minigen.cli train-text2im --model scenes --steps 2500 --seed 0 \
        --out "$out/scenes.safetensors" --force
) >"$out/lane1.log" 2>&1 &
lane1=$!
$py -m minigen.cli train-text2im --model cond --channels 32 --steps 5500 --batch-size 32 --snr-gamma 5 \
    --prediction v --mirror-pairs --cell-weight 0.5 --shards 2 --workers 2 \
    --seed 0 --half --out "$out/cond.safetensors" --force >"$out/lane2.log" 2>&1 &
lane2=$!
status=0
wait $lane1 || status=$?
echo "lane 1 (clip, scenes) done after $(($(date +%s) - start)) s (status $status)"
wait $lane2 || status=$?
echo "lane 2 (cond) done after $(($(date +%s) - start)) s (status $status)"
grep -h "^trained" "$out/lane1.log" "$out/lane2.log" || true
echo "all three in $(($(date +%s) - start)) s of wall time on two cores"
exit $status
