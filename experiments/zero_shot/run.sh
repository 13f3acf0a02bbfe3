#!/usr/bin/env bash
# Zero-shot: checkpoints trained on marco7k only, scored on Cranfield (BEIR format, test qrels) and
# marco7k validation, against BM25 and the hybrids; both calls the issue names (evaluate.py, and
# index.py + Searcher) give the same dense figure (--dense-only) and the same hybrid figure.
set -euo pipefail
MARCO=${1:-../shared/data/marco7k}; CRAN=${2:-../shared/data/cranfield}; OUT=${3:-outputs/zero_shot}
export HF_HUB_OFFLINE=1
python train.py -m experiment=best_infonce seed=1,2,42 data.path="$MARCO" hydra.sweep.dir="$OUT/best"
python train.py -m experiment=best_glove seed=42 data.path="$MARCO" hydra.sweep.dir="$OUT/best_glove"
for ckpt in "$OUT"/best/*/checkpoints/last.ckpt "$OUT"/best_glove/0/checkpoints/last.ckpt; do
  run=$(dirname "$(dirname "$ckpt")")
  python evaluate.py ckpt="$ckpt" data.path="$CRAN" split=test "retriever=[dense,bm25,hybrid]" out="$run/cranfield"
done
# The same through an index folder and the Python API (a tsv of id<TAB>title text).
python - "$CRAN" "$OUT/cranfield.tsv" <<'PY'
import json, sys
with open(f"{sys.argv[1]}/corpus.jsonl") as f, open(sys.argv[2], "w") as out:
    out.write("id\ttext\n")
    for line in f:
        d = json.loads(line)
        out.write(f"{d['_id']}\t" + " ".join((d.get("title", "") + " " + d["text"]).split()) + "\n")
PY
python index.py ckpt="$OUT/best/2/checkpoints/last.ckpt" corpus="$OUT/cranfield.tsv" out="$OUT/cranfield_index"
python experiments/zero_shot/searcher_ndcg.py "$OUT/cranfield_index" "$CRAN" --dense-only
# experiment=best as of 2026-12-05 (split hyphens, passage IDF ** 0.25, one epoch; now
# best_without_query_relations), seeds 1, 2, 42.
python train.py -m experiment=best_without_query_relations seed=1,2,42 data.path="$MARCO" hydra.sweep.dir="$OUT/best_2026_12_05"
for run in "$OUT"/best_2026_12_05/*/; do
  python evaluate.py ckpt="$run/checkpoints/last.ckpt" data.path="$CRAN" split=test "retriever=[dense,bm25,hybrid]" out="$run/cranfield"
done
python index.py ckpt="$OUT/best_2026_12_05/2/checkpoints/last.ckpt" corpus="$OUT/cranfield.tsv" out="$OUT/cranfield_index_best"
python experiments/zero_shot/searcher_ndcg.py "$OUT/cranfield_index_best" "$CRAN" --dense-only
python experiments/zero_shot/searcher_ndcg.py "$OUT/cranfield_index_best" "$CRAN"   # hybrid: index folders' default since 2026-12-05
# Pseudo-relevance feedback (pyserini's Rocchio setting, conf/prf/rocchio.yaml) on the same checkpoints,
# and its in-domain cost; the teacher with the same feedback for a like-for-like row.
for run in "$OUT"/best_2026_12_05/*/; do
  python evaluate.py ckpt="$run/checkpoints/last.ckpt" data.path="$CRAN" split=test "retriever=[dense_prf]" out="$run/cranfield_prf"
done
python evaluate.py ckpt="$OUT/best_2026_12_05/2/checkpoints/last.ckpt" data.path="$CRAN" split=test "retriever=[teacher_prf]" out="$OUT/teacher_prf_cranfield"
python evaluate.py ckpt="$OUT/best_2026_12_05/2/checkpoints/last.ckpt" data.path="$MARCO" split=validation "retriever=[dense_prf,teacher_prf]" out="$OUT/prf_marco7k"
python experiments/zero_shot/searcher_ndcg.py "$OUT/cranfield_index_best" "$CRAN" --prf --dense-only
# Today's experiment=best (relational distillation of the query tower), seeds 1, 2, 42: Cranfield with the
# hybrid and the feedback, its in-domain figure with feedback, and the index folder path.
python train.py -m experiment=best seed=1,2,42 data.path="$MARCO" hydra.sweep.dir="$OUT/best_relations"
for run in "$OUT"/best_relations/*/; do
  python evaluate.py ckpt="$run/checkpoints/last.ckpt" data.path="$CRAN" split=test "retriever=[hybrid,dense_prf]" out="$run/cranfield"
done
python evaluate.py ckpt="$OUT/best_relations/2/checkpoints/last.ckpt" data.path="$MARCO" split=validation "retriever=[dense_prf]" out="$OUT/relations_prf_marco7k"
python index.py ckpt="$OUT/best_relations/2/checkpoints/last.ckpt" corpus="$OUT/cranfield.tsv" out="$OUT/cranfield_index_relations"
for flags in "" "--dense-only" "--prf --dense-only" "--prf" "--weights 0.5 0.5"; do
  python experiments/zero_shot/searcher_ndcg.py "$OUT/cranfield_index_relations" "$CRAN" $flags
done
# Neighbour smoothing (2026-12-06, conf/smooth/neighbours.yaml) on the same checkpoints: Cranfield and marco7k
# validation, with and without feedback, and the index folder built with smooth=neighbours.
for run in "$OUT"/best_relations/*/; do
  python evaluate.py ckpt="$run/checkpoints/last.ckpt" data.path="$CRAN" split=test "retriever=[smoothed]" out="$run/cranfield_smoothed"
  python evaluate.py ckpt="$run/checkpoints/last.ckpt" data.path="$MARCO" split=validation "retriever=[smoothed]" out="$run/marco7k_smoothed"
done
python index.py ckpt="$OUT/best_relations/2/checkpoints/last.ckpt" data.path="$CRAN" smooth=neighbours out="$OUT/cranfield_index_smoothed"
for flags in "" "--dense-only" "--prf --dense-only" "--prf"; do
  python experiments/zero_shot/searcher_ndcg.py "$OUT/cranfield_index_smoothed" "$CRAN" $flags
done
