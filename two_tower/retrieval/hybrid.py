"""Hybrid retrievers: fuse the scores of other retrievers (dense + BM25) into one ranking.

- ``ReciprocalRankFusion``: sum over parts of ``weight / (k + rank)`` for passages a part ranks in its
  top ``depth`` (rank 1 = best; Cormack et al. 2009, k=60). Scale-free: only ranks matter. Passages a
  part scores at its lowest for the query (for BM25: those sharing no word with it) get no share, so
  unmatched passages are not ranked by their index.
- ``WeightedScoreFusion``: sum over parts of ``weight * normalised score``, each part's scores
  min-max normalised per query over the whole corpus (best passage 1, worst 0), so a cosine in
  [-1, 1] and an unbounded BM25 score are on one scale.
"""

from __future__ import annotations

import numpy as np
import torch

from two_tower.data.prepared import PreparedSplit
from two_tower.core.errors import ConfigError
from two_tower.retrieval.retriever import SplitRetriever


class FusionRetriever(SplitRetriever):
    def __init__(self, parts: list[SplitRetriever], weights: list[float]):
        super().__init__()
        if len(parts) != len(weights):
            raise ConfigError(f"{len(parts)} parts but {len(weights)} weights; give one weight a part")
        self.parts, self.weights = parts, [float(w) for w in weights]

    def prepare(self, split: PreparedSplit) -> None:
        super().prepare(split)
        for part in self.parts:
            part.prepare(split)

    def scores(self, query_rows: np.ndarray) -> torch.Tensor:
        return sum(w * self.transform(part.scores(query_rows)) for part, w in zip(self.parts, self.weights))

    def transform(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ReciprocalRankFusion(FusionRetriever):
    def __init__(self, parts: list[SplitRetriever], weights: list[float], k: int = 60, depth: int = 100):
        super().__init__(parts, weights)
        self.k, self.depth = k, depth

    def transform(self, scores: torch.Tensor) -> torch.Tensor:
        top = torch.sort(scores, dim=1, descending=True, stable=True)
        order = top.indices[:, : self.depth]
        ranks = torch.arange(1, order.shape[1] + 1, dtype=torch.float32).expand_as(order)
        matched = top.values[:, : self.depth] > scores.min(dim=1, keepdim=True).values
        return torch.zeros_like(scores).scatter_(1, order, torch.where(matched, 1.0 / (self.k + ranks), 0.0))


class WeightedScoreFusion(FusionRetriever):
    def transform(self, scores: torch.Tensor) -> torch.Tensor:
        low = scores.min(dim=1, keepdim=True).values
        high = scores.max(dim=1, keepdim=True).values
        return (scores - low) / (high - low).clamp(min=1e-12)
