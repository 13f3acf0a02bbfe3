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
sit near each other (Cranfield: +0.01 to +0.04 nDCG@10 over the grid tried, more with feedback on top). When
it hurts: one relevant passage a query among its near neighbours (marco7k, whose corpus is made of each query's
candidate passages: -0.004 to -0.014 MRR@10), where the neighbours it is pulled to are the very passages it
competes with. So it is off unless asked for, as pseudo-relevance feedback is.

Cost at index time: one search of the index for every passage (``neighbours + 1`` hits each, in chunks of
``index.add_chunk``) and a second index of the same factory; for ``Flat`` that search is exact and quadratic in
the corpus (seconds for 10k passages, hours for millions: use HNSW or IVF there, whose neighbours are then
approximate). Both indexes are held in memory while the second one is built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from two_tower.core.checks import GroupSettings
from two_tower.core.errors import ConfigError
from two_tower.data.prepared import PreparedSplit
from two_tower.retrieval.index import build_faiss
from two_tower.retrieval.retriever import SplitRetriever

log = logging.getLogger(__name__)

# Neighbours are searched as [chunk, neighbours + 1] hits and averaged from [chunk, neighbours, dim] vectors.
MAX_NEIGHBOURS = 1000


@dataclass(frozen=True)
class NeighbourSmoothing(GroupSettings):
    """How many nearest passages each passage is moved towards, and how far (0 = not at all, 1 = to their mean)."""

    GROUP = "smooth"

    neighbours: int = 5
    weight: float = 0.2

    def __post_init__(self):
        n = self.neighbours
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_NEIGHBOURS:
            raise ConfigError(f"smooth.neighbours={n!r}: must be a whole number from 1 to {MAX_NEIGHBOURS}")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            raise ConfigError(f"smooth.weight={w!r}: must be a number from 0 (the passage's own vector) to 1 (its neighbours' mean)")

    def vectors(self, index: faiss.Index, rows: np.ndarray) -> np.ndarray:
        """The smoothed vectors of ``rows`` (sorted or not) of ``index`` [len(rows), dim], each as long as the
        row's own stored vector. Each
        row's neighbours are the index's top ``neighbours + 1`` hits for its stored vector, itself left out
        (ties in row order, as ``PassageIndex.search`` orders them; where the row is not among its own hits,
        as an approximate index or exact duplicates may make it, the last hit is left out instead); rows an
        approximate index did not return are left out of the mean, and a row with none keeps its vector."""
        rows = np.asarray(rows, dtype=np.int64)
        own = index.reconstruct_batch(np.ascontiguousarray(rows)).reshape(len(rows), index.d)
        k = min(self.neighbours + 1, index.ntotal)
        scores, hits = index.search(np.ascontiguousarray(own, dtype=np.float32), k)
        order = np.lexsort((np.where(hits < 0, np.iinfo(np.int64).max, hits), -scores), axis=-1)
        hits = np.take_along_axis(hits, order, 1)
        is_self = hits == rows[:, None]
        # leave out the row itself, or else the last hit: exactly one of the k hits goes
        drop = np.where(is_self.any(1), is_self.argmax(1), k - 1)
        keep = np.ones_like(hits, dtype=bool)
        keep[np.arange(len(rows)), drop] = False
        neighbours = hits[keep].reshape(len(rows), k - 1)
        found = neighbours >= 0
        stored = index.reconstruct_batch(np.ascontiguousarray(np.where(found, neighbours, 0).ravel())).reshape(*neighbours.shape, index.d)
        count = found.sum(1, keepdims=True)
        mean = (stored * found[..., None]).sum(1) / np.maximum(count, 1)
        moved = np.where(count > 0, (1 - self.weight) * own + self.weight * mean, own)
        # the passage's own length (1 for a model's passages, less for one with no readable word under a bag path)
        length = np.linalg.norm(own, axis=1, keepdims=True) / np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)
        return (moved * length).astype(np.float32)

    def chunks(self, index: faiss.Index, chunk: int, progress: bool = True) -> Iterator[np.ndarray]:
        """Every row's smoothed vector, in row order, ``chunk`` rows at a time (with a progress bar)."""
        from tqdm.auto import tqdm

        prepare_reconstruct(index)
        with tqdm(total=index.ntotal, desc="Smoothing passages", unit="passage", disable=not progress) as bar:
            for start in range(0, index.ntotal, chunk):
                rows = np.arange(start, min(start + chunk, index.ntotal))
                yield self.vectors(index, rows)
                bar.update(len(rows))


def prepare_reconstruct(index: faiss.Index) -> None:
    """Let ``index`` give its stored vectors back (an IVF index needs FAISS's direct map); a ConfigError where
    its type cannot."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    try:
        index.reconstruct_batch(np.zeros(min(1, index.ntotal), dtype=np.int64))
    except RuntimeError as err:
        raise ConfigError(f"smooth: a {type(faiss.downcast_index(index)).__name__} index cannot give its stored vectors back "
                          f"({' '.join(str(err).split())[:200]}); neighbour smoothing needs Flat, HNSW, IVF, SQ or PQ") from err


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
