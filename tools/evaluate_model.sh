#!/usr/bin/env bash
# Every quality measure of the default model's card, for one checkpoint:
#   bash tools/evaluate_model.sh CHECKPOINT SYNTH_DATA OUT
# - articulation on real speech (../shared's LibriVox clips, pocketsphinx alignment) on FLAME_sample,
#   BIWI (scaled to head size) and the bundled demo head: OUT/artic_{flame,biwi,demo}/articulation.json
# - the synthetic held-out test split (every 2nd clip): LVE, mouth r, r by language: OUT/synth/
# - articulation of those predictions with the generator's own phone timings: OUT/artic_synth/
# Needs ../shared (FLAME, BIWI and the speech clips are not redistributable) and `.[train]`.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=$1 DATA=$2 OUT=$3
PY=${PYTHON:-.venv/bin/python}
S=../shared/data
mkdir -p "$OUT"
$PY -m training.articulation --checkpoint "$CKPT" --speech-dir $S/speech --out "$OUT/artic_flame" \
    --mesh $S/meshes/FLAME_sample.ply --lips $S/masks/vocaset/FLAME_lips_idx.mat --upper $S/masks/vocaset/upper_mask.npy
$PY -m training.articulation --checkpoint "$CKPT" --speech-dir $S/speech --out "$OUT/artic_demo" \
    --mesh backend/assets/demo_head.obj --lips backend/assets/demo_head_lips.txt --upper backend/assets/demo_head_upper.txt
$PY -m training.articulation --checkpoint "$CKPT" --speech-dir $S/speech --out "$OUT/artic_biwi" --fit-size 0.348 \
    --mesh $S/meshes/BIWI.ply --lips $S/masks/biwi/lve_region.txt --upper $S/masks/biwi/fdd_region.txt
$PY -m training.predict --checkpoint "$CKPT" --data "$DATA" --split test --every 2 --no-plots \
    --out "$OUT/synth_pred" --evaluate "$OUT/synth"
$PY -m training.articulation --data "$DATA" --split test --pred "$OUT/synth_pred" --out "$OUT/artic_synth" --no-plots
