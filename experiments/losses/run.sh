#!/usr/bin/env bash
# Triplet vs InfoNCE, and the margin / temperature that works (GRU, random negatives + in-batch).
set -euo pipefail
DATA=${1:-../shared/data/marco7k}; OUT=${2:-outputs/losses}
python train.py -m loss=triplet loss.margin=0.1,0.2,0.4 negatives=random data.path="$DATA" hydra.sweep.dir="$OUT/triplet"
python train.py -m loss=infonce loss.temperature=0.02,0.05,0.1 negatives=random data.path="$DATA" hydra.sweep.dir="$OUT/infonce"
python experiments/summarize.py "$OUT/triplet" "$OUT/infonce" --out experiments/losses
