"""Where the student loses to its teacher: per-query MRR@10 of two retrievers of one evaluate.py run,
grouped by how many of the query's words its selected passage contains.

    python evaluate.py ckpt=BEST.ckpt data.path=../shared/data/marco7k split=validation "retriever=[dense,teacher]" out=EVAL
    python experiments/semantic/gap.py EVAL ../shared/data/marco7k [--split validation] [--student dense --teacher teacher]

Overlap: the share of the query's words found in its selected passage (the best of its selected
passages if several). Words are split as the project's tokenizer splits them with hyphens splitting,
bm25s' English stopwords are left out and the rest Snowball-stemmed (close to `bm25_stemmed`, which also
drops one-letter tokens). Every figure is a mean over the split's evaluated queries (those with a selected passage).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BINS = [(0.0, 0.5, "under half"), (0.5, 1.0, "half or more, not all"), (1.0, 1.01, "all")]


def stems(text: str, stemmer, stopwords: set[str]) -> set[str]:
    from two_tower.data.tokenizer import split_words

    return set(stemmer.stemWords([w for w in split_words(text, split_hyphens=True) if w not in stopwords]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dir", type=Path, help="an evaluate.py output folder with per_query/<retriever>.parquet")
    parser.add_argument("data", help="the data.path that run evaluated")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--student", default="dense")
    parser.add_argument("--teacher", default="teacher")
    args = parser.parse_args()

    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    from two_tower.core import per_query
    from two_tower.data.prepared import PreparedSplit
    from two_tower.data.tokenizer import PAD, UNK, Tokenizer
    from two_tower.retrieval.corpus import load_split_rows

    split = PreparedSplit.from_rows(load_split_rows(args.split, args.data, "microsoft/ms_marco", "v1.1"), Tokenizer([PAD, UNK]))
    stemmer, stopwords = Stemmer.Stemmer("english"), set(STOPWORDS_EN)
    rows = split.evaluated_queries()
    overlap = {}
    for row in rows:
        query = stems(split.query_texts[row], stemmer, stopwords)
        passages = [stems(split.passage_texts[p], stemmer, stopwords) for p in split.positives[row].tolist()]
        overlap[str(row)] = max(len(query & p) for p in passages) / max(len(query), 1)
    runs = {name: per_query.read(args.eval_dir / "per_query" / f"{name}.parquet", "mrr@10").set_index("qid")["mrr@10"] for name in (args.student, args.teacher)}
    table = pd.DataFrame(runs)
    table["overlap"] = pd.Series(overlap)
    if table["overlap"].isna().any():
        raise SystemExit(f"error: {args.eval_dir}: its query ids are not the rows of {args.data} {args.split}")
    gap_total = (table[args.teacher] - table[args.student]).sum()
    if gap_total == 0:
        raise SystemExit(f"{args.student} and {args.teacher} score every query alike: no gap to split")
    print(f"{len(table)} queries; {args.student} MRR@10 {table[args.student].mean():.4f}, {args.teacher} {table[args.teacher].mean():.4f}\n")
    print(f"| query words in the selected passage | queries | {args.student} | {args.teacher} | gap | share of the whole gap |")
    print("|---|---|---|---|---|---|")
    for low, high, label in BINS:
        part = table[(table["overlap"] >= low) & (table["overlap"] < high)]
        gap = (part[args.teacher] - part[args.student]).sum()
        print(f"| {label} | {len(part)} | {part[args.student].mean():.4f} | {part[args.teacher].mean():.4f} | {gap / max(len(part), 1):.4f} | {gap / gap_total:.0%} |")
    first_t, first_s = table[args.teacher] == 1.0, table[args.student] == 1.0
    print(f"\nteacher first, student not: {int((first_t & ~first_s).sum())}; student first, teacher not: {int((first_s & ~first_t).sum())}; "
          f"both first: {int((first_t & first_s).sum())}; neither: {int((~first_t & ~first_s).sum())}")
    print(f"queries where the student ranks the selected passage outside its top 10 and the teacher inside: "
          f"{int(((table[args.student] == 0) & (table[args.teacher] > 0)).sum())}")


if __name__ == "__main__":
    main()
