"""Where the gap to the teacher sits, asked from the query side: the teacher's own query vectors against the
student's passage vectors, mapped into the teacher's space by ridge regression fitted on training passages that are
not validation passages (marco7k's splits share 97% of their passages; see README, "Static vectors fitted to the
teacher"). Prints marco7k validation MRR@10 (full corpus of the split, exact ranking) of the student, the teacher,
teacher query x mapped student passage, and the z-scored fusion of that with the student's own scores.

    python experiments/semantic/teacher_query_side.py CKPT ../shared/data/marco7k

Scratch study (2026-12-08): the map is not a product feature; the teacher vectors come from the cache
``loss=distill`` and ``retriever=teacher`` fill (encoded here if missing: minutes on a CPU).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

from two_tower.data.prepared import PreparedSplit
from two_tower.data.teacher import DEFAULT_TEACHER, SentenceTransformerTeacher
from two_tower.retrieval.corpus import load_split_rows
from two_tower.retrieval.encoder import Encoder


def mrr_at_10(scores: torch.Tensor, positives: list[np.ndarray]) -> float:
    """Exact MRR@10: a query's rank is 1 + the passages scored above its best positive (ties in its favour)."""
    reciprocal = []
    for row, chosen in enumerate(positives):
        if len(chosen):
            rank = int((scores[row] > scores[row, chosen].max()).sum()) + 1
            reciprocal.append(1.0 / rank if rank <= 10 else 0.0)
    return float(np.mean(reciprocal))


def zscore(scores: torch.Tensor) -> torch.Tensor:
    return (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt")
    parser.add_argument("data")
    parser.add_argument("--ridge", type=float, nargs="+", default=[0.01, 0.1, 1.0, 10.0])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    encoder, teacher = Encoder.load(args.ckpt), SentenceTransformerTeacher(DEFAULT_TEACHER)
    splits, vectors = {}, {}
    for name in ("train", "validation"):
        split = splits[name] = PreparedSplit.from_rows(load_split_rows(name, args.data, "microsoft/ms_marco", "v1.1"))
        taught = teacher.vectors(split.query_texts, split.passage_texts)
        encoder.fit_corpus(split.passage_texts)  # each split's passages weigh its bag's words, as validation does
        vectors[name] = {"tq": torch.from_numpy(taught.queries), "tp": torch.from_numpy(taught.passages),
                         "sq": torch.from_numpy(encoder.encode_queries(split.query_texts)), "sp": torch.from_numpy(encoder.encode_passages(split.passage_texts))}
    val, positives = vectors["validation"], [splits["validation"].positives[i] for i in range(len(splits["validation"].positives))]
    shared = set(splits["validation"].passage_texts)
    fit = torch.tensor([text not in shared for text in splits["train"].passage_texts])
    print(f"fitting on {int(fit.sum())} of {len(fit)} training passages (the rest are validation passages too)")
    student = val["sq"] @ val["sp"].T
    print(f"student {mrr_at_10(student, positives):.4f}   teacher {mrr_at_10(val['tq'] @ val['tp'].T, positives):.4f}")
    X, Y = vectors["train"]["sp"][fit].double(), vectors["train"]["tp"][fit].double()
    gram = X @ X.T
    for ridge in args.ridge:
        mapping = (X.T @ torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype), Y)).float()  # dual form: fewer rows than features
        mapped = val["sp"] @ mapping
        cosine = torch.nn.functional.cosine_similarity(mapped, val["tp"], dim=1).mean()
        asymmetric = val["tq"] @ torch.nn.functional.normalize(mapped, dim=1).T
        fused = " ".join(f"{w}: {mrr_at_10(w * zscore(asymmetric) + (1 - w) * zscore(student), positives):.4f}" for w in (0.3, 0.5, 0.7))
        print(f"ridge {ridge}: cosine to the teacher's passage vectors {cosine:.3f}; teacher query x mapped passage "
              f"{mrr_at_10(asymmetric, positives):.4f}; fused with the student (weight of the former) {fused}")


if __name__ == "__main__":
    main()
