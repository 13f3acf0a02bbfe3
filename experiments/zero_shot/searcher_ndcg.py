"""nDCG@10, MRR@10 and Recall@100 of an index folder searched through the Python API
(``Searcher.load(DIR).search(queries, k=100)``) against a BEIR folder's test qrels, scored by ranx
(an independent implementation of the metrics evaluate.py computes), given the order the Searcher returned (its tied
scores too). A query without a searchable word, which the Searcher refuses, scores 0 (the line says how many).

    python experiments/zero_shot/searcher_ndcg.py INDEX_DIR ../shared/data/cranfield [--split test] [--prf]

``--prf``: the searcher with Rocchio pseudo-relevance feedback (``RocchioPRF()``: conf/prf/rocchio.yaml's setting).
``--dense-only``: dense alone in a folder built with a BM25 index (``Searcher.load(..., hybrid=False)``);
``--weights 0.5 0.5``: fused with these (dense, BM25) weights instead of the folder's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index")
    parser.add_argument("beir")
    parser.add_argument("--split", default="test")
    parser.add_argument("--prf", action="store_true", help="Rocchio pseudo-relevance feedback (depth 5, alpha 0.4, beta 0.6)")
    parser.add_argument("--dense-only", action="store_true", help="dense alone, also where the folder has a BM25 index")
    parser.add_argument("--weights", type=float, nargs=2, metavar=("DENSE", "BM25"), help="fuse with these weights instead of the folder's")
    args = parser.parse_args()
    from ranx import Qrels, Run, evaluate

    from two_tower.data.beir import load_beir
    from two_tower.retrieval.prf import RocchioPRF
    from two_tower.retrieval.search import Searcher

    collection = load_beir(args.beir, args.split)
    qrels = collection.relevant()  # relevant documents outside the corpus count, as in evaluate.py
    text = dict(zip(collection.query_ids, collection.query_texts))
    queries = [q for q in collection.query_ids if qrels.get(q)]
    searcher = Searcher.load(args.index, prf=RocchioPRF() if args.prf else None, hybrid=False if args.dense_only else args.weights)
    # a query without a word the tokenizer reads (punctuation alone) is refused by the Searcher (EmptyQueryError: the
    # script ended in a traceback); it retrieves nothing here and scores 0, still counted as BEIR counts every query
    searchable = [q for q in queries if searcher.encoder.tokenizer.split(text[q])]
    if not searchable:
        sys.exit(f"error: {args.beir}: no query of split {args.split} has a searchable word")
    hits = searcher.search([text[q] for q in searchable], k=100)
    # ranx is given the Searcher's order (1/rank), not its scores: ranx orders tied scores its own way, so with ties
    # (passages of one text) it scored another ranking than the one returned (lower row first, as evaluate.py ranks)
    run = {q: {h.id: 1.0 / rank for rank, h in enumerate(hs, start=1)} for q, hs in zip(searchable, hits)}
    scores = evaluate(Qrels(qrels), Run(run), ["ndcg@10", "mrr@10", "recall@100"], make_comparable=True)
    ranking = "dense" if searcher.lexical is None else f"dense + BM25 {list(searcher.weights)}"
    unsearchable = f" ({len(queries) - len(searchable)} without a searchable word score 0)" if len(searchable) < len(queries) else ""
    print(f"{len(queries)} queries{unsearchable}, {ranking}{', PRF' if args.prf else ''}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
