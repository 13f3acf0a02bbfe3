"""Hard-negative mining at v1.1 size: time and peak memory (issue #14 item 4; a benchmark, not a test).

    python experiments/scale/mining_bench.py --rows 82326 --miner bm25 --out results.jsonl [--code DIR]
    python experiments/scale/mining_bench.py --rows 82326 --passage-words 40 80 --miner ann --ckpt CKPT --mine-queries 1024 ...

Training rows from ``synthetic.make_rows`` (8 passages a row, ``--passage-words`` filler words a passage,
default 40-72: mean 56, v1.1's average; 1,500 topics), prepared with a bare tokenizer (mining needs only
texts, positives and candidates), then ``miner.scorer(split)`` (BM25 index / dense encoding) and
``miner.mine(split, scorer)`` (every query ranked over every training passage). ``--code DIR`` imports
``two_tower`` from another checkout (e.g. main before the change) to compare time, memory and the pools
(their SHA-1 is printed). Peak RSS is this process's high-water mark after each step (no worker processes).
ANN mining writes its vector files to a temporary folder under ``--work-dir`` (code with bounded ANN
mining; removed by ``scorer.close()`` after mining).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=82326)
    parser.add_argument("--topics", type=int, default=1500)
    parser.add_argument("--passage-words", type=int, nargs=2, default=[40, 72])
    parser.add_argument("--miner", choices=["bm25", "ann"], default="bm25")
    parser.add_argument("--ckpt")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--code", default=str(Path(__file__).resolve().parents[2]))
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", default="/tmp/mining_bench", help="the miner's cache_dir (ANN's temporary vector files go there)")
    parser.add_argument("--mine-queries", type=int, default=0, help="mine only the first N queries (over all passages); 0 = all")
    args = parser.parse_args()
    sys.path.insert(0, args.code)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import two_tower
    from two_tower.data import msmarco, synthetic
    from two_tower.data.prepared import PreparedSplit
    from two_tower.data.tokenizer import PAD, UNK, Tokenizer

    figures = {"code": str(Path(two_tower.__file__).parents[1]), "miner": args.miner, "rows": args.rows, "passage_words": args.passage_words, "chunk": args.chunk}
    t0 = time.perf_counter()
    rows = synthetic.make_rows(args.rows, num_topics=args.topics, passage_words=tuple(args.passage_words), seed=0)
    clean, _ = msmarco.validate_rows(iter(rows), "train", for_training=True)
    del rows
    split = PreparedSplit.from_rows(clean, Tokenizer([PAD, UNK]))
    del clean
    figures.update(passages=split.num_passages, queries=split.num_queries, prepare_s=time.perf_counter() - t0, prepare_peak_rss_mb=peak_rss_mb())
    if args.miner == "bm25":
        from two_tower.negatives import BM25Negatives

        miner = BM25Negatives(per_query=1, chunk=args.chunk, cache_dir=args.work_dir)
    else:
        from two_tower.negatives import ANNNegatives

        miner = ANNNegatives(per_query=1, chunk=args.chunk, checkpoint=args.ckpt, cache_dir=args.work_dir)
    t1 = time.perf_counter()
    scorer = miner.scorer(split)
    figures.update(scorer_s=time.perf_counter() - t1, scorer_peak_rss_mb=peak_rss_mb())
    mined = split
    if args.mine_queries:
        import dataclasses

        from two_tower.data.prepared import Ragged

        n = args.mine_queries
        head = lambda r: Ragged.from_lists([r[i].tolist() for i in range(n)])  # noqa: E731
        mined = dataclasses.replace(split, query_texts=split.query_texts[:n], query_tokens=head(split.query_tokens), positives=head(split.positives), candidates=head(split.candidates))
    figures["mined_queries"] = mined.num_queries
    t2 = time.perf_counter()
    pool = miner.mine(mined, scorer)
    figures.update(mine_s=time.perf_counter() - t2, mine_peak_rss_mb=peak_rss_mb())
    if hasattr(scorer, "passages") and hasattr(scorer.passages, "row_bytes"):  # bounded ANN mining's files
        figures["vector_files_mb"] = (scorer.passages.rows * scorer.passages.row_bytes + scorer.queries.rows * scorer.queries.row_bytes) / 2**20
    if hasattr(scorer, "close"):  # bounded ANN mining: remove its vector files
        scorer.close()
    figures["mine_ms_per_query"] = 1000 * figures["mine_s"] / mined.num_queries
    digest = hashlib.sha1(np.ascontiguousarray(pool.values, dtype=np.int64).tobytes() + np.ascontiguousarray(pool.offsets, dtype=np.int64).tobytes())
    figures.update(pool_sha1=digest.hexdigest()[:16], load_avg_1m=os.getloadavg()[0], time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    print(json.dumps(figures), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
