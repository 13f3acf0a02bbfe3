"""Carve a held-out test split out of a marco7k-shaped folder's training split.

    python experiments/semantic/carve_test_split.py ../shared/data/marco7k outputs/marco7k_heldout --rows 1000 --seed 0
    python train.py experiment=best data.path=outputs/marco7k_heldout seed=42
    python evaluate.py ckpt=.../last.ckpt data.path=outputs/marco7k_heldout split=test "retriever=[dense,bm25,hybrid]"

Writes OUT/train-00000-of-00001.parquet (the training rows left), OUT/test-00000-of-00001.parquet (``--rows``
rows drawn at random with ``--seed``) and a copy of the validation shard, so validation is unchanged and
the test queries were never seen by training or by model selection. Each file is written beside its
target and renamed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from two_tower.core.atomic import atomic_write  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train_files = sorted(args.source.glob("train-*.parquet"))
    val_files = sorted(args.source.glob("validation-*.parquet"))
    if not train_files or not val_files:
        print(f"error: {args.source}: needs train-*.parquet and validation-*.parquet shards", file=sys.stderr)
        sys.exit(2)
    train = pq.ParquetDataset(train_files).read()
    if not 0 < args.rows < train.num_rows:
        print(f"error: --rows={args.rows}: must be between 1 and {train.num_rows - 1} (rows in {args.source} train)", file=sys.stderr)
        sys.exit(2)
    test_rows = np.random.default_rng(args.seed).choice(train.num_rows, args.rows, replace=False)
    is_test = np.zeros(train.num_rows, dtype=bool)
    is_test[test_rows] = True
    args.out.mkdir(parents=True, exist_ok=True)
    for name, table in (
        ("train", train.filter(~is_test)),
        ("test", train.filter(is_test)),
        ("validation", pq.ParquetDataset(val_files).read()),
    ):
        with atomic_write(args.out / f"{name}-00000-of-00001.parquet") as f:
            pq.write_table(table, f)
    print(f"{args.out}: {int((~is_test).sum())} training rows, {args.rows} test rows, validation copied")


if __name__ == "__main__":
    main()
