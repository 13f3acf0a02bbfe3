"""A passage corpus of a realistic size for the load test, and real queries to send (not a test).

    python experiments/serve/make_corpus.py --data ../shared/data/marco7k --passages 100000 --out /tmp/serve_load

Writes to --out (keep it outside the repo; nothing from the data folder is copied into the repo):
  corpus.tsv    id<TAB>text: every unique passage of the data folder's splits (real MS MARCO text),
                then synthetic passages up to --passages: words drawn from the real passages' word
                frequencies, each as long as a randomly chosen real passage (so lengths, vocabulary and
                out-of-vocabulary rate look like the real ones; the meaning does not matter for latency)
  queries.txt   the validation split's queries, one a line
Then index it with index.py (see experiments/serve/README.md).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder of MS MARCO v1.1 parquet shards (train-*.parquet, validation-*.parquet)")
    parser.add_argument("--passages", type=int, default=100_000, help="corpus size (real passages first, the rest synthetic)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    real: dict[str, None] = {}
    queries: list[str] = []
    for shard in sorted(data.glob("*.parquet")):
        table = pq.read_table(shard, columns=["query", "passages"])
        for passages in table.column("passages").to_pylist():
            real.update((" ".join(t.split()), None) for t in passages["passage_text"] if t and t.strip())
        if shard.name.startswith("validation"):
            queries += [" ".join(q.split()) for q in table.column("query").to_pylist() if q and q.strip()]
    texts = list(real)[: args.passages]

    counts = Counter(w for t in texts for w in t.split())
    words = np.array(list(counts), dtype=object)
    p = np.array(list(counts.values()), dtype=np.float64)
    p /= p.sum()
    lengths = np.array([len(t.split()) for t in texts])
    rng = np.random.default_rng(args.seed)
    n_synthetic = args.passages - len(texts)
    drawn = rng.choice(lengths, size=n_synthetic)
    flat = rng.choice(words, size=int(drawn.sum()), p=p)
    at = 0
    for n in drawn:
        texts.append(" ".join(flat[at : at + n]))
        at += n

    with open(out / "corpus.tsv", "w") as f:
        for i, text in enumerate(texts):
            f.write(f"{i}\t{text}\n")
    (out / "queries.txt").write_text("\n".join(queries) + "\n")
    print(f"{out / 'corpus.tsv'}: {len(texts):,} passages ({len(texts) - n_synthetic:,} real, {n_synthetic:,} synthetic, "
          f"{lengths.mean():.0f} words on average); {out / 'queries.txt'}: {len(queries):,} queries")


if __name__ == "__main__":
    main()
