#!/usr/bin/env bash
# Reproduce the bundled model inspectd/models/unet-coating-v2.onnx (+ its model card) from
# nothing but the project's own commands: `inspectd synth` -> `inspectd train` ->
# `inspectd export`, then held-out metrics on frames drawn with other seeds and parameters.
#
#   scripts/train_bundled_model.sh [WORK_DIR]      (default WORK_DIR: /tmp/inspectd-unet-v1)
#
# Needs the [train] extra (`pip install torch==2.13.0 && pip install -e '.[train]'`).
# The v2 model is a guided U-Net (`--output-stride 4`, widths 16,32,64,192): it runs at 1/4
# resolution inside, so an epoch of 1600 256-px tiles takes about 25-35 s on 2 CPU cores.
# Time: the bundled run's `inspectd train` took about 20 min on a shared 2-core CPU with two
# torch threads; synth, calibration, export and held-out metrics add about 3 min. Knobs for a
# quick dry run: EPOCHS, TILES_PER_EPOCH, SCALE_N (divides every set's frame count),
# MODEL_OUT (write the model elsewhere). INT8_ONLY=1 keeps the fp32 model and remakes only
# its int8 twin and the card's `int8` section (same sets, no training, no torch; ~2 min).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-/tmp/inspectd-unet-v1}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
INSPECTD=("$PY" -m inspectd.cli)
EPOCHS="${EPOCHS:-36}"
TILES_PER_EPOCH="${TILES_PER_EPOCH:-1600}"
SCALE_N="${SCALE_N:-1}"
MODEL="${MODEL_OUT:-$REPO/inspectd/models/unet-coating-v2.onnx}"

rm -rf "$WORK"
mkdir -p "$WORK/train/images" "$WORK/train/masks" "$WORK/heldout/images" "$WORK/heldout/masks"

# synth_set SPLIT NAME N WxH SEED [more inspectd synth options]: one varied set, files
# renamed NAME_synth_NNNN.* so sets can share one folder.
synth_set() {
  local split="$1" name="$2" n=$(( $3 / SCALE_N > 0 ? $3 / SCALE_N : 1 )) size="$4" seed="$5"
  shift 5
  local tmp="$WORK/sets/$split/$name"
  "${INSPECTD[@]}" synth --n "$n" --size "$size" --seed "$seed" --vary "$@" \
    --out "$tmp/images" --masks-dir "$tmp/masks" >/dev/null
  for f in "$tmp"/images/*.png; do mv "$f" "$WORK/$split/images/${name}_$(basename "$f")"; done
  for f in "$tmp"/masks/*.png; do mv "$f" "$WORK/$split/masks/${name}_$(basename "$f")"; done
}

# Training: 8- and 16-bit, frame sizes 640x480..2560x1920 (CLAHE tiles scale with the frame),
# sparse to crowded particles and pores; `--vary` draws every frame's particle and pore sizes,
# flattening, cracks, illumination, blur, noise and lamella angle around those.
synth_set train a8   40 1024x768  1001
synth_set train b16  24 1024x768  1002 --bit-depth 16
synth_set train c8    6 2560x1920 1003
synth_set train d8   16 1280x960  1004 --unmelted-fraction 0.30 --pore-fraction 0.06
synth_set train e16  16 640x480   1005 --bit-depth 16 --unmelted-fraction 0.06 --pore-fraction 0.012
synth_set train f8   16 768x768   1006 --unmelted-fraction 0.45 --pore-fraction 0.02
synth_set train g16   8 1280x960  1007 --bit-depth 16 --unmelted-fraction 0.20 --pore-fraction 0.10

# Held out: other seeds, other target fractions, other sizes; never seen in training.
synth_set heldout h8   12 1024x768  9001 --unmelted-fraction 0.22 --pore-fraction 0.04
synth_set heldout i16  12 1024x768  9002 --bit-depth 16 --unmelted-fraction 0.10 --pore-fraction 0.025
synth_set heldout j8    4 2560x1920 9003 --unmelted-fraction 0.18 --pore-fraction 0.05
synth_set heldout k16   8 1600x1200 9004 --bit-depth 16 --unmelted-fraction 0.35 --pore-fraction 0.03
rm -rf "$WORK/sets"

if [[ "${INT8_ONLY:-0}" != 1 ]]; then
# Two torch threads: the bundled run was made so on a shared 2-core machine; CPU training is
# bit-for-bit repeatable only at the same thread count.
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "${INSPECTD[@]}" --log-level INFO train --images "$WORK/train/images" --masks "$WORK/train/masks" \
  --epochs "$EPOCHS" --tiles-per-epoch "$TILES_PER_EPOCH" --batch-size 8 --lr 0.004 --tile 256 \
  --val-fraction 0.1 --seed 7 --widths 16,32,64,192 --output-stride 4 --out "$WORK/run"

# Measure the exported file itself (ONNX Runtime), then export again with the numbers in
# the card (the export is deterministic: same bytes, same sha256).
"${INSPECTD[@]}" export --checkpoint "$WORK/run/best.pt" --out "$WORK/run/model.onnx" --no-card
"$PY" "$REPO/scripts/heldout_metrics.py" --onnx "$WORK/run/model.onnx" \
  --images "$WORK/heldout/images" --masks "$WORK/heldout/masks" --json "$WORK/heldout_metrics.json"
"${INSPECTD[@]}" export --checkpoint "$WORK/run/best.pt" --out "$MODEL" \
  --metrics "$WORK/heldout_metrics.json" \
  --training-command "scripts/train_bundled_model.sh (EPOCHS=$EPOCHS TILES_PER_EPOCH=$TILES_PER_EPOCH SCALE_N=$SCALE_N, OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}): inspectd synth x11 sets -> inspectd train -> inspectd export"
cmp "$WORK/run/model.onnx" "$MODEL"
fi
mkdir -p "$WORK/run"

# The int8 twin the CPU runs (segment.unet.precision: auto), calibrated on training frames,
# measured on the same held-out set, recorded in the card's `int8` section.
"${INSPECTD[@]}" quantize --onnx "$MODEL" --calib "$WORK/train/images" --out "$WORK/run/model.int8.onnx"
"$PY" "$REPO/scripts/heldout_metrics.py" --onnx "$WORK/run/model.int8.onnx" \
  --images "$WORK/heldout/images" --masks "$WORK/heldout/masks" --json "$WORK/heldout_metrics_int8.json"
"${INSPECTD[@]}" quantize --onnx "$MODEL" --calib "$WORK/train/images" --out "${MODEL%.onnx}.int8.onnx" \
  --card "${MODEL%.onnx}.json" --metrics "$WORK/heldout_metrics_int8.json"
cmp "$WORK/run/model.int8.onnx" "${MODEL%.onnx}.int8.onnx"
echo "bundled model: $MODEL and ${MODEL%.onnx}.int8.onnx (card: ${MODEL%.onnx}.json); run folder: $WORK/run"
