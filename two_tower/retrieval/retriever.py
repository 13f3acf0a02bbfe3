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


def query_chunks(query_rows: np.ndarray, chunk: int):
    """``query_rows`` ``chunk`` at a time (views of it)."""
    for start in range(0, len(query_rows), chunk):
        yield query_rows[start : start + chunk]


@dataclass
class Rankings:
    ranked: torch.Tensor  # [Q, k] passage ids, best first; -1 past the passages the retriever matched (no_match_scores)
    scores: torch.Tensor  # [Q, k] their scores
    reranked: torch.Tensor  # [Q, C] each query's candidates, best first; -1 pads (and unmatched candidates)

    @staticmethod
    def join(pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Rankings:
        """The rankings of consecutive query chunks (``SplitRetriever.rank_chunk``'s) as one."""
        width = max(candidates.shape[1] for _, _, candidates in pieces)
        reranked = [torch.nn.functional.pad(candidates, (0, width - candidates.shape[1]), value=-1) for _, _, candidates in pieces]
        return Rankings(torch.cat([top for top, _, _ in pieces]), torch.cat([scores for _, scores, _ in pieces]), torch.cat(reranked))


class SharedScores:
    """One query chunk's scores of the retrievers that retrievers later in an evaluation read as parts (a fusion's
    dense and BM25, a rerank's or feedback's first stage), so that each is scored once a chunk: evaluate.py scored a
    fusion's parts again for the fusion (the two fusions took 133 of 327 s at 4x marco7k, now 11 of 197 s). A reader gets a copy (a fusion overwrites
    its parts' scores in place), the last one of the chunk the scores themselves."""

    def __init__(self, readers: dict[int, int]):
        self.readers = readers  # id(retriever) -> how many reads of its scores later retrievers make a chunk
        self.rows, self.kept, self.left = None, {}, {}

    def start(self, rows: np.ndarray) -> None:
        """A new chunk of query rows (the very array every retriever is given): the last chunk's scores go."""
        self.rows, self.kept, self.left = rows, {}, dict(self.readers)

    def offer(self, retriever: SplitRetriever, scores: torch.Tensor) -> None:
        """``retriever``'s scores of this chunk, ranked for its own row already; kept while a reader is to come."""
        if self.left.get(id(retriever)):
            self.kept[id(retriever)] = scores

    def take(self, retriever: SplitRetriever, rows: np.ndarray) -> torch.Tensor | None:
        """``retriever``'s kept scores of ``rows`` (a copy but for the last reader), or None: score them."""
        key = id(retriever)
        if rows is not self.rows or key not in self.kept:
            return None
        self.left[key] -= 1
        return self.kept.pop(key) if self.left[key] == 0 else self.kept[key].clone()


class SplitRetriever:
    """Base class. Subclasses implement ``scores`` and may extend ``prepare``."""

    # Queries scored at a time: [chunk, num_passages] float32 scores in memory (validation uses 1024 too).
    chunk = 1024
    # During evaluate.py's pass, the scores of this chunk's retrievers earlier in the list (``part_scores``)
    shared: SharedScores | None = None

    def __init__(self):
        self.split: PreparedSplit | None = None

    def score_parts(self) -> list[SplitRetriever]:
        """The retrievers whose scores ``scores`` reads (through ``part_scores``), once each a call."""
        return []

    def part_scores(self, part: SplitRetriever, query_rows: np.ndarray) -> torch.Tensor:
        """``part.scores(query_rows)``, in a tensor of the caller's: the scores ``part`` gave for its own row of this
        evaluation where it has them (``shared``), else scored now."""
        scores = self.shared.take(part, query_rows) if self.shared is not None else None
        return part.scores(query_rows) if scores is None else scores

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
        return Rankings.join([self.rank_chunk(rows, self.scores(rows), k) for rows in query_chunks(query_rows, self.chunk)])

    def rank_chunk(self, rows: np.ndarray, chunk_scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top ``k``, their scores and the ranked candidates of query ``rows`` from their ``scores`` (only read)."""
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
        return top, top_scores, candidates

    def rank_candidates(self, query_rows: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        """Each query's own candidates ranked by ``scores`` (the rows' [len(query_rows), P] scores)."""
        return rank_within_scores(scores, self.split.candidates.padded(query_rows, fill=-1))
