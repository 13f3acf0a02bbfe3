"""What evaluation asks of a retriever: score a split's whole corpus for its queries.

A retriever is prepared on a ``PreparedSplit`` (index its passages), then ``scores(query_rows)`` gives
[len(query_rows), num_passages]. ``rankings`` turns scores into what ``metrics.split_per_query`` reads:
the top-k passages of the whole corpus and each query's own candidates, both ranked with a stable
sort (ties go to the lower passage index / earlier candidate), as validation ranks dense scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from two_tower.data.prepared import PreparedSplit
from two_tower.core.metrics import rank_by_scores, rank_within_scores


@dataclass
class Rankings:
    ranked: torch.Tensor  # [Q, k] passage ids, best first; -1 past the passages the retriever matched (no_match_scores)
    scores: torch.Tensor  # [Q, k] their scores
    reranked: torch.Tensor  # [Q, C] each query's candidates, best first; -1 pads (and unmatched candidates)


class SplitRetriever:
    """Base class. Subclasses implement ``scores`` and may extend ``prepare``."""

    # Queries scored at a time: [chunk, num_passages] float32 scores in memory (validation uses 1024 too).
    chunk = 1024

    def __init__(self):
        self.split: PreparedSplit | None = None

    def prepare(self, split: PreparedSplit) -> None:
        """Index ``split``'s passages (once per split)."""
        self.split = split

    def scores(self, query_rows: np.ndarray) -> torch.Tensor:
        """[len(query_rows), num_passages] scores in a new tensor of the caller's (a fusion overwrites it in place)."""
        raise NotImplementedError

    def no_match_scores(self, query_rows: np.ndarray) -> torch.Tensor | None:
        """Each query's score ([len(query_rows), 1]) at or below which a passage was not matched at all, so
        reciprocal-rank fusion gives it no share (BM25: a passage sharing no word with the query); None: every
        passage is ranked (a dense retriever)."""
        return None

    def rankings(self, query_rows: np.ndarray, k: int) -> Rankings:
        ranked, scores, reranked = [], [], []
        for start in range(0, len(query_rows), self.chunk):
            rows = query_rows[start : start + self.chunk]
            chunk_scores = self.scores(rows)
            top = rank_by_scores(chunk_scores, k)
            top_scores = chunk_scores.gather(1, top)
            candidates = self.rank_candidates(rows, chunk_scores)
            no_match = self.no_match_scores(rows)
            if no_match is not None:
                # A passage the retriever did not match is not retrieved (-1, as a short list's padding): BM25 filled
                # its top k with passages sharing no word with the query, in passage order, and one of them that was
                # relevant counted as found (a query of words no passage has scored MRR@10 1 where its relevant
                # passage came first in the corpus). Pyserini's and Elasticsearch's runs hold matched passages only.
                top = top.masked_fill(top_scores <= no_match, -1)
                found = candidates >= 0
                candidate_scores = chunk_scores.gather(1, candidates.clamp(min=0))
                candidates = candidates.masked_fill(found & (candidate_scores <= no_match), -1)
            ranked.append(top)
            scores.append(top_scores)
            reranked.append(candidates)
        width = max(r.shape[1] for r in reranked)
        reranked = [torch.nn.functional.pad(r, (0, width - r.shape[1]), value=-1) for r in reranked]
        return Rankings(torch.cat(ranked), torch.cat(scores), torch.cat(reranked))

    def rank_candidates(self, query_rows: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        """Each query's own candidates ranked by ``scores`` (the rows' [len(query_rows), P] scores)."""
        return rank_within_scores(scores, self.split.candidates.padded(query_rows, fill=-1))
