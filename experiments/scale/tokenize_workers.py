"""Does tokenizing in worker processes pay on this machine? ``Tokenizer.encode_ragged`` over synthetic
passages of realistic length (40-80 filler words), with 1 and 2 workers, alternated, in one process.

    python experiments/scale/tokenize_workers.py [--passages 200000] [--repeats 2]

Prints the seconds of each pass and the speed-up (workers=1 seconds / workers=2 seconds, same run).
"""

from __future__ import annotations

import argparse
import time

from two_tower.data.synthetic import iter_rows
from two_tower.data.tokenizer import Tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    texts = []
    for row in iter_rows(args.passages // 8 + 1, num_topics=1500, passage_words=(40, 80)):
        texts.extend(row["passages"]["passage_text"])
    texts = texts[: args.passages]
    tokenizer = Tokenizer.build(texts[:20000], min_freq=1)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for workers in (1, 2):
            start = time.perf_counter()
            tokenizer.encode_ragged(texts, tokenizer.max_passage_len, workers=workers)
            seconds[workers].append(time.perf_counter() - start)
            print(f"workers={workers}: {seconds[workers][-1]:.1f}s", flush=True)
    print(f"{len(texts)} passages; speed-up of 2 workers over 1 (best of {args.repeats} each): {min(seconds[1]) / min(seconds[2]):.2f}x")


if __name__ == "__main__":
    main()
