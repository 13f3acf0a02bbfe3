"""Hybrid retrievers: fuse the scores of other retrievers (dense + BM25) into one ranking.

- ``ReciprocalRankFusion``: sum over parts of ``weight / (k + rank)`` for passages a part ranks in its
  top ``depth`` (rank 1 = best; Cormack et al. 2009, k=60). Scale-free: only ranks matter. Passages a
  part did not match (``no_match_scores``: for BM25 a passage sharing no word with the query) get no share,
  so unmatched passages are not ranked by their index; a dense part ranks every passage.
- ``WeightedScoreFusion``: sum over parts of ``weight * normalised score``, each part's scores
  min-max normalised per query over the whole corpus (best passage 1, worst 0), so a cosine in
  [-1, 1] and an unbounded BM25 score are on one scale. ``proven_top_k`` gives the same top k of one
  query from candidates (``Searcher`` on indexes other than Flat) without scoring every passage densely.
"""

from __future__ import annotations

import numpy as np
import torch

from two_tower.data.prepared import PreparedSplit
from two_tower.core.checks import check
from two_tower.core.metrics import top_k
from two_tower.core.errors import ConfigError
from two_tower.retrieval.index import WEIGHT_SUM_RANGE, WEIGHT_SUM_RULE
from two_tower.retrieval.retriever import SplitRetriever


class FusionRetriever(SplitRetriever):
    def __init__(self, parts: list[SplitRetriever], weights: list[float]):
        super().__init__()
        if len(parts) != len(weights):
            raise ConfigError(f"{len(parts)} parts but {len(weights)} weights; give one weight a part")
        check_weights(weights)
        self.parts, self.weights = parts, [float(w) for w in weights]

    def prepare(self, split: PreparedSplit) -> None:
        super().prepare(split)
        for part in self.parts:
            part.prepare(split)

    def score_parts(self) -> list[SplitRetriever]:
        return list(self.parts)

    def scores(self, query_rows: np.ndarray) -> torch.Tensor:
        # Weighted and summed in place: one [Q, P] sum and one part's share alive at a time (a sum of products made
        # a new [Q, P] tensor at each step: 1,024 queries x 100,000 passages are 0.4 GB each). The same arithmetic.
        fused = None
        for part, w in zip(self.parts, self.weights):
            share = self.transform(self.part_scores(part, query_rows), part.no_match_scores(query_rows)).mul_(w)
            fused = share if fused is None else fused.add_(share)
            del share
        return fused

    def transform(self, scores: torch.Tensor, no_match: torch.Tensor | None) -> torch.Tensor:
        """A part's ``scores`` [Q, P] as its share of the fused score, a tensor of its own (the fusion weighs it in
        place); ``no_match``: the part's ``no_match_scores`` for these queries. ``scores`` is the part's own new
        tensor (``SplitRetriever.part_scores`` gives one), which this may overwrite."""
        raise NotImplementedError


class ReciprocalRankFusion(FusionRetriever):
    def __init__(self, parts: list[SplitRetriever], weights: list[float], k: int = 60, depth: int = 100):
        super().__init__(parts, weights)
        check("k", k, rule="fusion.k")
        check("depth", depth, rule="fusion.depth")
        self.k, self.depth = k, depth

    def transform(self, scores: torch.Tensor, no_match: torch.Tensor | None) -> torch.Tensor:
        # the top ``depth`` by selection (``metrics.top_k``: ties to the lower passage, as a stable sort orders them),
        # not a full sort of every row: 1,024 x 100,000 scores sorted made 1.2 GB of values and indices
        values, order = top_k(scores, self.depth)
        ranks = torch.arange(1, order.shape[1] + 1, dtype=torch.float32).expand_as(order)
        if no_match is None:  # every passage is ranked (dense)
            return scores.zero_().scatter_(1, order, 1.0 / (self.k + ranks))
        matched = values > no_match
        return scores.zero_().scatter_(1, order, torch.where(matched, 1.0 / (self.k + ranks), 0.0))


