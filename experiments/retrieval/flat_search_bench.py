"""Exact search over a Flat index: FAISS's ``IndexFlatIP.search`` against ``metrics.rank_dense_scored``
(torch matrix products in passage blocks, what ``PassageIndex.search`` uses for Flat folders), on random
unit vectors, 1 and 256 queries, top 10, torch and FAISS both at 1 and then 2 threads; best of 3 each.

    python experiments/retrieval/flat_search_bench.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SIZES = ((5_000, 8_448), (50_000, 2_304), (200_000, 2_304), (200_000, 256), (1_000_000, 128))  # (passages, dim)


def main() -> None:
    import faiss
    import numpy as np
    import torch

    from two_tower.core.metrics import rank_dense_scored

    rng = np.random.default_rng(0)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        for passages, dim in SIZES:
            stored = rng.standard_normal((passages, dim), dtype=np.float32)
            stored /= np.linalg.norm(stored, axis=1, keepdims=True)
            index = faiss.IndexFlatIP(dim)
            index.add(stored)
            for count in (1, 256):
                queries = rng.standard_normal((count, dim), dtype=np.float32)
                seconds = {"faiss": [], "torch": []}
                for _ in range(3):
                    start = time.perf_counter()
                    index.search(queries, 10)
                    seconds["faiss"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    rank_dense_scored(torch.from_numpy(queries), torch.from_numpy(stored), 10)
                    seconds["torch"].append(time.perf_counter() - start)
                f, t = min(seconds["faiss"]), min(seconds["torch"])
                print(f"threads {threads}, {passages:,} x {dim}, {count} queries: FAISS {f * 1000:.1f} ms, rank_dense {t * 1000:.1f} ms, {t / f:.2f}x", flush=True)


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
