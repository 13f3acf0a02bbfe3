"""Search an index folder: ``Searcher.load(dir).search(queries, k)`` (the command line is ``two_tower.cli.search``).

The searcher encodes queries with the index's own copy of the query tower (or, given a checkpoint, with
that checkpoint's, after checking it is the model that built the index) and asks FAISS for the top k.
With ``prf=RocchioPRF(depth=5)`` it first asks for the top ``depth``, moves each query towards their stored
vectors (``two_tower.retrieval.prf``) and asks again: for collections with many relevant passages a query.
A folder built with a BM25 index (``index.py``'s default ``hybrid.enabled=true``) is searched by dense + BM25
fused as ``evaluate.py``'s ``hybrid_weighted`` (``hybrid_search``) with the weights saved in the folder, or
with ``hybrid=(dense, bm25)`` weights given at load; ``hybrid=False`` searches dense alone.
With ``rerank=MaxSimRerank()`` the top ``rerank.depth`` of that search are scored again by MaxSim over
static subword vectors and fused (``two_tower.retrieval.maxsim``, as ``evaluate.py``'s ``dense_maxsim``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from two_tower.core.errors import ConfigError, IndexFolderError
from two_tower.core.metrics import rank_by_scores
from two_tower.retrieval.hybrid import min_max_rows, proven_top_k
from two_tower.retrieval.index import PASSAGES_FILE, PassageIndex, SearchHits, check_k, normalised, valid_hybrid_weights, WEIGHT_SUM_RULE
from two_tower.retrieval.maxsim import CorpusMaxSim, MaxSimRerank, below_reranked
from two_tower.retrieval.prf import RocchioPRF
from two_tower.retrieval.query_encoder import QueryEncoder, not_a_list_of_texts

log = logging.getLogger(__name__)


@dataclass
class Hit:
    id: str
    score: float
    text: str


# Above this many passages a Flat folder's hybrid search goes through candidates: scoring it whole would
# read its whole matrix once per (2**25 / passages) queries.
EXHAUSTIVE_MAX_PASSAGES = 200_000


def check_hybrid(hybrid) -> bool | tuple[float, float] | None:
    """The ``hybrid`` setting of ``Searcher`` / search.py / serve.py, checked: None (fuse where the folder has a
    BM25 index, with its weights), True (require it), False (dense alone), or two (dense, bm25) weights that
    replace the folder's (e.g. more BM25 weight for a collection where BM25 is strong); returned as a tuple."""
    if isinstance(hybrid, np.ndarray):
        hybrid = hybrid.tolist()
    if isinstance(hybrid, Sequence) and not isinstance(hybrid, (str, bytes)):
        weights = list(hybrid)
        if valid_hybrid_weights(weights):
            return (float(weights[0]), float(weights[1]))
    elif hybrid is None or isinstance(hybrid, bool):
        return hybrid
    raise ConfigError(
        f"hybrid={hybrid!r}: must be true, false, null (None in Python: where the folder has a BM25 index) or "
        f"[dense weight, bm25 weight] (two finite numbers >= 0, not both 0, {WEIGHT_SUM_RULE})"
    )


def check_stages(prf, rerank) -> None:
    """``prf`` and ``rerank`` are None or the objects themselves (``prf="rocchio"``, the command line's word, was an
    AttributeError deep in the first search or after the whole folder had loaded)."""
    for name, value, kind in (("prf", prf, RocchioPRF), ("rerank", rerank, MaxSimRerank)):
        if value is not None and not isinstance(value, kind):
            raise ConfigError(f"{name}={value!r:.60}: must be None or a {kind.__module__}.{kind.__name__} (e.g. {kind.__name__}())")


# Loads of a folder replaced meanwhile (index.py overwrite=true) before one is refused
LOAD_ATTEMPTS = 3


def folder_identity(path) -> tuple[int, int] | None:
    """The folder at ``path`` as the filesystem knows it (device, inode): another one after a replacement; None if absent
    or not a path (the load names that)."""
    try:
        found = os.stat(Path(path).expanduser())
    except (OSError, TypeError, ValueError):
        return None
    return found.st_dev, found.st_ino


