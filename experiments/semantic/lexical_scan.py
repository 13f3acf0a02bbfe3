"""Which word splitting and IDF weighting the bag-of-words path should use: exact sparse rankings, no training.

    python experiments/semantic/lexical_scan.py ../shared/data/marco7k ../shared/data/cranfield

Ranks every passage of marco7k validation (1,000 queries, 5,054 passages) and of Cranfield (test
qrels) by the cosine of log-TF x IDF vectors, exactly (sparse matrices; the bag path is a random
projection of this), under variants of what the bag reads: the words of ``split_words`` with and
without ``split_hyphens``, English-stemmed as ``bag_stemmer=english`` does, queries cut at 32 words and
passages at 128 as the tokenizer does, and the IDF raised to one power on the query side and another
on the passage side (``encoder.bag_passage_idf_power``). IDF: the bag's, ``log((N + 1) / (df + 0.5))``
over the corpus being ranked. Prints MRR@10 and nDCG@10 through the project's tested metric code.
Choices are made on marco7k validation; Cranfield is printed beside them, never chosen on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from two_tower.core.metrics import ranking_metrics  # noqa: E402
from two_tower.data.tokenizer import split_words  # noqa: E402

# (label, split_hyphens, query IDF power, passage IDF power)
VARIANTS = [
    ("hyphenated words whole, IDF on both sides (before)", False, 1.0, 1.0),
    ("split hyphens, IDF on both sides", True, 1.0, 1.0),
    *((f"split hyphens, passage IDF ** {p}", True, 1.0, p) for p in (0.0, 0.25, 0.5, 0.75)),
    ("split hyphens, IDF ** 1.5 on both sides", True, 1.5, 1.5),
    ("split hyphens, IDF ** 0.5 on both sides", True, 0.5, 0.5),
]


def marco_validation(path: str):
    from two_tower.data import msmarco

    rows, _ = msmarco.validate_rows(msmarco.load_split("validation", path), "validation", for_training=False)
    index: dict[str, int] = {}
    relevant = []
    for row in rows:
        ids = [index.setdefault(t, len(index)) for t in row.passages]
        relevant.append(sorted({i for i, s in zip(ids, row.selected) if s}))
    keep = [i for i, r in enumerate(relevant) if r]
    return list(index), [rows[i].query for i in keep], [relevant[i] for i in keep]


def cranfield_test(path: str):
    from two_tower.data.beir import load_beir, prepared_split

    split = prepared_split(load_beir(path, "test"))
    rows = split.evaluated_queries()
    return split.passage_texts, [split.query_texts[r] for r in rows], split.relevance(rows)


def counts(texts: list[str], max_len: int, split_hyphens: bool, columns: dict, stemmer) -> sp.csr_matrix:
    rows, cols = [], []
    for i, text in enumerate(texts):
        for stem in stemmer.stemWords(split_words(text, split_hyphens=split_hyphens)[:max_len]):
            rows.append(i)
            cols.append(columns.setdefault(stem, len(columns)))
    m = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(texts), 1 << 23))
    m.sum_duplicates()
    return m


def unit_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    return sp.diags(1 / np.where(norms > 0, norms, 1)) @ m


def scan(passages, queries, relevant, stemmer) -> list[str]:
    out = []
    for label, split_hyphens, query_power, passage_power in VARIANTS:
        columns: dict = {}
        P = counts(passages, 128, split_hyphens, columns, stemmer)
        Q = counts(queries, 32, split_hyphens, columns, stemmer)
        P, Q = P[:, : len(columns)].tocsr(), Q[:, : len(columns)].tocsr()
        idf = np.log((P.shape[0] + 1) / (np.asarray((P > 0).sum(0)).ravel() + 0.5))
        for m in (P, Q):
            m.data = 1 + np.log(m.data)
        scores = (unit_rows(Q @ sp.diags(idf**query_power)) @ unit_rows(P @ sp.diags(idf**passage_power)).T).toarray()
        ranked = torch.sort(torch.from_numpy(scores), dim=1, descending=True, stable=True).indices[:, :100]
        metrics = ranking_metrics(ranked, relevant)
        out.append(f"{metrics['mrr@10']:.4f} / {metrics['ndcg@10']:.4f}")
    return out


def main(marco: str, cranfield: str) -> None:
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    columns = [scan(*marco_validation(marco), stemmer), scan(*cranfield_test(cranfield), stemmer)]
    print("| variant | marco7k validation MRR@10 / nDCG@10 | Cranfield test MRR@10 / nDCG@10 |")
    print("|---|---|---|")
    for (label, *_), a, b in zip(VARIANTS, *columns):
        print(f"| {label} | {a} | {b} |")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("marco", nargs="?", default="../shared/data/marco7k", help="a marco7k-shaped folder (its validation split)")
    ap.add_argument("cranfield", nargs="?", default="../shared/data/cranfield", help="a BEIR folder (its test qrels)")
    args = ap.parse_args()
    main(args.marco, args.cranfield)
