#!/usr/bin/env bash
# Every quality measure of the default model's card, for one checkpoint:
#   [PROMPTS=DIR] [TELEPHONE=DIR] [VOICES=DIR] [SIZES="K ..."] bash tools/evaluate_model.sh CHECKPOINT SYNTH_DATA OUT
# - articulation on real speech (../shared's LibriVox clips, or LIBRIVOX=DIR; pocketsphinx alignment)
#   on FLAME_sample, BIWI (scaled to human size) and the bundled demo head:
#   OUT/artic_{flame,biwi,demo}/articulation.json
# - with PROMPTS (python tools/ivr_speech.py --out DIR: studio prompts, 147 bilabials) and TELEPHONE
#   (python tools/heldout_speech.py --out DIR) and VOICES (python tools/many_voices.py --out DIR: seven
#   recordings, 20 bilabials): the same on FLAME_sample and the demo head, OUT/{prompts,telephone,voices}_{flame,demo}/
# - the synthetic held-out test split (every 2nd clip): LVE, mouth r, r by language: OUT/synth/
# - articulation of those predictions with the generator's own phone timings: OUT/artic_synth/
# - with SIZES (e.g. SIZES="0.67 1.5 2"): LibriVox on FLAME_sample at each of those times its size,
#   OUT/size_K/ (a sculpt or game head can be well off life size after the unit snap)
# Needs ../shared (FLAME, BIWI and the speech clips are not redistributable) and `.[train]`.
# The heads and their masks: training.articulation.HEADS.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: [PROMPTS=DIR] [TELEPHONE=DIR] [VOICES=DIR] [SIZES='K ...'] $0 CHECKPOINT SYNTH_DATA OUT" >&2; exit 2; }
# the caller's paths, before the cd into the repository
CKPT=$(realpath -m "$1") DATA=$(realpath -m "$2") OUT=$(realpath -m "$3")
PROMPTS=${PROMPTS:+$(realpath -m "$PROMPTS")} TELEPHONE=${TELEPHONE:+$(realpath -m "$TELEPHONE")}
VOICES=${VOICES:+$(realpath -m "$VOICES")}
LIBRIVOX=${LIBRIVOX:+$(realpath -m "$LIBRIVOX")}
cd "$(dirname "$0")/.."
LIBRIVOX=${LIBRIVOX:-../shared/data/speech}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
for HEAD in flame demo biwi; do
    $PY -m training.articulation --checkpoint "$CKPT" --speech-dir "$LIBRIVOX" --head $HEAD \
        --out "$OUT/artic_$HEAD"
done
# the independent real-speech judges, when their folders are given (candidates are ranked by the
# prompts first: they hold most of the bilabials)
for JUDGE in "prompts:${PROMPTS:-}" "telephone:${TELEPHONE:-}" "voices:${VOICES:-}"; do
    NAME=${JUDGE%%:*} DIR=${JUDGE#*:}
    [ -n "$DIR" ] || continue
    for HEAD in flame demo; do
        $PY -m training.articulation --checkpoint "$CKPT" --speech-dir "$DIR" --head $HEAD --no-plots \
            --out "$OUT/${NAME}_$HEAD"
    done
done
for K in ${SIZES:-}; do
    $PY -m training.articulation --checkpoint "$CKPT" --speech-dir "$LIBRIVOX" --head flame --size-factor "$K" \
        --no-plots --out "$OUT/size_$K"
done
$PY -m training.predict --checkpoint "$CKPT" --data "$DATA" --split test --every 2 --no-plots \
    --out "$OUT/synth_pred" --evaluate "$OUT/synth"
$PY -m training.articulation --data "$DATA" --split test --pred "$OUT/synth_pred" --out "$OUT/artic_synth" --no-plots
