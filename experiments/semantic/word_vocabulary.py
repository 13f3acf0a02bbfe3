"""Static vectors of whole words (model2vec's ``vocabulary=``: each word encoded by the teacher on its own) against
the subword vectors ``embeddings=distilled`` uses (each word the sum of its subword tokens' vectors), both scored as a
static retriever: marco7k validation MRR@10 (the split's unique passages) and a BEIR folder's test nDCG@10.

    python experiments/semantic/word_vocabulary.py ../shared/data/marco7k ../shared/data/cranfield OUT [--words 50000]

``--words N``: GloVe 6B's N most frequent words as the vocabulary (a fixed list: nothing is read from the texts
scored). OUT gets the distilled model2vec folder. Distilling encodes every word: ~6 min for 50k words on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def beir_ndcg(model, folder: str) -> float:
    """nDCG@10 of the static model over a BEIR folder's test split (title and text joined as BEIR does), by ranx."""
    import numpy as np
    from ranx import Qrels, Run, evaluate

    from two_tower.data.beir import load_beir

    collection = load_beir(folder, "test")
    qrels = collection.relevant()  # documents outside the corpus count, as in evaluate.py
    text = dict(zip(collection.query_ids, collection.query_texts))
    queries = [q for q in collection.query_ids if qrels.get(q)]
    p, q = model.encode(collection.corpus_texts), model.encode([text[x] for x in queries])
    p /= np.linalg.norm(p, axis=1, keepdims=True) + 1e-9
    q /= np.linalg.norm(q, axis=1, keepdims=True) + 1e-9
    scores = q @ p.T
    top = np.argsort(-scores, axis=1)[:, :100]
    run = {x: {collection.corpus_ids[j]: float(scores[i, j]) for j in top[i]} for i, x in enumerate(queries)}
    return float(evaluate(Qrels(qrels), Run(run), "ndcg@10"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("marco", type=Path)
    parser.add_argument("beir")
    parser.add_argument("out", type=Path)
    parser.add_argument("--words", type=int, default=50_000)
    args = parser.parse_args()

    from model2vec import StaticModel
    from model2vec.distill import distill
    from tokenlearn_vectors import split_texts, static_mrr

    from two_tower.data.embeddings import DistilledEmbeddings, _glove_words
    from two_tower.data.teacher import resolve_model

    subword = DistilledEmbeddings().static_model()  # what embeddings=distilled uses (cached)
    if not (args.out / "model.safetensors").exists():
        start = time.perf_counter()
        words = distill(model_name=resolve_model(DistilledEmbeddings().teacher), vocabulary=_glove_words()[: args.words], pca_dims=256, device="cpu")
        words.save_pretrained(str(args.out))
        print(f"distilled {args.words} words in {time.perf_counter() - start:.0f} s")
    words = StaticModel.from_pretrained(str(args.out))
    validation = split_texts(args.marco, "validation")
    for name, model in [("subword tokens (embeddings=distilled)", subword), (f"+ GloVe's {args.words} most frequent words", words)]:
        print(f"{name}: marco7k validation MRR@10 {static_mrr(model, *validation):.4f}, {args.beir} test nDCG@10 {beir_ndcg(model, args.beir):.4f}")


if __name__ == "__main__":
    main()
