"""nDCG@10, MRR@10 and Recall@100 of an index folder searched through the Python API
(``Searcher.load(DIR).search(queries, k=100)``) against a BEIR folder's test qrels, scored by ranx
(an independent implementation of the metrics evaluate.py computes).

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
    hits = searcher.search([text[q] for q in queries], k=100)
    run = {q: {h.id: float(h.score) for h in hs} for q, hs in zip(queries, hits)}
    scores = evaluate(Qrels(qrels), Run(run), ["ndcg@10", "mrr@10", "recall@100"])
    ranking = "dense" if searcher.lexical is None else f"dense + BM25 {list(searcher.weights)}"
    print(f"{len(queries)} queries, {ranking}{', PRF' if args.prf else ''}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
