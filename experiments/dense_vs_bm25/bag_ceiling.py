"""What the bag-of-words path gives before any training, and the exact sparse score it approximates.

    python experiments/dense_vs_bm25/bag_ceiling.py ../shared/data/marco7k [--out experiments/dense_vs_bm25/bag_ceiling.md]

For the validation split (full corpus, exact ranking) it scores:
- the untrained ``BagOfWords`` of the towers (IDF from the training passages, 1 + log tf), alone, at
  several sizes, with and without English stemming: a random projection of log-TF-IDF;
- the exact sparse log-TF-IDF cosine (what the projection tends to as the size grows);
- IDF-weighted mean GloVe vectors (the pre-trained 50d vectors the RNN reads).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from hydra import compose, initialize_config_dir

from two_tower.data.tokenizer import stem_groups
from two_tower.model.encoders import BagOfWords
from two_tower.retrieval.metrics import dense_split_metrics, rank_by_scores, ranking_metrics
from two_tower.train import build_datamodule

ROOT = Path(__file__).resolve().parents[2]


def encode_bag(bag: BagOfWords, tokens, items) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(items), 512):
            rows = items[start : start + 512]
            ids = torch.from_numpy(tokens.padded(rows, 0))
            out.append(bag(ids, torch.from_numpy(tokens.lengths[rows])))
    return torch.cat(out)


def sparse_log_tfidf(tokens, items, weights, groups) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for i, item in enumerate(items):
        words = tokens[item][tokens[item] > 1]  # neither PAD nor UNK, as in the bag
        g, counts = np.unique(groups[words], return_counts=True)
        first = {v: w for v, w in zip(groups[words], weights[words])}
        rows += [i] * len(g)
        cols += list(g)
        vals += [first[v] * (1 + np.log(c)) for v, c in zip(g, counts)]
    m = sp.csr_matrix((vals, (rows, cols)), shape=(len(items), int(groups.max()) + 1))
    norms = np.sqrt(m.multiply(m).sum(1)).A1
    return sp.diags(1 / np.maximum(norms, 1e-12)) @ m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder of MS MARCO v1.1 parquet shards")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("bag_ceiling.md"))
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.path={os.path.abspath(args.data)}"])
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train, val, words = datamodule.train, datamodule.val, datamodule.tokenizer.words
    rows = val.evaluated_queries()
    passages = np.arange(val.num_passages)
    relevant = [val.positives[r] for r in rows]

    results = []
    for stemmer in (None, "english"):
        groups = stem_groups(words, stemmer) if stemmer else np.arange(len(words))
        idf = train.idf(len(words), groups)
        for dim in (256, 1024, 2048, 4096):
            bag = BagOfWords(len(words), dim)
            bag.share_signatures(groups)
            bag.load_term_weights(idf)
            m = dense_split_metrics(encode_bag(bag, val.query_tokens, rows), encode_bag(bag, val.passage_tokens, passages), val, rows)
            results.append((f"untrained bag, {dim}-d", stemmer or "none", m["mrr@10"], m["recall@100"]))
            print(results[-1], flush=True)
        q = sparse_log_tfidf(val.query_tokens, rows, idf, groups)
        p = sparse_log_tfidf(val.passage_tokens, passages, idf, groups)
        m = ranking_metrics(rank_by_scores(torch.from_numpy((q @ p.T).toarray()).float(), 100), relevant)
        results.append(("exact sparse log-TF-IDF cosine", stemmer or "none", m["mrr@10"], m["recall@100"]))
        print(results[-1], flush=True)

    glove = torch.from_numpy(datamodule.embedding_matrix)
    idf = torch.from_numpy(train.idf(len(words)))

    def mean_glove(tokens, items):
        ids = [torch.from_numpy(tokens[i].astype(np.int64)) for i in items]
        out = torch.stack([(glove[t] * idf[t].unsqueeze(1)).sum(0) for t in ids])
        return torch.nn.functional.normalize(out, dim=-1)

    m = dense_split_metrics(mean_glove(val.query_tokens, rows), mean_glove(val.passage_tokens, passages), val, rows)
    results.append(("IDF-weighted mean of GloVe 50d", "none", m["mrr@10"], m["recall@100"]))

    lines = ["| untrained scorer | stemming | val/mrr@10 | R@100 |", "|---|---|---|---|"]
    lines += [f"| {name} | {stem} | {mrr:.4f} | {r100:.3f} |" for name, stem, mrr, r100 in results]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
