#!/usr/bin/env bash
# encoder x negatives grid on marco7k (GloVe fine-tuned, InfoNCE, 5 epochs).
set -euo pipefail
DATA=${1:-../shared/data/marco7k}; OUT=${2:-outputs/grid}
python train.py -m encoder=rnn,gru,lstm negatives=random,in_batch data.path="$DATA" hydra.sweep.dir="$OUT"
python experiments/summarize.py "$OUT" --out experiments/grid
