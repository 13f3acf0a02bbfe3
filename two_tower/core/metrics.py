"""Exact ranking metrics, shared by validation, evaluate.py and every baseline.

Any retriever hands in, per query, its ranked passage ids (best first, ``-1`` for padding) and the
relevant ids. Metrics are computed from the rank of each relevant passage, so queries with several
positives and positives ranked past k are exact. Dense scores are ranked by top-k selection (``top_k``,
never a full sort of a score row) with ties to the lower passage index: the same order a brute-force
``sorted(key=(-score, index))`` gives, including ties that straddle rank k.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from two_tower.core.ragged import Ragged

DEFAULT_KS = (1, 10, 100)
# What validation and test log per query and on average (val/*, test/*): all higher-is-better.
RANKING_METRICS = ("mrr@10", "ndcg@10", *(f"recall@{k}" for k in DEFAULT_KS), "rerank_mrr@10")


# Queries and passages scored at a time by ``rank_dense``: at most QUERY_CHUNK x PASSAGE_CHUNK float32
# scores (128 MB) in memory, whatever the corpus size.
QUERY_CHUNK = 1024
PASSAGE_CHUNK = 32768
# Bytes of candidate passage vectors ``rank_dense_within`` gathers at a time ([queries, candidates, dim] float32, and
# as much again for their products with the queries): at most QUERY_CHUNK queries, fewer where they would pass it.
CANDIDATE_BYTES = 64 << 20
# Rows whose k-th score is tied past rank k are resolved this many at a time ([rows, P] int64 counts).
_TIED_ROWS = 64


def _order(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's (values, indices) ordered by (-value, index): indices ascending first, then a stable
    sort by value, so equal values keep the lower index first."""
    by_index = torch.sort(indices, dim=1, stable=True)
    values = values.gather(1, by_index.indices)
    by_value = torch.sort(values, dim=1, descending=True, stable=True)
    return by_value.values, by_index.values.gather(1, by_value.indices)


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns) of the top-``k`` columns of each row of ``scores`` [Q, P], best first, ties by
    lower column: exactly the first ``k`` of ``sorted(range(P), key=lambda p: (-score[p], p))``.

    Selection, not a full sort: ``torch.topk`` of k + 1 values. Where the k-th and (k+1)-th are
    different, the k selected columns are the row's top k whatever order topk broke ties in, and only
    they are sorted. Where they are equal (a tie straddles rank k; topk's choice among the tied columns
    is arbitrary), the row takes every column above the k-th value and the lowest-numbered columns
    equal to it.
    """
    n, p = scores.shape
    k = min(k, p)
    if k == 0 or n == 0:
        return scores.new_empty(n, k), torch.empty(n, k, dtype=torch.long)
    values, indices = torch.topk(scores, min(k + 1, p), dim=1, largest=True, sorted=True)
    if k < p:
        tied = torch.nonzero(values[:, k - 1] == values[:, k]).flatten()
        values, indices = values[:, :k].clone(), indices[:, :k].clone()
        for start in range(0, len(tied), _TIED_ROWS):
            rows = tied[start : start + _TIED_ROWS]
            block = scores[rows]
            kth = values[rows, k - 1 : k]
            above = block > kth
            equal = block == kth
            # The first (k - #above) equal columns of each row: a running count of equal columns.
            keep = above | (equal & (torch.cumsum(equal, dim=1, dtype=torch.int32) <= k - above.sum(1, keepdim=True, dtype=torch.int32)))
            columns = torch.nonzero(keep)[:, 1].view(len(rows), k)  # row-major: ascending within each row
            indices[rows] = columns
            values[rows] = block.gather(1, columns)
    return _order(values, indices)


def rank_by_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` columns of each row of ``scores`` [Q, P], best first, ties by lower index (``top_k``)."""
    return top_k(scores, k)[1]


def rank_dense(queries: torch.Tensor, passages: torch.Tensor, k: int, chunk: int = QUERY_CHUNK, passage_chunk: int = PASSAGE_CHUNK) -> torch.Tensor:
    """Exact top-``k`` passages by inner product for every query (ties by lower passage index).

    Streamed: ``chunk`` queries against ``passage_chunk`` passages at a time; each block's exact top k
    (``top_k``) is merged with the running top k of the earlier blocks by the same (-score, index) rule,
    so memory is bounded by one block whatever the corpus size.
    """
    return rank_dense_scored(queries, passages, k, chunk, passage_chunk)[0]


def rank_dense_scored(queries: torch.Tensor, passages: torch.Tensor, k: int, chunk: int = QUERY_CHUNK, passage_chunk: int = PASSAGE_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """``rank_dense``'s top-``k`` passages and their inner products: ([Q, k] indices, [Q, k] scores)."""
    k = min(k, len(passages))
    out, scores = [], []
    for i in range(0, len(queries), chunk):
        q = queries[i : i + chunk]
        best_values = best_indices = None
        for j in range(0, len(passages), passage_chunk):
            values, indices = top_k(q @ passages[j : j + passage_chunk].T, k)
            indices = indices + j
            if best_values is not None:
                # Earlier blocks hold lower passage indices: concatenated in block order, a stable sort by
                # value keeps ties in index order.
                values, indices = torch.cat([best_values, values], 1), torch.cat([best_indices, indices], 1)
                order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
                values, indices = values.gather(1, order), indices.gather(1, order)
            best_values, best_indices = values, indices
        out.append(best_indices if best_indices is not None else torch.empty(len(q), 0, dtype=torch.long))
        scores.append(best_values if best_values is not None else torch.empty(len(q), 0, dtype=queries.dtype))
    if not out:
        return torch.empty(0, k, dtype=torch.long), torch.empty(0, k, dtype=queries.dtype)
    return torch.cat(out), torch.cat(scores)


def rank_dense_within(queries: torch.Tensor, passages: torch.Tensor, candidates: Ragged, query_rows: np.ndarray) -> torch.Tensor:
    """Rank each query's own candidate passages (rerank setting); -1 pads short lists. The candidates' vectors are
    gathered ``CANDIDATE_BYTES`` at a time: 1,024 queries' 10 candidates of a bag path's 8,448 dims were 346 MB, and
    their products as much again (evaluate.py's largest transient after the passage vectors); each query's scores
    are the same sums whatever the rows around it."""
    cand_t = torch.from_numpy(candidates.padded(query_rows, fill=-1))
    chunk = max(1, min(QUERY_CHUNK, CANDIDATE_BYTES // max(1, cand_t.shape[1] * passages.shape[1] * passages.element_size())))
    out = []
    for i in range(0, len(cand_t), chunk):  # [chunk, C, d] gathered passage vectors at a time
        cand = cand_t[i : i + chunk]
        scores = (queries[i : i + chunk].unsqueeze(1) * passages[cand.clamp(min=0)]).sum(-1)
        scores = scores.masked_fill(cand < 0, float("-inf"))
        out.append(cand.gather(1, torch.sort(scores, dim=1, descending=True, stable=True).indices))
    return torch.cat(out) if out else cand_t


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
