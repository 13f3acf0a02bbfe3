"""Search time of an index folder densely (``hybrid=False``) and as a hybrid (its default), alternating in
one process, one thread, the split's evaluated queries, ``k=100``; prints each repetition's seconds, the
ratio of the best of each and, for an MS MARCO split, both modes' MRR@10 from the hits.

    python experiments/retrieval/hybrid_time.py VAL_INDEX ../shared/data/marco7k validation
    python experiments/retrieval/hybrid_time.py CRAN_INDEX ../shared/data/cranfield test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index")
    parser.add_argument("data", help="the split's folder (MS MARCO rows or BEIR)")
    parser.add_argument("split")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import faiss
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from two_tower.retrieval.evaluate import load_split
    from two_tower.retrieval.search import Searcher

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    split = load_split(OmegaConf.create({"data": {"path": args.data, "hub_name": None, "hub_config": None}, "split": args.split}))
    rows = split.evaluated_queries()
    queries = [split.query_texts[r] for r in rows]
    modes = {"dense": Searcher.load(args.index, hybrid=False), "hybrid": Searcher.load(args.index)}
    seconds = {mode: [] for mode in modes}
    hits = {}
    for _ in range(args.repeats):
        for mode, searcher in modes.items():
            start = time.perf_counter()
            hits[mode] = searcher.search(queries, k=100)
            seconds[mode].append(time.perf_counter() - start)
    if split.passage_ids is None:  # MS MARCO rows: passage ids are the split's passage numbers
        for mode, found in hits.items():
            reciprocal = []
            for row, ranked in zip(rows, found):
                positives = set(split.positives[row].tolist())
                ranks = [i for i, h in enumerate(ranked[:10], 1) if int(h.id) in positives]
                reciprocal.append(1 / ranks[0] if ranks else 0.0)
            print(f"{mode}: MRR@10 {np.mean(reciprocal):.4f}")
    print({mode: [round(s, 2) for s in v] for mode, v in seconds.items()})
    print(f"hybrid / dense, best of each: {min(seconds['hybrid']) / min(seconds['dense']):.2f}x")


if __name__ == "__main__":
    main()
