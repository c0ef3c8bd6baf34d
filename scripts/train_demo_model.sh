#!/usr/bin/env bash
# Rebuild the bundled demo model (`--model demo`) from scratch, offline, on CPU, in two phases.
#
# Our dual encoder: a small CNN with coordinate channels and an 8x8 grid of joint-space
# embeddings; frozen all-MiniLM-L6-v2 under an attention-pooling head. Scenes are drawn on the
# fly from the demo world.
#
# Phase 1 (STEPS1 steps, seed 0): the plain multi-positive contrastive loss, where every image a
#   caption is true of counts alike. It learns shapes and colours.
# Phase 2 (STEPS2 steps, seed 1, --base phase 1): what random batches never ask for.
#   --soft-targets    rank the images a caption is true of by how likely the generator is to
#                     write that caption for them ("a red star" fits a lone red star best).
#   --twins 0.25 --twin-kind contrast
#                     a quarter of each batch are copies of captioned scenes with one object
#                     moved, resized or its colours bound to other shapes, so that the caption
#                     is false of the copy: positions and sizes start to matter.
#   --object-queries 32
#                     single-object queries ("a photo of a red star") that match every image
#                     holding such an object; with the twins, binding starts to matter.
#   --pool-positions --attend-objects 0.5
#                     a loss that draws the attention pool's weights onto the objects' boxes,
#                     and a random embedding of each cell's place in the pool: the image vector
#                     is about the objects and holds where they are (the grid re-rank and the
#                     relevance maps gain; the text side does not use the place yet).
# Then it evaluates on a fresh eval-split world and copies the weights into
# src/clipsearch/models/demo_weights/. Same seeds -> same batches and, since the text cache is
# batched independently of the hash seed, the same weights (see clipsearch/train/trainer.py).
#
# One torch thread for the training step and one process drawing scenes ahead of it: on 2
# cores that is faster than 2 threads plus the drawing process (the two fight over the cores).
# Each phase caches the caption states through MiniLM first (about 2 minutes).
#
# Usage: scripts/train_demo_model.sh            (under an hour on 2 CPU cores)
#        RESUME=1 scripts/train_demo_model.sh   (continue after an interruption)
# Settings (environment): OUT (build/demo-model), STEPS1 (3500), STEPS2 (600), PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-build/demo-model}
STEPS1=${STEPS1:-3500}
STEPS2=${STEPS2:-600}
PYTHON=${PYTHON:-.venv/bin/python}
DEST=src/clipsearch/models/demo_weights
PHASE1="$OUT-phase1"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

finished() {  # folder steps: did the run reach its last step?
    "$PYTHON" - "$1" "$2" <<'PY'
import json, pathlib, sys
path = pathlib.Path(sys.argv[1]) / "checkpoint" / "trainer_state.json"
sys.exit(0 if path.is_file() and json.loads(path.read_text())["step"] >= int(sys.argv[2]) else 1)
PY
}

run() {  # folder steps args...: train, or continue with RESUME=1; fail unless it finished
    local folder=$1 steps=$2
    shift 2
    if ! finished "$folder" "$steps"; then
        "$PYTHON" -m clipsearch train --pairs demo-world --out "$folder" --steps "$steps" \
            --eval-pairs demo-world --eval-size 500 --threads 1 --workers 1 "$@" ${RESUME:+--resume}
    fi
    finished "$folder" "$steps" || { echo "$folder stopped before step $steps; run again with RESUME=1" >&2; exit 1; }
}

run "$PHASE1" "$STEPS1" \
    --image-tower cnn --image-size 64 --pool attention --embed-dim 256 \
    --text-tower minilm --freeze-text --caption-pool 20000 \
    --batch-size 128 --lr 2e-3 --seed 0 --eval-every 500 --minutes 48

run "$OUT" "$STEPS2" --base "$PHASE1" \
    --soft-targets --twins 0.25 --twin-kind contrast --object-queries 32 \
    --pool-positions --attend-objects 0.5 \
    --caption-pool 20000 --batch-size 128 --lr 3e-4 --seed 1 --eval-every 300 --minutes 10

"$PYTHON" -m clipsearch evaluate demo --model "$OUT" --seed 1

rm -rf "$DEST"
mkdir -p "$DEST"
cp "$OUT/clipsearch_model.json" "$OUT/model.safetensors" "$DEST/"
chmod 644 "$DEST"/*
du -h "$DEST"/*
echo "demo model written to $DEST"
