"""Neighbour smoothing: each passage's vector moved towards its nearest passages in the corpus, at index time.

For a passage vector p and its ``neighbours`` nearest other passages n_1 .. n_k (inner product over the
corpus's own vectors)::

    p' = |p| * normalise((1 - weight) * p + weight * mean(n_1 .. n_k))

Ranking by q . p' is score regularisation on the corpus graph (Diaz 2005, "Regularizing ad hoc retrieval
scores"; the cluster hypothesis): a passage scores partly by how well its neighbours match the query, so a
relevant passage that says little of the query's words itself is lifted by relevant passages around it.
It is linear in the query, so it costs nothing at search time: the index folder stores p' (``index.py
smooth=neighbours``), and ``evaluate.py``'s ``dense_smoothed`` ranks by the same vectors.

When it helps (``experiments/zero_shot/README.md``): collections with several relevant passages a query that
sit near each other (Cranfield: +0.005 to +0.037 nDCG@10 over the grid tried, +0.012 at the default; more with
feedback on top). When it hurts: one relevant passage a query among its near neighbours (marco7k, whose corpus
is made of each query's candidate passages: -0.001 to -0.014 MRR@10, -0.004 at the default), where the
neighbours it is pulled to are the very passages it competes with. So it is off unless asked for, as
pseudo-relevance feedback is.

Cost at index time: one search of the index for every passage (``neighbours + 1`` hits each, in chunks of
``index.add_chunk`` / ``index.add_chunk_mb``) and a second index of the same factory; for ``Flat`` that search is exact and quadratic in
the corpus (seconds for 10k passages, hours for millions: use HNSW or IVF there, whose neighbours are then
approximate, found with the folder's search parameters: set a larger ``index.search_params`` nprobe or efSearch
for closer ones). Both indexes are held in memory while the second one is built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from two_tower.core import progress as progress_bars
from two_tower.core.checks import GroupSettings
from two_tower.core.errors import ConfigError
from two_tower.data.prepared import PreparedSplit
from two_tower.retrieval.index import build_faiss, enable_reconstruct
from two_tower.retrieval.retriever import SplitRetriever

log = logging.getLogger(__name__)

# Rows smoothed at a time: a handful of [rows, dim] float32 arrays alive (at 8,448 dims, 140 MB each)
ROWS_AT_ONCE = 4096
# Rows searched for their neighbours in one FAISS call (about a second against 5,000 passages at 8,448 dims)
SEARCH_ROWS = 512


@dataclass(frozen=True)
class NeighbourSmoothing(GroupSettings):
    """How many nearest passages each passage is moved towards, and how far (0 = not at all, 1 = to their mean)."""

    GROUP = "smooth"

    neighbours: int = 5
    weight: float = 0.2


    def vectors(self, index: faiss.Index, rows: np.ndarray) -> np.ndarray:
        """The smoothed vectors of ``rows`` (sorted or not) of ``index`` [len(rows), dim], each as long as the
        row's own stored vector. Each row's neighbours are the index's top ``neighbours + 1`` hits for its stored
        vector (searched with the index's search parameters: an IVF index's nprobe, an HNSW's efSearch), itself
        left out (ties in row order, as ``PassageIndex.search`` orders them; where the row is not among its own
        hits, as an approximate index or exact duplicates may make it, the last hit is left out instead); rows an
        approximate index did not return are left out of the mean, and a row with none keeps its vector. Works
        ``ROWS_AT_ONCE`` rows at a time, adding the neighbours' vectors one rank at a time: a few [rows, dim]
        arrays alive at once, never [rows, neighbours, dim]."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), index.d), dtype=np.float32)
        for start in range(0, len(rows), ROWS_AT_ONCE):
            part = rows[start : start + ROWS_AT_ONCE]
            out[start : start + len(part)] = self._smoothed(index, part)
        return out

    def _smoothed(self, index: faiss.Index, rows: np.ndarray) -> np.ndarray:
        own = index.reconstruct_batch(np.ascontiguousarray(rows)).reshape(len(rows), index.d)
        k = min(self.neighbours + 1, index.ntotal)
        # searched SEARCH_ROWS at a time: a FAISS call cannot be interrupted, so Ctrl-C waits for one to end
        found_at = [index.search(np.ascontiguousarray(own[i : i + SEARCH_ROWS], dtype=np.float32), k) for i in range(0, len(rows), SEARCH_ROWS)]
        scores, hits = (np.concatenate([part[j] for part in found_at]) for j in (0, 1))
        order = np.lexsort((np.where(hits < 0, np.iinfo(np.int64).max, hits), -scores), axis=-1)
        hits = np.take_along_axis(hits, order, 1)
        is_self = hits == rows[:, None]
        # leave out the row itself, or else the last hit: exactly one of the k hits goes
        drop = np.where(is_self.any(1), is_self.argmax(1), k - 1)
        keep = np.ones_like(hits, dtype=bool)
        keep[np.arange(len(rows)), drop] = False
        neighbours = hits[keep].reshape(len(rows), k - 1)
        found = neighbours >= 0
        total = np.zeros_like(own)
        for rank in range(neighbours.shape[1]):
            there = found[:, rank]
            if there.any():
                total[there] += index.reconstruct_batch(np.ascontiguousarray(neighbours[there, rank]))
        count = found.sum(1, keepdims=True)
        moved = np.where(count > 0, (1 - self.weight) * own + self.weight * (total / np.maximum(count, 1)), own)
        # the passage's own length (1 for a model's passages, less for one with no readable word under a bag path)
        length = np.linalg.norm(own, axis=1, keepdims=True) / np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)
        return (moved * length).astype(np.float32)

    def chunks(self, index: faiss.Index, chunk: int, progress: bool = True) -> Iterator[np.ndarray]:
        """Every row's smoothed vector, in row order, ``chunk`` rows at a time (with a progress bar)."""
        prepare_reconstruct(index)
        with progress_bars.bar(total=index.ntotal, desc="Smoothing passages", unit="passage", disable=not progress) as bar:
            for start in range(0, index.ntotal, chunk):
                rows = np.arange(start, min(start + chunk, index.ntotal))
                yield self.vectors(index, rows)
                bar.update(len(rows))


