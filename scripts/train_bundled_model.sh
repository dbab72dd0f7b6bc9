#!/usr/bin/env bash
# Reproduce the bundled model inspectd/models/unet-coating-v3.onnx (+ int8 twin + model card)
# from nothing but the project's own commands: `inspectd synth` (v3 generator) + real labelled
# fields -> `inspectd train` -> held-out metrics -> `inspectd export` -> `inspectd quantize`.
#
#   scripts/train_bundled_model.sh [WORK_DIR]      (default WORK_DIR: /tmp/inspectd-unet-v3)
#
# Needs the [train] extra (`pip install torch==2.13.0 && pip install -e '.[train]'`).
# REAL_DIR (default ../shared/samples beside the repository) holds the real labelled field
# real_coating_tile_b.png + real_coating_tile_b_label.png (255 = unmelted) and the unlabelled
# real_coating_tile_c.png. The labelled field is cut in two: its left 80 % trains (oversampled:
# one 205x256 field beside ~180 synthetic frames), its right 20 % strip validates and is
# reported as the real held-out score. Without REAL_DIR the model is trained on synthetic
# frames only (and the card says so).
#
# Time: about 20-30 min on a shared 2-core CPU with two torch threads. Knobs for a quick dry
# run: EPOCHS, TILES_PER_EPOCH, SCALE_N (divides every set's frame count), MODEL_OUT (write
# the model elsewhere), REAL_SHARE_FACTOR (oversampling of the real field).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-/tmp/inspectd-unet-v3}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
INSPECTD=("$PY" -m inspectd.cli)
EPOCHS="${EPOCHS:-36}"
TILES_PER_EPOCH="${TILES_PER_EPOCH:-1600}"
SCALE_N="${SCALE_N:-1}"
REAL_SHARE_FACTOR="${REAL_SHARE_FACTOR:-300}"
REAL_DIR="${REAL_DIR:-$REPO/../shared/samples}"
MODEL="${MODEL_OUT:-$REPO/inspectd/models/unet-coating-v3.onnx}"

rm -rf "$WORK"
for split in train val heldout; do mkdir -p "$WORK/$split/images" "$WORK/$split/masks"; done

