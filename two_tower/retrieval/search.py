"""Search an index folder: ``Searcher.load(dir).search(queries, k)`` (the command line is ``two_tower.cli.search``).

The searcher encodes queries with the index's own copy of the query tower (or, given a checkpoint, with
that checkpoint's, after checking it is the model that built the index) and asks FAISS for the top k.
With ``prf=RocchioPRF(depth=5)`` it first asks for the top ``depth``, moves each query towards their stored
vectors (``two_tower.retrieval.prf``) and asks again: for collections with many relevant passages a query.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from two_tower.retrieval.index import PassageIndex, normalised
from two_tower.retrieval.prf import RocchioPRF
from two_tower.retrieval.query_encoder import QueryEncoder


@dataclass
class Hit:
    id: str
    score: float
    text: str


class Searcher:
    def __init__(self, index: PassageIndex, encoder: QueryEncoder, prf: RocchioPRF | None = None):
        self.index, self.encoder, self.prf = index, encoder, prf
        if prf is not None and prf.enabled:
            index.prepare_vectors()  # now, not inside the first (maybe concurrent) searches

    @classmethod
    def load(cls, path: str | Path, checkpoint: str | Path | None = None, search_params: str | None = None, prf: RocchioPRF | None = None) -> "Searcher":
        """Open an index folder. With ``checkpoint``, the index must have been built by that model
        (otherwise IndexFolderError says what differs) and its query tower is used. With ``prf`` (depth > 0),
        every search is two FAISS calls with Rocchio feedback between them."""
        if checkpoint is None:
            index = PassageIndex.load(path)
            encoder = index.load_query_encoder()
        else:
            from two_tower.retrieval.checkpoint import load_checkpoint, model_identity

            module = load_checkpoint(checkpoint)
            index = PassageIndex.load(path, expect_model=model_identity(module, checkpoint))
            encoder = QueryEncoder.from_module(module)
            encoder.set_statistics(index.statistics())
        if search_params:
            index.set_search_params(search_params)
        return cls(index, encoder, prf)

    def search(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        """The top ``k`` passages of each query, best first (one encoder pass and one FAISS call for all).

        Raises EmptyQueryError if a query is empty or white space.
        """
        if isinstance(queries, str):
            raise TypeError("search() takes a list of queries; wrap a single query in a list")
        if not queries:
            return []
        vectors = self.encoder.encode(queries)
        if self.prf is not None and self.prf.enabled:
            first = self.index.search(vectors, self.prf.depth)
            found = first.rows >= 0
            vectors = self.prf.expand(normalised(vectors), self.index.vectors(np.where(found, first.rows, 0)), found)
        hits = self.index.search(vectors, k)
        found = hits.rows >= 0
        ids, texts = self.index.lookup(hits.rows[found])
        results, at = [], 0
        for q in range(len(queries)):
            n = int(found[q].sum())
            results.append([Hit(i, float(s), t) for i, s, t in zip(ids[at : at + n], hits.scores[q, :n], texts[at : at + n])])
            at += n
        return results
