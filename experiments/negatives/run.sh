#!/usr/bin/env bash
# Negatives study on marco7k: same GRU towers, InfoNCE, 5 epochs; only the negatives differ.
# Usage: bash experiments/negatives/run.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data/marco7k}
OUT=${2:-outputs/negatives}
common=(data.path="$DATA" encoder=gru loss=infonce trainer.max_epochs=5)
python train.py -m negatives=random,in_batch,bm25 "${common[@]}" hydra.sweep.dir="$OUT/sweep"
# ANN negatives mined with the in_batch job's best checkpoint (job 1 of the sweep)
CKPT=$(ls "$OUT"/sweep/1/checkpoints/epoch*.ckpt | head -1)
python train.py negatives=ann negatives.checkpoint="$CKPT" "${common[@]}" hydra.run.dir="$OUT/ann"
python train.py negatives=ann negatives.checkpoint="$CKPT" negatives.refresh_every_n_epochs=2 "${common[@]}" hydra.run.dir="$OUT/ann_refresh2"
python experiments/summarize.py "$OUT/sweep" "$OUT/ann" "$OUT/ann_refresh2" --out experiments/negatives
