"""Corpus encoding as index.py does it (retrieval.checkpoint.encode_tokens: length-sorted batches,
collate, inference_mode) against the bare forward on the same pre-collated batches, by CPU time.

    python experiments/benchmark/encode_paths.py [--data ../shared/data/marco7k] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from two_tower.data.batches import LengthSortedBatches, TokenBatches  # noqa: E402
from two_tower.data.datamodule import TwoTowerDataModule  # noqa: E402
from two_tower.data.embeddings import RandomEmbeddings  # noqa: E402
from two_tower.model.module import TwoTowerModule  # noqa: E402
from two_tower.negatives import InBatchNegatives  # noqa: E402
from two_tower.retrieval.checkpoint import encode_tokens  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "marco7k"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", default="/tmp/two_tower_bench_cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = {"path": args.data} if Path(args.data).exists() else {"synthetic_rows": {"train_rows": 2000, "val_rows": 1000, "seed": 0}}
    dm = TwoTowerDataModule(RandomEmbeddings(dim=50), InBatchNegatives(), cache_dir=args.cache, **source)
    dm.setup("fit")
    tokens = dm.val.passage_tokens
    print(f"{len(tokens)} passages of {'marco7k validation' if 'path' in source else 'synthetic data'}, CPU time, median of {args.repeats}")
    print("| encoder | batch | bare passages/s | encode_tokens passages/s | encode_tokens/bare |")
    print("|---|---|---|---|---|")
    for cell in ("gru", "lstm"):
        torch.manual_seed(0)
        module = TwoTowerModule(len(dm.tokenizer), 50, {"_target_": "two_tower.model.encoders.RNNEncoder", "cell": cell, "hidden_size": 128, "dim": 128}, {"_target_": "two_tower.model.losses.InfoNCELoss"}, {"_target_": "torch.optim.Adam", "_partial_": True}).eval()
        for batch_size in (64, 256):
            collated = [TokenBatches(tokens)[plan] for plan in LengthSortedBatches(tokens.lengths, batch_size)]
            bare_t, fw_t = [], []
            for _ in range(args.repeats):  # interleaved
                start = time.process_time()
                with torch.inference_mode():
                    for b in collated:
                        module.encode_passages(b["ids"], b["lengths"])
                bare_t.append(time.process_time() - start)
                start = time.process_time()
                encode_tokens(module.encode_passages, tokens, 128, batch_size)
                fw_t.append(time.process_time() - start)
            ratios = [b / f for b, f in zip(bare_t, fw_t)]
            n = len(tokens)
            print(f"| {cell} | {batch_size} | {n / statistics.median(bare_t):,.0f} | {n / statistics.median(fw_t):,.0f} | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
