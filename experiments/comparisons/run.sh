#!/usr/bin/env bash
# The issue-18 demo: experiment=best_glove (experiment=best when it ran, commit 0c158ec) over 3 seeds on marco7k with a test split carved from train,
# BM25 on the same test split, and the comparison (mean +- 95% CI over seeds, paired tests over queries).
# Usage: bash experiments/comparisons/run.sh [MARCO7K_DIR] [OUT_DIR]
set -euo pipefail
SRC=${1:-../shared/data/marco7k}; OUT=${2:-outputs/comparisons}
DATA=$OUT/marco7k_test  # never commit it
python experiments/comparisons/carve_test_split.py "$SRC" "$DATA" --rows 1000 --seed 0
python train.py -m experiment=best_glove seed=1,2,3 data.path="$DATA" threads=1 hydra.sweep.dir="$OUT/best"
python evaluate.py retriever=bm25 split=test data.path="$DATA" out="$OUT/bm25_test" hydra.run.dir="$OUT/bm25_test"
python -m two_tower.cli.compare "$OUT/best" --metric test/mrr@10 --baseline "$OUT/bm25_test" --out experiments/comparisons/demo
# The negatives study again, 3 seeds each (2 epochs instead of the study's 5: the time box of issue 18).
python train.py -m negatives=random,in_batch,bm25 seed=1,2,3 encoder=gru loss=infonce trainer.max_epochs=2 data.path="$DATA" threads=1 hydra.sweep.dir="$OUT/negatives"
python -m two_tower.cli.compare "$OUT/negatives" --metric test/mrr@10 --out experiments/comparisons/negatives
