#!/usr/bin/env bash
# Rebuild the bundled demo model (`--model demo`) from scratch, offline, on CPU.
#
# Trains our dual encoder (a small CNN with coordinate channels and an 8x8 grid of joint-space
# embeddings; frozen all-MiniLM-L6-v2 under an attention-pooling head) on demo-world scenes
# drawn on the fly, evaluates it on a fresh eval-split world, and copies the weights into
# src/clipsearch/models/demo_weights/. Same seed -> same batches and, since the text cache is
# batched independently of the hash seed, the same weights (see clipsearch/train/trainer.py).
#
# One torch thread for the training step and one process drawing scenes ahead of it: on 2
# cores this measured 104 img/s with other jobs running, against 31 img/s for 2 threads plus
# the drawing process (the two fight over the cores). 3500 steps of 128 = 448k scenes.
# --minutes 56 caps the training loop; caching 20k captions through MiniLM adds ~2 minutes.
#
# Usage: scripts/train_demo_model.sh            (about an hour on 2 CPU cores)
#        RESUME=1 scripts/train_demo_model.sh   (continue after an interruption)
# Settings (environment): OUT (build/demo-model), SEED (0), STEPS (3500), PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-build/demo-model}
SEED=${SEED:-0}
STEPS=${STEPS:-3500}
PYTHON=${PYTHON:-.venv/bin/python}
DEST=src/clipsearch/models/demo_weights
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PYTHON" -m clipsearch train --pairs demo-world --out "$OUT" \
    --image-tower cnn --image-size 64 --pool attention --embed-dim 256 \
    --text-tower minilm --freeze-text --caption-pool 20000 \
    --steps "$STEPS" --batch-size 128 --lr 2e-3 --seed "$SEED" \
    --eval-pairs demo-world --eval-size 500 --eval-every 500 \
    --threads 1 --workers 1 --minutes 56 ${RESUME:+--resume}

# Copy only a run that reached its last step (--minutes may stop it early; RESUME=1 continues).
"$PYTHON" - "$OUT" "$STEPS" <<'PY'
import json, sys
state = json.load(open(f"{sys.argv[1]}/checkpoint/trainer_state.json"))
if state["step"] < int(sys.argv[2]):
    sys.exit(f"training stopped at step {state['step']} of {sys.argv[2]}; run again with RESUME=1")
PY

"$PYTHON" -m clipsearch evaluate retrieval --model "$OUT" --pairs demo-world --n 1000 --seed 1

rm -rf "$DEST"
mkdir -p "$DEST"
cp "$OUT/clipsearch_model.json" "$OUT/model.safetensors" "$DEST/"
chmod 644 "$DEST"/*
du -h "$DEST"/*
echo "demo model written to $DEST"
