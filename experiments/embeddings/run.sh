#!/usr/bin/env bash
# Word vectors: GloVe vs word2vec (trained here on the training text) vs random, frozen vs fine-tuned.
set -euo pipefail
DATA=${1:-../shared/data/marco7k}; OUT=${2:-outputs/embeddings}
python train.py -m embeddings=glove,word2vec,random embeddings.freeze=true,false data.path="$DATA" hydra.sweep.dir="$OUT"
python experiments/summarize.py "$OUT" --out experiments/embeddings
