"""How far the bag-of-words path can go: exact sparse scoring on its keys against its random projection.

    python experiments/zero_shot/lexical_ceiling.py ../shared/data/marco7k ../shared/data/cranfield

Tokenizes marco7k (validation) and Cranfield (test) as ``experiment=best_glove`` does (same vocabulary,
stemmed keys), then ranks every passage of each split with sparse matrices, exactly, under two
weightings: the bag's own (cosine of log-TF x corpus-IDF vectors) and BM25 (k1 1.2, b 0.75, the bag's
IDF; query terms weighted by IDF). Each is also scored after projecting both sides onto random +-1
signatures of 2,048 and 4,096 dimensions (three draws each), which is what a dense bag does.
Prints MRR@10, nDCG@10 and Recall@100 through the project's tested metric code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(marco: str, cranfield: str) -> None:
    from hydra import compose, initialize_config_dir

    from two_tower.data.beir import load_beir, prepared_split
    from two_tower.data.prepared import Ragged
    from two_tower.core.metrics import ranking_metrics
    from two_tower.training.train import build_datamodule, build_module

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "two_tower" / "conf")):
        cfg = compose("train", overrides=["experiment=best_glove", f"data.path={Path(marco).resolve()}", "threads=1"])
    torch.set_num_threads(1)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    bag = build_module(cfg, dm).towers.bags()[0]

    def counts(tokens: Ragged, columns: dict) -> sp.csr_matrix:
        values = np.asarray(tokens.values, dtype=np.int64)
        with torch.no_grad():
            keys = bag.token_keys(torch.from_numpy(values)).numpy()
        real = values > 1
        rows = np.repeat(np.arange(len(tokens)), np.diff(tokens.offsets))[real]
        cols = np.array([columns.setdefault(int(k), len(columns)) for k in keys[real]], dtype=np.int64)
        m = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(tokens), 1 << 24))
        m.sum_duplicates()
        return m

    def l2(m):
        norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
        return sp.diags(1 / np.where(norms > 0, norms, 1)) @ m

    def report(name: str, split) -> None:
        columns: dict = {}
        P, Q = counts(split.passage_tokens, columns), counts(split.query_tokens, columns)
        P, Q = P[:, : len(columns)].tocsr(), Q[:, : len(columns)].tocsr()
        n = P.shape[0]
        idf = np.log((n + 1) / (np.asarray((P > 0).sum(0)).ravel() + 0.5))  # the bag's IDF (two_tower/model/bag.py)
        rows = split.evaluated_queries()
        relevant = split.relevance(rows)

        def score(p, q) -> str:
            s = q[rows] @ p.T
            s = s.toarray() if sp.issparse(s) else s
            ranked = torch.sort(torch.from_numpy(np.asarray(s)), dim=1, descending=True, stable=True).indices[:, :100]
            m = ranking_metrics(ranked, relevant)
            return f"{m['mrr@10']:.4f} {m['ndcg@10']:.4f} {m['recall@100']:.4f}"

        logtf = P.copy()
        logtf.data = 1 + np.log(logtf.data)
        qlog = Q.copy()
        qlog.data = 1 + np.log(qlog.data)
        cosine = (l2(logtf @ sp.diags(idf)), l2(qlog @ sp.diags(idf)))
        length = np.asarray(P.sum(1)).ravel()
        coo = P.tocoo()
        k1, b = 1.2, 0.75
        tf = coo.data * (k1 + 1) / (coo.data + k1 * (1 - b + b * length[coo.row] / length.mean()))
        binary = Q.copy()
        binary.data[:] = 1
        bm25 = (sp.csr_matrix((tf, (coo.row, coo.col)), shape=P.shape), binary @ sp.diags(idf))
        print(f"\n{name}: {len(rows)} queries, {n} passages; MRR@10 nDCG@10 Recall@100", flush=True)
        rng = np.random.default_rng(0)
        for weighting, (p, q) in (("cosine log-TF-IDF (the bag)", cosine), ("BM25 k1 1.2 b 0.75", bm25)):
            print(f"  {weighting:28s} exact          {score(p, q)}", flush=True)
            for dim in (2048, 4096):
                for draw in range(3):
                    signs = (rng.integers(0, 2, size=(p.shape[1], dim), dtype=np.int8) * 2 - 1).astype(np.float32) / np.sqrt(dim)
                    print(f"  {weighting:28s} {dim}-d draw {draw} {score(p @ signs, q @ signs)}", flush=True)

    report("marco7k validation", dm.val)
    split = prepared_split(load_beir(cranfield, "test"))
    split.query_tokens = Ragged.from_lists(dm.tokenizer.encode_queries(split.query_texts))
    split.passage_tokens = Ragged.from_lists(dm.tokenizer.encode_passages(split.passage_texts))
    report("Cranfield test", split)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("marco", nargs="?", default="../shared/data/marco7k", help="a marco7k-shaped folder (its validation split)")
    ap.add_argument("cranfield", nargs="?", default="../shared/data/cranfield", help="a BEIR folder (its test qrels)")
    args = ap.parse_args()
    main(args.marco, args.cranfield)
