"""Pseudo-relevance feedback on dense vectors (Rocchio): search, move the query towards its top passages, search again.

``q' = alpha * q + beta * mean(top-depth passage vectors of q)``, then rank by ``q' . p``. This is
pyserini's ``DenseVectorRocchioPrf`` (Li et al. 2022, "Pseudo Relevance Feedback with Deep Language Models
and Dense Retrievers: Successes and Pitfalls"); the defaults are the setting that paper and pyserini's
reproduction table report (depth 5, alpha 0.4, beta 0.6). No training, no text: only the vectors already
in the index.

When it helps (experiments/zero_shot/README.md): collections with several relevant passages a query, where
the top passages are mostly on topic (Cranfield: +0.02 nDCG@10). When it hurts: one relevant passage a
query among near-duplicates on the same topic (marco7k: -0.06 MRR@10), where the feedback pulls the query
towards the wrong neighbours. So it is off unless asked for: ``retriever=dense_prf`` in ``evaluate.py``,
``prf=rocchio`` (and e.g. ``prf.depth=3``) in ``search.py``, ``Searcher.load(..., prf=RocchioPRF())``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from two_tower.core.checks import GroupSettings
from two_tower.core.errors import ConfigError
from two_tower.core.metrics import rank_by_scores
from two_tower.data.prepared import PreparedSplit
from two_tower.retrieval.retriever import SplitRetriever


@dataclass(frozen=True)
class RocchioPRF(GroupSettings):
    """How many top passages feed back (0 = off) and the weights of the query and of their mean."""

    GROUP = "prf"

    depth: int = 5
    alpha: float = 0.4
    beta: float = 0.6

    def __post_init__(self):
        super().__post_init__()  # each value's range (core.checks.RULES: prf.depth, prf.alpha, prf.beta)
        if self.depth and self.alpha == 0 and self.beta == 0:
            raise ConfigError("prf.alpha and prf.beta are both 0: the new query would be all zeros")

    @property
    def enabled(self) -> bool:
        return self.depth > 0

    def expand(self, queries, feedback, found=None):
        """New query vectors from ``queries`` [Q, d] and ``feedback`` [Q, depth, d] (each query's top
        passages' vectors; numpy or torch, returned in the same kind). ``found`` [Q, depth] (bool) marks the
        feedback rows that exist (an approximate index may return fewer than ``depth``); the mean is over
        those, and a query with none is returned unchanged."""
        if found is None:
            return self.alpha * queries + self.beta * feedback.mean(1)
        count = found.sum(1, keepdims=True)
        moved = self.alpha * queries + self.beta * (feedback * (found / count.clip(min=1))[..., None]).sum(1)
        # torch's where for tensors: np.maximum and np.where made torch input a numpy result
        return (torch.where if isinstance(queries, torch.Tensor) else np.where)(count > 0, moved, queries)


class PRFRetriever(SplitRetriever):
    """``evaluate.py``'s Rocchio feedback over another vector retriever (``parts: [dense]`` or ``[teacher]``):
    reuses that retriever's query and passage vectors, so nothing is encoded twice."""

    def __init__(self, parts: list[SplitRetriever], **settings):
        """``settings``: ``RocchioPRF``'s (its defaults where not given)."""
        super().__init__()
        if len(parts) != 1:
            raise ConfigError(f"a PRF retriever reads one vector retriever's vectors; parts has {len(parts)}")
        if not all(hasattr(parts[0], name) for name in ("queries", "passages")):
            raise ConfigError(f"PRF needs a retriever with query and passage vectors (dense, teacher), not {type(parts[0]).__name__}")
        self.part, self.prf = parts[0], RocchioPRF(**settings)

    def prepare(self, split: PreparedSplit) -> None:
        super().prepare(split)
        self.part.prepare(split)

    def score_parts(self) -> list[SplitRetriever]:
        return [self.part]

    def scores(self, query_rows: np.ndarray) -> torch.Tensor:
        first = self.part_scores(self.part, query_rows)
        if not self.prf.enabled:
            return first
        top = rank_by_scores(first, min(self.prf.depth, first.shape[1]))
        # unit length, as the index folder's Searcher makes the moved query: the same ranking, and the same
        # scores (cosines) in its TREC runs as a folder gives
        queries = torch.nn.functional.normalize(self.prf.expand(self.part.queries[query_rows], self.part.passages[top]), dim=-1)
        return queries @ self.part.passages.T