def prepare_reconstruct(index: faiss.Index) -> None:
    """Let ``index`` give its stored vectors back (``index.enable_reconstruct``); a ConfigError where its type cannot."""
    problem = enable_reconstruct(index)
    if problem:
        raise ConfigError(f"smooth: {problem}; neighbour smoothing needs Flat, HNSW, IVF, SQ or PQ")


class SmoothedRetriever(SplitRetriever):
    """``evaluate.py``'s ``dense_smoothed``: another vector retriever's passages (``parts: [dense]``) smoothed over
    their neighbours in the split's corpus (an exact ``Flat`` index of them, as ``index.py smooth=neighbours``
    builds with its default factory), its queries as they are. Has ``queries`` and ``passages``, so feedback
    (``PRFRetriever``) can run over it."""

    def __init__(self, parts: list[SplitRetriever], **settings):
        """``settings``: ``NeighbourSmoothing``'s (its defaults where not given)."""
        super().__init__()
        if len(parts) != 1 or not all(hasattr(parts[0], name) for name in ("queries", "passages")):
            raise ConfigError("neighbour smoothing reads one vector retriever's vectors (parts: [dense] or [teacher])")
        self.part, self.smoothing = parts[0], NeighbourSmoothing(**settings)
        self.queries = self.passages = None

    def prepare(self, split: PreparedSplit) -> None:
        if split is self.split:
            return
        super().prepare(split)
        self.part.prepare(split)
        passages = self.part.passages.numpy().astype(np.float32)
        index = build_faiss(passages, "Flat", normalize=False)  # as index.py stores them
        self.passages = torch.from_numpy(np.concatenate([passages[:0], *self.smoothing.chunks(index, 100_000)]))
        self.queries = self.part.queries

    def scores(self, query_rows: np.ndarray) -> torch.Tensor:
        return self.queries[query_rows] @ self.passages.T
