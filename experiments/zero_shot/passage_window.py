"""How much of a long passage the passage tower should read: nDCG@10 (BEIR test qrels, scored by ranx) of a
checkpoint's dense ranking when each passage is cut at other windows than the tokenizer's
``max_passage_len``, and with MaxP (Dai & Callan 2019: a passage scores the best of its token windows).

    python experiments/zero_shot/passage_window.py CKPT ../shared/data/cranfield [--windows 64 128 192 512] [--stride 64]

The bag-of-words path weighs terms by their statistics over the passages as the tokenizer's own window cuts
them (what evaluate.py and index.py use), in every row, so only what the towers read changes. The first row
of the tokenizer's window is evaluate.py's ``dense`` row (a check that this script ranks as it does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("beir")
    parser.add_argument("--split", default="test")
    parser.add_argument("--windows", type=int, nargs="+", default=[64, 128, 192, 512])
    parser.add_argument("--stride", type=int, default=64, help="MaxP: tokens between the starts of a passage's windows")
    args = parser.parse_args()
    import numpy as np
    import torch
    from ranx import Qrels, Run, evaluate

    from two_tower.core.ragged import Ragged
    from two_tower.data.beir import load_beir
    from two_tower.retrieval.checkpoint import encode_tokens, load_checkpoint

    torch.set_num_threads(1)
    module = load_checkpoint(args.ckpt)
    tokenizer, towers = module.tokenizer, module.towers
    dim = towers.passage_encoder.output_dim
    collection = load_beir(args.beir, args.split)
    qrels = Qrels({q: docs for q, docs in collection.relevant().items() if docs})  # documents outside the corpus count
    query_ids = [q for q in collection.query_ids if q in qrels.qrels]
    texts = dict(zip(collection.query_ids, collection.query_texts))
    full = Ragged(*tokenizer.encode_ragged(collection.corpus_texts, 1 << 30))
    if towers.bags():
        towers.set_statistics(towers.corpus_statistics(Ragged(*tokenizer.encode_ragged(collection.corpus_texts, tokenizer.max_passage_len))))
    queries = encode_tokens(module.encode_queries, Ragged(*tokenizer.encode_ragged([texts[q] for q in query_ids], tokenizer.max_query_len)), dim)

    def ndcg(scores: torch.Tensor) -> float:
        top = torch.topk(scores, min(100, scores.shape[1]), dim=1)
        run = {q: {collection.corpus_ids[j]: float(v) for v, j in zip(top.values[i].tolist(), top.indices[i].tolist())} for i, q in enumerate(query_ids)}
        return float(evaluate(qrels, Run(run), "ndcg@10"))

    def windows(length: int, stride: int) -> tuple[Ragged, np.ndarray]:
        """Every passage's windows of ``length`` tokens, starting every ``stride`` (the last one ends at the passage's end)."""
        rows, owner = [], []
        for i in range(len(full)):
            ids = full[i]
            starts = list(range(0, max(len(ids) - length, 0) + 1, stride))
            if starts[-1] + length < len(ids):
                starts.append(len(ids) - length)
            rows += [ids[s : s + length] for s in starts]
            owner += [i] * len(starts)
        return Ragged.from_lists(rows), np.asarray(owner)

    print(f"{len(query_ids)} queries, {len(full)} passages; the model's window: {tokenizer.max_passage_len} tokens; "
          f"passages longer than it: {int(np.count_nonzero(full.lengths > tokenizer.max_passage_len))}")
    print("| passages read as | nDCG@10 |\n|---|---|")
    for length in args.windows:
        cut = Ragged.from_lists([full[i][:length] for i in range(len(full))])
        passages = encode_tokens(module.encode_passages, cut, dim)
        mark = " (the model's window)" if length == tokenizer.max_passage_len else ""
        print(f"| the first {length} tokens{mark} | {ndcg(queries @ passages.T):.4f} |")
    parts, owner = windows(tokenizer.max_passage_len, args.stride)
    scores = queries @ encode_tokens(module.encode_passages, parts, dim).T
    best = torch.full((len(query_ids), len(full)), -torch.inf).scatter_reduce(1, torch.from_numpy(owner).expand(len(query_ids), -1), scores, reduce="amax")
    print(f"| MaxP: the best of its {tokenizer.max_passage_len}-token windows, every {args.stride} tokens ({len(parts)} windows) | {ndcg(best):.4f} |")


if __name__ == "__main__":
    main()
