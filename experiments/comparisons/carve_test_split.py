"""Carve a labelled test split from marco7k's train for a study (the default data stays as it is).

python experiments/comparisons/carve_test_split.py ../shared/data/marco7k /tmp/marco7k_test [--rows 1000] [--seed 0]

Writes OUT/train-00000-of-00001.parquet (train minus ROWS rows drawn at random with SEED),
OUT/test-00000-of-00001.parquet (those rows) and copies validation as is. Never commit the output.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write(table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source, out = Path(args.source), Path(args.out)
    shards = sorted(source.glob("train-*.parquet"))
    if not shards:
        parser.error(f"{source}: no train-*.parquet shard (a folder in MS MARCO v1.1 layout)")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        # itself: it rewrote the source's train shard, then failed; inside it: its shards become the source's (read recursively)
        parser.error(f"{out}: the source folder or a folder inside it; write the carve outside {source}")
    ours = {"train-00000-of-00001.parquet", "test-00000-of-00001.parquet"}
    ours.update(p.name for p in source.glob("validation-*.parquet"))  # copied over
    stray = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.suffix in (".parquet", ".jsonl", ".json")
                   and p.name.startswith(("train-", "test-", "validation-")) and p.relative_to(out).as_posix() not in ours) if out.is_dir() else []
    if stray:  # they would be read beside the carve's shards
        parser.error(f"{out}: holds other split shards ({', '.join(stray[:3])}); write the carve into an empty folder")
    # every shard, in order (the first alone was read: a second shard's rows were lost; a probe)
    train = pa.concat_tables([pq.read_table(shard) for shard in shards])
    if not 0 < args.rows < train.num_rows:
        parser.error(f"--rows {args.rows}: must be 1 to {train.num_rows - 1} (the train split has {train.num_rows} rows)")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    test_rows = np.sort(rng.choice(train.num_rows, size=args.rows, replace=False))
    keep = np.setdiff1d(np.arange(train.num_rows), test_rows)
    write(train.take(keep), out / "train-00000-of-00001.parquet")
    write(train.take(test_rows), out / "test-00000-of-00001.parquet")
    for val in sorted(source.glob("validation-*.parquet")):
        shutil.copyfile(val, out / val.name)
    print(f"{out}: train {len(keep)} rows, test {len(test_rows)} rows (seed {args.seed}), validation copied")


if __name__ == "__main__":
    main()