# synth_set SPLIT NAME N WxH SEED [more inspectd synth options]: one v3 set, every frame's look
# drawn widely (--vary: particle size and share, brighter/equal/darker particles, lamellae,
# stringers, pores, cracks, blur, noise, light, JPEG, raw or already enhanced), files renamed
# NAME_synth_NNNN.* so sets can share one folder.
synth_set() {
  local split="$1" name="$2" n=$(( $3 / SCALE_N > 0 ? $3 / SCALE_N : 1 )) size="$4" seed="$5"
  shift 5
  local tmp="$WORK/sets/$split/$name"
  "${INSPECTD[@]}" synth --generator v3 --n "$n" --size "$size" --seed "$seed" --vary "$@" \
    --out "$tmp/images" --masks-dir "$tmp/masks" >/dev/null
  for f in "$tmp"/images/*.png; do mv "$f" "$WORK/$split/images/${name}_$(basename "$f")"; done
  for f in "$tmp"/masks/*.png; do mv "$f" "$WORK/$split/masks/${name}_$(basename "$f")"; done
}

# Training: 8- and 16-bit, 256x256 (like the seed's tiles) to 1024x768.
synth_set train a8   60 512x512   2001
synth_set train b8   40 1024x768  2002
synth_set train c8   60 256x256   2003
synth_set train d16  16 1024x768  2004 --bit-depth 16
# Validation (best epoch, output-bias calibration): other seeds.
synth_set val   v8   16 512x512   3001
# Held out: other seeds and sizes; never seen in training or validation.
synth_set heldout h8  24 512x512   9001
synth_set heldout i8  12 1024x768  9002
synth_set heldout j8  24 256x256   9003
synth_set heldout k16  8 1024x768  9004 --bit-depth 16
rm -rf "$WORK/sets"

REAL_TILE="$REAL_DIR/real_coating_tile_b.png"
REAL_LABEL="$REAL_DIR/real_coating_tile_b_label.png"
OVERSAMPLE=()
if [[ -f "$REAL_TILE" && -f "$REAL_LABEL" ]]; then
  mkdir -p "$WORK/real/whole/images" "$WORK/real/whole/masks" "$WORK/real/strip/images" "$WORK/real/strip/masks"
  "$PY" - "$REAL_TILE" "$REAL_LABEL" "$WORK" <<'PY'
import sys
from pathlib import Path

import cv2

tile, label, work = cv2.imread(sys.argv[1], 0), cv2.imread(sys.argv[2], 0), Path(sys.argv[3])
cut = tile.shape[1] - round(0.2 * tile.shape[1])  # as inspectd train's split_within: the right 20 %
for folder, name, cols in ((work / "train", "real_b_left", slice(0, cut)), (work / "val", "real_b_right", slice(cut, None)),
                           (work / "real/strip", "real_b_right", slice(cut, None)), (work / "real/whole", "real_b", slice(None))):
    cv2.imwrite(str(folder / "images" / f"{name}.png"), tile[:, cols])
    cv2.imwrite(str(folder / "masks" / f"{name}.png"), label[:, cols])
PY
  OVERSAMPLE=(--oversample "real_*=$REAL_SHARE_FACTOR")
  echo "real labelled field: left 80 % trains (x$REAL_SHARE_FACTOR), right 20 % validates"
else
  echo "no real labelled field in $REAL_DIR: synthetic frames only"
fi

# Two torch threads: the bundled run was made so on a shared 2-core machine; CPU training is
# bit-for-bit repeatable only at the same thread count.
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "${INSPECTD[@]}" --log-level INFO train \
  --images "$WORK/train/images" --masks "$WORK/train/masks" \
  --val-images "$WORK/val/images" --val-masks "$WORK/val/masks" "${OVERSAMPLE[@]}" \
  --epochs "$EPOCHS" --tiles-per-epoch "$TILES_PER_EPOCH" --batch-size 8 --lr 0.004 --tile 256 \
  --seed 7 --widths 16,32,64,192 --output-stride 4 --out "$WORK/run"

# Held-out metrics of the exported file itself (ONNX Runtime through the engine): synthetic
# v3 frames, and the real field (whole: mostly trained on; strip: never trained on).
measure() {  # measure ONNX_FILE OUT_JSON
  "$PY" "$REPO/scripts/heldout_metrics.py" --onnx "$1" --scales 1.0,0.5 \
    --images "$WORK/heldout/images" --masks "$WORK/heldout/masks" --json "$WORK/synthetic.json"
  local parts=("synthetic_v3=$WORK/synthetic.json")
  if [[ -d "$WORK/real" ]]; then
    for part in whole strip; do
      "$PY" "$REPO/scripts/heldout_metrics.py" --onnx "$1" --scales 1.0 \
        --images "$WORK/real/$part/images" --masks "$WORK/real/$part/masks" --json "$WORK/real_$part.json"
      parts+=("real_tile_b_$part=$WORK/real_$part.json")
    done
  fi
  "$PY" - "$2" "${parts[@]}" <<'PY'
import json, sys
merged = {name: json.load(open(path)) for name, path in (arg.split("=", 1) for arg in sys.argv[2:])}
json.dump(merged, open(sys.argv[1], "w"), indent=2)
PY
}
measure "$WORK/run/model.onnx" "$WORK/heldout_metrics.json"
TRAINING_COMMAND="scripts/train_bundled_model.sh (EPOCHS=$EPOCHS TILES_PER_EPOCH=$TILES_PER_EPOCH SCALE_N=$SCALE_N REAL_SHARE_FACTOR=$REAL_SHARE_FACTOR, OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}): inspectd synth --generator v3 x9 sets + the real field split 80/20 -> inspectd train -> inspectd export"
"${INSPECTD[@]}" export --checkpoint "$WORK/run/best.pt" --out "$MODEL" \
  --metrics "$WORK/heldout_metrics.json" --envelope-images "$WORK/train/images" \
  --training-command "$TRAINING_COMMAND"
cmp "$WORK/run/model.onnx" "$MODEL"

# The int8 twin the CPU runs (segment.unet.precision: auto), calibrated on training frames,
# measured on the same held-out sets, recorded in the card's `int8` section.
"${INSPECTD[@]}" quantize --onnx "$MODEL" --calib "$WORK/train/images" --out "$WORK/run/bundled.int8.onnx"
measure "$WORK/run/bundled.int8.onnx" "$WORK/heldout_metrics_int8.json"
"${INSPECTD[@]}" quantize --onnx "$MODEL" --calib "$WORK/train/images" --out "${MODEL%.onnx}.int8.onnx" \
  --card "${MODEL%.onnx}.json" --metrics "$WORK/heldout_metrics_int8.json"
cmp "$WORK/run/bundled.int8.onnx" "${MODEL%.onnx}.int8.onnx"
echo "bundled model: $MODEL and ${MODEL%.onnx}.int8.onnx (card: ${MODEL%.onnx}.json); run folder: $WORK/run"