class Searcher:
    def __init__(
        self, index: PassageIndex, encoder: QueryEncoder, prf: RocchioPRF | None = None, hybrid: bool | tuple[float, float] | None = None, rerank: MaxSimRerank | None = None
    ):
        hybrid = check_hybrid(hybrid)
        check_stages(prf, rerank)
        self.index, self.encoder, self.prf, self.rerank = index, encoder, prf, rerank
        self.warned_short = False  # fewer than k hits from an approximate index: said once
        # hybrid=True (or weights) on a dense-only folder: index.lexical() says it has no BM25 index
        self.lexical = index.lexical() if hybrid or (hybrid is None and index.hybrid_weights is not None) else None
        # (dense, bm25) weights of the fusion: given ones, else the folder's; None: dense alone
        self.weights = None if self.lexical is None else hybrid if isinstance(hybrid, tuple) else tuple(index.hybrid_weights)
        if (prf is not None and prf.enabled) or self.lexical is not None:
            index.prepare_vectors()  # now, not inside the first (maybe concurrent) searches
        # MaxSim's idf over the folder's passages: one pass over its texts at the first load (after the settings
        # above are found usable), then from the cache, keyed by the hash of the folder's passages file
        self.maxsim = None
        if rerank is not None:
            passages_hash = index.manifest["files"].get(PASSAGES_FILE)
            self.maxsim = CorpusMaxSim(rerank, lambda rows: index.lookup(rows)[1], len(index), corpus_key=passages_hash)

    @classmethod
    def load(
        cls,
        path: str | Path,
        checkpoint: str | Path | None = None,
        search_params: str | None = None,
        prf: RocchioPRF | None = None,
        hybrid: bool | tuple[float, float] | None = None,
        rerank: MaxSimRerank | None = None,
    ) -> "Searcher":
        """Open an index folder. With ``checkpoint``, the index must have been built by that model
        (otherwise IndexFolderError says what differs) and its query tower is used. With ``prf`` (depth > 0),
        every search is two FAISS calls with Rocchio feedback between them. ``hybrid``: None (default) ranks
        by dense + BM25 where the folder has a BM25 index, dense alone where not; False always dense alone;
        True requires the BM25 index; (dense, bm25) weights require it and fuse with them instead of the folder's.
        ``rerank``: a MaxSim rerank of each query's top ``rerank.depth`` (``two_tower.retrieval.maxsim``)."""
        check_hybrid(hybrid)  # before the folder is read: a bad setting is named first
        check_stages(prf, rerank)
        module = None
        if checkpoint is not None:
            from two_tower.retrieval.checkpoint import load_checkpoint

            module = load_checkpoint(checkpoint)
        # A folder replaced while it loaded (index.py overwrite=true exchanges it whole) gave parts of both: the old manifest
        # with the new faiss.index was "does not match the hash ... rebuild it" of a sound folder (1 of 8,166 loads beside
        # three rebuilds, a probe), and the new passages read after the old ones' hashes were checked a folder of two,
        # silently. Loaded again until the folder is the same one from the first read to the last.
        for attempt in range(LOAD_ATTEMPTS):
            before = folder_identity(path)
            try:
                searcher = cls._load(path, module, checkpoint, search_params, prf, hybrid, rerank)
            except IndexFolderError:
                if attempt + 1 == LOAD_ATTEMPTS or folder_identity(path) == before:
                    raise
                continue
            if folder_identity(path) == before:
                return searcher
            # let the discarded load go before the next one: both held at once were twice the load's memory (a folder
            # of 1 GB resident, serve.py's)
            del searcher
        raise IndexFolderError(f"index={path}: replaced {LOAD_ATTEMPTS} times while it loaded; load it when no index.py is writing it")

    @classmethod
    def _load(cls, path, module, checkpoint, search_params, prf, hybrid, rerank) -> "Searcher":
        if module is None:
            index = PassageIndex.load(path)
            encoder = index.load_query_encoder()
        else:
            from two_tower.retrieval.checkpoint import model_identity

            index = PassageIndex.load(path, expect_model=model_identity(module, checkpoint))
            encoder = QueryEncoder.from_module(module)
            encoder.set_statistics(index.statistics_for(encoder))
        if search_params:
            index.set_search_params(search_params)
        return cls(index, encoder, prf, hybrid, rerank)

    def __reduce__(self):
        # pickle (multiprocessing's spawn, copy.deepcopy) failed deep inside with "cannot pickle '_thread.lock'"
        raise TypeError("a Searcher does not pickle (its FAISS and BM25 indexes, its memory-mapped passages): load one in each "
                        "worker process with Searcher.load(path), after the worker has started (docs/retrieval.md)")

    def search(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        """The top ``k`` passages of each query, best first (one encoder pass for all; one FAISS call for all
        in a dense folder, see ``hybrid_search`` for a hybrid one).

        Raises EmptyQueryError if a query is empty or white space.
        """
        if isinstance(queries, (str, bytes, bytearray)):  # bytes too: iterated, they were "query 1 of 5 is not text (int: 108)"
            raise TypeError(f"search() takes a list of queries, not one {type(queries).__name__}; wrap a single query in a list")
        try:
            iter(queries)
        except TypeError:
            raise TypeError(f"search() takes a list of queries, not {type(queries).__name__} ({queries!r:.60})") from None
        if (why := not_a_list_of_texts(queries, "queries")) is not None:
            raise TypeError(f"search() takes a list of queries, {why}")
        queries = list(queries)  # any iterable (a generator, a tuple, a pandas Series); its own errors are its own
        check_k(k)  # an empty list too: search([], k=0) returned [] and search([q], k=0) raised
        if not queries:
            return []
        # as the model scores (evaluate.py, validation): unit length, except a query with no readable word under a bag path
        vectors = np.ascontiguousarray(self.encoder.encode(queries), dtype=np.float32)
        if self.prf is not None and self.prf.enabled:
            first = self.index.search(vectors, self.prf.depth)
            found = first.rows >= 0
            vectors = normalised(self.prf.expand(vectors, self.index.vectors(np.where(found, first.rows, 0)), found))
        # before max(k, depth) below; never more than the corpus holds (a rerank sizes its arrays by k)
        k = max(1, min(check_k(k), len(self.index)))
        depth = k if self.maxsim is None else max(k, self.rerank.depth)
        hits = self.index.search(vectors, depth) if self.lexical is None else self.hybrid_search(queries, vectors, depth)
        if self.maxsim is not None:
            hits = self.reranked(queries, hits, k)
        found = hits.rows >= 0
        short = int((found.sum(1) < k).sum())
        if short and not self.warned_short:  # once a Searcher (a server's log would repeat it every search)
            self.warned_short = True
            log.warning("%d of %d queries got fewer than k=%d hits: this %s index visits only part of the corpus a search (raise "
                        "nprobe or efSearch with search_params)", short, len(queries), k, self.index.manifest.get("faiss", {}).get("type", "FAISS"))
        # Each passage's id and text are read once and shared by every hit on it (Python strings are immutable):
        # a text a hit made 10,000 queries at k=100 over 100,000 passages hold a million copies (1.6 GB).
        unique, inverse = np.unique(hits.rows[found], return_inverse=True)
        ids, texts = self.index.lookup(unique)
        inverse, results, at = inverse.tolist(), [], 0
        for q in range(len(queries)):
            n = int(found[q].sum())
            results.append([Hit(ids[j], float(s), texts[j]) for j, s in zip(inverse[at : at + n], hits.scores[q, :n])])
            at += n
        return results

    def reranked(self, queries: list[str], hits: SearchHits, k: int) -> SearchHits:
        """Each query's top ``rerank.depth`` hits ranked again by the MaxSim rerank (fused scores, 0 to 1);
        hits below them (k > depth) follow in the first stage's order, scored below 0 (first score minus the
        top first score, minus 1: ``MaxSimRetriever``'s rule); the top ``k`` of that."""
        depth = self.rerank.depth
        rows, scores = np.full((len(queries), k), -1, dtype=np.int64), np.full((len(queries), k), -np.inf, dtype=np.float32)
        for q, query in enumerate(queries):
            found = hits.rows[q] >= 0
            first_rows, first_scores = hits.rows[q][found], hits.scores[q][found]
            ranked, fused = self.maxsim.rerank(query, first_rows[:depth], first_scores[:depth])
            below = below_reranked(first_scores[depth:], first_scores[0] if len(first_scores) else 0.0)
            ranked, fused = np.concatenate([ranked, first_rows[depth:]])[:k], np.concatenate([fused, below.astype(np.float32)])[:k]
            rows[q, : len(ranked)], scores[q, : len(ranked)] = ranked, fused
        return SearchHits(rows, scores)

    def hybrid_search(self, queries: list[str], vectors: np.ndarray, k: int, exhaustive: bool | None = None) -> SearchHits:
        """Dense + BM25, fused as ``evaluate.py``'s ``hybrid_weighted``: each part min-max normalised over
        the whole corpus. A ``Flat`` index (``exhaustive`` None or True) is scored whole, as evaluate does
        (``fused_exhaustive``); other index types (or ``exhaustive=False``) through candidates: the dense
        lowest score from a search for -q, both parts' top n, n = 4k (at least 200); a query whose top k
        they do not prove (``hybrid.proven_top_k``) is searched again with 4n, in one FAISS call for all
        such queries, until proven. Every candidate's dense score is its stored vector's inner product
        with the query."""
        k = check_k(k)
        total = len(self.index)
        k = min(k, total)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        stored = self.index.flat_tensor() if exhaustive is not False else None
        if exhaustive and stored is None:
            raise ConfigError("exhaustive hybrid search needs a Flat index")
        if exhaustive is None and stored is not None and len(stored) > EXHAUSTIVE_MAX_PASSAGES:
            stored = None  # a large corpus: its matrix would be read once per few queries; candidates instead
        if stored is not None:
            return self.fused_exhaustive(queries, vectors, k, stored)
        farthest = self.index.search(-vectors, 1)
        tokens = self.lexical.query_tokens(queries)
        rows, scores = np.full((len(queries), k), -1, dtype=np.int64), np.full((len(queries), k), -np.inf, dtype=np.float32)
        weights, lexical_scores, dense_ranges = self.weights, {}, {}
        pending, n, nearest = np.arange(len(queries)), min(max(4 * k, 200), total), None
        while len(pending):
            top = self.index.search(vectors[pending], n)
            if nearest is None:
                nearest = top
            unproven = []
            for i, q in enumerate(pending.tolist()):

                def dense_scores(found: np.ndarray, vector=vectors[q].astype(np.float64)) -> np.ndarray:
                    # every candidate scored the same way (not FAISS's score for some), so equal vectors
                    # (duplicate passages) get equal scores and keep the lower-row-first order: summed in
                    # float64 (a float32 product's rounding can depend on the row's place in the block), read
                    # back 4,096 vectors at a time, so a deep search (ties at the cut) stays within memory
                    out = np.empty(len(found), dtype=np.float32)
                    for start in range(0, len(found), 4096):
                        out[start : start + 4096] = self.index.vectors(found[start : start + 4096]).astype(np.float64) @ vector
                    return out

                if q not in lexical_scores:  # once per query, however many rounds it needs
                    lexical_scores[q] = self.lexical.scores([tokens[q]])[0]
                    # the dense extremes FAISS found, scored as the candidates are (its own scores may round otherwise)
                    ends = np.array([farthest.rows[q, 0], nearest.rows[q, 0]])
                    dense_ranges[q] = tuple(dense_scores(ends)) if (ends >= 0).all() else (-farthest.scores[q, 0], nearest.scores[q, 0])
                result = proven_top_k(k, weights, lexical_scores[q], dense_ranges[q], top.rows[i], top.scores[i], dense_scores)
                if result is None:
                    unproven.append(q)
                else:
                    rows[q, : len(result[0])], scores[q, : len(result[0])] = result
                    del lexical_scores[q]  # a row of the corpus's size: kept only while its query is unproven
            pending, n = np.array(unproven, dtype=np.int64), min(4 * n, total)
        return SearchHits(rows, scores)

    def fused_exhaustive(self, queries: list[str], vectors: np.ndarray, k: int, passages: torch.Tensor) -> SearchHits:
        """Every passage scored by both parts, fused by ``WeightedScoreFusion``'s rule (``min_max_rows``) and ranked by
        ``metrics.rank_by_scores`` (ties to the lower row): evaluate.py's computation, over the folder's
        stored vectors, a chunk of queries at a time: two [chunk, passages] float32 score matrices of
        about 128 MB each (fused in place) at most."""
        weights = self.weights
        tokens = self.lexical.query_tokens(queries)
        chunk = max(1, (1 << 25) // len(passages))
        rows, scores = [], []
        for start in range(0, len(queries), chunk):
            fused = min_max_rows(torch.from_numpy(vectors[start : start + chunk]) @ passages.T, in_place=True).mul_(weights[0])
            lexical = min_max_rows(torch.from_numpy(self.lexical.scores(tokens[start : start + chunk])), in_place=True)
            fused.add_(lexical.mul_(weights[1]))
            del lexical
            top = rank_by_scores(fused, k)
            rows.append(top.numpy().astype(np.int64))
            scores.append(fused.gather(1, top).numpy())
        return SearchHits(np.concatenate(rows), np.concatenate(scores))
