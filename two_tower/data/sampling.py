"""Random and in-batch negatives; hard-negative miners subclass ``NegativeSampler``."""

from __future__ import annotations

import numpy as np

from two_tower.core.checks import check_explicit_negatives
from two_tower.core.errors import ConfigError
from two_tower.data.prepared import PreparedSplit, Ragged


def sample_from(pool: Ragged, rows: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` values drawn uniformly from each row's pool: [len(rows), k] int64. Without replacement: a row with
    ``k`` values or more gives ``k`` different ones (with replacement, ``negatives.per_query=3`` gave 1,525 of
    marco7k's 4,980 rows a repeated negative, which a triplet loss counts twice: a probe); a row with fewer gives
    each of them, then the same again in the same order. ``k=1`` draws as it always did (one uniform number a row)."""
    lengths = pool.lengths[rows]
    if k and (lengths == 0).any():
        empty = rows[lengths == 0][:5].tolist()
        raise ValueError(f"rows {empty} have nothing to sample from")
    if k <= 1 or len(rows) == 0:
        picks = (rng.random((len(rows), k)) * lengths[:, None]).astype(np.int64)
    else:
        # rows of one pool length at a time: a random order of each row's pool (the rows' pools' size in memory, not
        # rows x the longest pool: a review), slot j taking its (j mod length)-th value, distinct while j < length
        picks = np.empty((len(rows), k), dtype=np.int64)
        for length in np.unique(lengths):
            same = np.flatnonzero(lengths == length)
            order = np.argsort(rng.random((len(same), int(length))), axis=1, kind="stable")
            picks[same] = order[:, np.arange(k) % int(length)]
    return pool.values[pool.offsets[rows][:, None] + picks].astype(np.int64)


class NegativeSampler:
    """Gives each training row ``per_query`` explicit negatives per epoch.

    Whatever the sampler, the loss may also use the other rows' passages in the batch (in-batch
    negatives); duplicates and any passage selected for the query are masked out there.
    """

    per_query: int = 0
    # > 0: mine again every N epochs with the model being trained (see negatives/refresh.py)
    refresh_every_n_epochs: int = 0

    def prepare(self, split: PreparedSplit) -> None:
        """Called once with the training split before the first epoch."""

    def sample(self, split: PreparedSplit, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class InBatchNegatives(NegativeSampler):
    """No explicit negatives: the other rows' positives in the batch are the negatives."""

    def __init__(self, per_query: int = 0):
        if per_query:
            raise ValueError("negatives=in_batch takes no explicit negatives (negatives.per_query must be 0)")
        self.per_query = 0

    def sample(self, split, rows, rng):
        return np.zeros((len(rows), 0), dtype=np.int64)


class RandomNegatives(NegativeSampler):
    """``per_query`` unselected passages of the row's own query, drawn afresh every epoch."""

    def __init__(self, per_query: int = 1):
        check_explicit_negatives(per_query)
        self.per_query = per_query
        self._pool: Ragged | None = None

    def prepare(self, split):
        self._pool = split.negatives()
        empty = int((self._pool.lengths == 0).sum())
        if empty:  # an MS MARCO training row always has one; a BEIR folder's training qrels usually judge relevant documents only
            raise ConfigError(f"negatives=random draws each training query's unselected candidates, and {empty} of the {split.num_queries} "
                              "training queries have none (in a BEIR folder, the documents its training qrels judge not relevant, score 0): "
                              "use negatives=bm25 (mined from the corpus) or negatives=in_batch")

    def sample(self, split, rows, rng):
        if self._pool is None:
            self.prepare(split)
        return sample_from(self._pool, rows, rng, self.per_query)