def check_weights(weights, name: str = "weights") -> None:
    """A fusion's weights (one a part): each a finite number >= 0, not all 0; ConfigError naming ``name`` (e.g.
    ``retriever.hybrid_weighted.weights``) otherwise. A weight below 0, infinite or nan, or all of them 0, fused
    to a ranking by passage number or by a part's worst passages first, and evaluate.py reported it."""
    for i, weight in enumerate(weights):
        check(f"{name}[{i}]", weight, rule="fusion.weight")
    total = sum(float(w) for w in weights)
    if not total > 0:
        raise ConfigError(f"{name}={list(weights)}: all 0; at least one part must weigh more than 0")
    if not WEIGHT_SUM_RANGE[0] <= total <= WEIGHT_SUM_RANGE[1]:
        raise ConfigError(f"{name}={list(weights)}: {WEIGHT_SUM_RULE} (fused to 0 or inf, the ranking was by passage number)")


class WeightedScoreFusion(FusionRetriever):
    def transform(self, scores: torch.Tensor, no_match: torch.Tensor | None) -> torch.Tensor:
        return min_max_rows(scores, in_place=True)


def min_max_rows(scores: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """Each row of [queries, passages] scores min-max normalised over the row (the whole corpus); with
    ``in_place`` into ``scores`` itself (the same arithmetic as ``min_max``, no temporary of its size)."""
    low, high = scores.min(dim=1, keepdim=True).values, scores.max(dim=1, keepdim=True).values
    if not in_place:
        return min_max(scores, low, high)
    return scores.sub_(low).div_((high - low).clamp(min=1e-12))


def min_max(scores, low, high):
    """``(scores - low) / (high - low)``, the range floored at 1e-12 (a part that scores every passage
    alike gives 0): the weighted fusion's normalisation, for torch tensors and numpy arrays alike."""
    span = high - low
    span = span.clamp(min=1e-12) if isinstance(span, torch.Tensor) else np.maximum(span, 1e-12)
    return (scores - low) / span


# How far above the bound the k-th fused score must be (fused scores lie in [0, sum of the weights];
# float32 rounding of a dense score is about 1e-7 of it).
MARGIN = 1e-5


def proven_top_k(k: int, weights: tuple[float, float], lexical: np.ndarray, dense_range: tuple[float, float], dense_rows: np.ndarray, dense_top_scores: np.ndarray, dense_scores) -> tuple[np.ndarray, np.ndarray] | None:
    """The fused top ``k`` among the union of the dense top n (``dense_rows``, ``dense_top_scores``: best
    first, -1 rows where fewer) and the lexical top n, if it is provably the top k of the whole corpus,
    else None. A passage in neither list scores at most the fusion of the two n-th scores, so the
    candidates' k-th must be above that bound by ``MARGIN`` (the n-th dense score comes from the search,
    the candidates' from ``dense_scores``: the two may round differently); exact when the dense top n is
    exact; n >= the corpus is always proven. The same normalisation as ``WeightedScoreFusion`` (``min_max``)."""
    (w_dense, w_lexical), passages, n = weights, len(lexical), len(dense_rows)
    low_l, high_l = lexical.min(), lexical.max()
    found = dense_rows >= 0
    l_rows = np.argpartition(-lexical, n - 1)[:n] if n < passages else np.arange(passages)
    candidates = np.union1d(dense_rows[found], l_rows)
    dense = dense_scores(candidates)
    # An approximate index (HNSW, IVF) may miss the corpus's true extremes: the range takes in every
    # candidate's score too, so fused scores stay within [0, sum of the weights].
    low_d, high_d = min(dense_range[0], dense.min()), max(dense_range[1], dense.max())
    fused = w_dense * min_max(dense, low_d, high_d) + w_lexical * min_max(lexical[candidates], low_l, high_l)
    order = np.lexsort((candidates, -fused))[:k]
    if n < passages:
        nth_dense = dense_top_scores[found][-1] if found.any() else low_d
        nth_lexical = -np.partition(-lexical, n - 1)[n - 1]
        bound = w_dense * min_max(nth_dense, low_d, high_d) + w_lexical * min_max(nth_lexical, low_l, high_l)
        if len(order) < k or fused[order[-1]] <= bound + MARGIN:
            return None
    return candidates[order], fused[order]
