"""Exact ranking metrics, shared by validation, evaluate.py and every baseline.

Any retriever hands in, per query, its ranked passage ids (best first, ``-1`` for padding) and the
relevant ids. Metrics are computed from the rank of each relevant passage, so queries with several
positives and positives ranked past k are exact. Dense scores are ranked with a stable sort, so ties
go to the lower passage index, the same order a brute-force ``sorted(key=(-score, index))`` gives.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from two_tower.core.ragged import Ragged

DEFAULT_KS = (1, 10, 100)


def rank_by_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` columns of each row of ``scores`` [Q, P], best first, ties by lower index."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : min(k, scores.shape[1])]


def rank_dense(queries: torch.Tensor, passages: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Exact top-``k`` passages by inner product for every query, in query chunks to bound memory."""
    out = [rank_by_scores(queries[i : i + chunk] @ passages.T, k) for i in range(0, len(queries), chunk)]
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long)


def rank_dense_within(queries: torch.Tensor, passages: torch.Tensor, candidates: Ragged, query_rows: np.ndarray) -> torch.Tensor:
    """Rank each query's own candidate passages (rerank setting); -1 pads short lists."""
    cand = candidates.padded(query_rows, fill=-1)
    cand_t = torch.from_numpy(cand)
    safe = cand_t.clamp(min=0)
    scores = (queries.unsqueeze(1) * passages[safe]).sum(-1)
    scores = scores.masked_fill(cand_t < 0, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return cand_t.gather(1, order)


def rank_within_scores(scores: torch.Tensor, candidates: np.ndarray) -> torch.Tensor:
    """Rank each query's candidates ([Q, C] passage ids, -1 = padding) by its row of ``scores`` [Q, P],
    best first, ties by position in the candidate list (as ``rank_dense_within``); -1 pads."""
    cand = torch.from_numpy(candidates)
    picked = scores.gather(1, cand.clamp(min=0)).masked_fill(cand < 0, float("-inf"))
    return cand.gather(1, torch.sort(picked, dim=1, descending=True, stable=True).indices)


def per_query_metrics(ranked: torch.Tensor | np.ndarray, relevant: list, ks=DEFAULT_KS) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Each query's reciprocal rank (``mrr@10``: 1/rank of the first relevant passage in the top 10, else
    0), ``recall@k`` and ``ndcg@10``, for queries with at least one relevant passage.

    Returns (positions of the evaluated queries in ``ranked``/``relevant``, {metric: one value per
    evaluated query}). ``ranked`` and ``relevant`` as in ``ranking_metrics``; its aggregates are the
    means of these values (``mean_metrics``), so two runs can be compared query by query.
    """
    ranked = np.asarray(ranked)
    values: dict[str, list[float]] = {"mrr@10": [], "ndcg@10": [], **{f"recall@{k}": [] for k in ks}}
    evaluated = []
    for i, (row, rel) in enumerate(zip(ranked, relevant)):
        gain = {int(r): float(g) for r, g in rel.items() if g > 0} if isinstance(rel, dict) else dict.fromkeys((int(r) for r in rel), 1.0)
        if not gain:
            continue
        evaluated.append(i)
        hits = [(rank, gain[pid]) for rank, pid in enumerate(row.tolist(), start=1) if pid in gain]
        values["mrr@10"].append(1.0 / hits[0][0] if hits and hits[0][0] <= 10 else 0.0)
        for k in ks:
            values[f"recall@{k}"].append(sum(1 for h, _ in hits if h <= k) / len(gain))
        dcg = sum(g / math.log2(h + 1) for h, g in hits if h <= 10)
        ideal = sum(g / math.log2(i + 1) for i, g in enumerate(sorted(gain.values(), reverse=True)[:10], start=1))
        values["ndcg@10"].append(dcg / ideal)
    return np.asarray(evaluated, dtype=np.int64), values


def mean_metrics(values: dict[str, list[float]], prefix: str = "") -> dict[str, float]:
    """The aggregate of ``per_query_metrics``: each metric's mean over the evaluated queries."""
    n = len(next(iter(values.values()), []))
    if not n:
        raise ValueError("no query has a relevant passage; nothing to evaluate")
    # Python's left-to-right sum: the same numbers as accumulating query by query.
    return {f"{prefix}{name}": sum(v) / n for name, v in values.items()}


def ranking_metrics(ranked: torch.Tensor | np.ndarray, relevant: list, ks=DEFAULT_KS, prefix: str = "") -> dict[str, float]:
    """MRR@10, Recall@k, nDCG@10 over queries with at least one relevant passage.

    ``ranked`` [Q, K]: passage ids best first (-1 = nothing). ``relevant``: Q collections of ids (binary
    gains), or Q dicts {id: gain > 0} (graded gains in nDCG, linear as in trec_eval's ndcg_cut; MRR and
    recall count any positive gain as relevant). Recall@k for k > K counts only what is in the list, so
    pass K >= max(ks). The mean of ``per_query_metrics``.
    """
    return mean_metrics(per_query_metrics(ranked, relevant, ks)[1], prefix)


def split_per_query(ranked, reranked, relevant: list, ks=DEFAULT_KS) -> tuple[np.ndarray, dict[str, list[float]]]:
    """``per_query_metrics`` of the full-corpus ranking ``ranked`` plus each query's ``rerank_mrr@10``
    from ``reranked`` (its own candidates), when the split has candidate lists."""
    positions, values = per_query_metrics(ranked, relevant, ks)
    if reranked is not None and (np.asarray(reranked) >= 0).any():  # rows without candidate lists (BEIR): no rerank setting
        values["rerank_mrr@10"] = per_query_metrics(reranked, relevant, ks=(1,))[1]["mrr@10"]
    return positions, values


def split_metrics(ranked, reranked, relevant: list, ks=DEFAULT_KS) -> dict[str, float]:
    """The validation protocol for any retriever: ``ranking_metrics`` of its full-corpus ranking
    ``ranked`` [Q, K >= max(ks)], plus ``rerank_mrr@10`` of ``reranked`` (each query's own candidates)."""
    return mean_metrics(split_per_query(ranked, reranked, relevant, ks)[1])


def dense_split_per_query(queries: torch.Tensor, passages: torch.Tensor, split, query_rows: np.ndarray, ks=DEFAULT_KS) -> tuple[np.ndarray, dict[str, list[float]]]:
    """(the evaluated rows among ``query_rows``, {metric: each one's value}) of the dense ranking; see
    ``dense_split_metrics``."""
    relevant = split.relevance(query_rows)
    ranked = rank_dense(queries, passages, max(ks))
    reranked = rank_dense_within(queries, passages, split.candidates, query_rows)
    positions, values = split_per_query(ranked, reranked, relevant, ks)
    return np.asarray(query_rows)[positions], values


def dense_split_metrics(queries: torch.Tensor, passages: torch.Tensor, split, query_rows: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    """Full-corpus metrics plus ``rerank_mrr@10`` within each query's own candidates.

    ``queries`` [len(query_rows), d] are the embeddings of ``split``'s queries ``query_rows``;
    ``passages`` [split.num_passages, d] every passage of the split.
    """
    return mean_metrics(dense_split_per_query(queries, passages, split, query_rows, ks)[1])
