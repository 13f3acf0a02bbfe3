"""Hard-negative mining: rank the training corpus for every training query, keep a window of the ranking.

Like sentence-transformers' ``mine_hard_negatives``: a query's selected passages and near duplicates
of them are dropped, candidates within ``margin`` of the positive's score can be skipped (likely
unlabelled positives), and the negatives kept are those ranked ``range_min`` to ``range_max`` among the
rest. Each epoch draws ``per_query`` of them per row. Mined pools are cached by a hash of the data and
settings; queries whose pool comes out empty fall back to their own unselected candidates.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from two_tower.core.cache import ContentCache
from two_tower.data.prepared import PreparedSplit, Ragged
from two_tower.data.tokenizer import split_words
from two_tower.data.sampling import NegativeSampler, sample_from
from two_tower.core.metrics import rank_by_scores

log = logging.getLogger(__name__)


def split_fingerprint(split: PreparedSplit) -> str:
    digest = hashlib.sha1()
    for array in (split.passage_tokens.values, split.passage_tokens.offsets, split.query_tokens.values, split.positives.values, split.positives.offsets):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


class MinedNegatives(NegativeSampler):
    """Base for miners; subclasses give ``scorer(split)``: query rows -> scores over all passages."""

    name = "mined"

    def __init__(
        self,
        per_query: int = 1,
        range_min: int = 0,
        range_max: int = 30,
        near_duplicate_jaccard: float = 0.9,
        margin: float | None = None,
        refresh_every_n_epochs: int = 0,
        chunk: int = 512,
        cache_dir: str = ".cache",
    ):
        if per_query < 1:
            raise ValueError(f"negatives.per_query must be >= 1, got {per_query}")
        if not 0 <= range_min < range_max:
            raise ValueError(f"need 0 <= negatives.range_min < negatives.range_max, got {range_min}, {range_max}")
        self.per_query, self.range_min, self.range_max = per_query, range_min, range_max
        self.near_duplicate_jaccard, self.margin = near_duplicate_jaccard, margin
        self.refresh_every_n_epochs, self.chunk = refresh_every_n_epochs, chunk
        self.cache_dir = Path(cache_dir).expanduser()
        self.pool: Ragged | None = None
        self.last_mining_seconds = 0.0

    # ------------------------------------------------------------------ what subclasses provide
    def scorer(self, split: PreparedSplit):
        raise NotImplementedError

    def identity(self) -> dict:
        return {
            "miner": self.name,
            "range": [self.range_min, self.range_max],
            "near_duplicate_jaccard": self.near_duplicate_jaccard,
            "margin": self.margin,
        }

    # ------------------------------------------------------------------ NegativeSampler
    def prepare(self, split: PreparedSplit) -> None:
        cache = ContentCache(self.cache_dir, "negatives")
        key = f"{self.name}-{cache.key([split_fingerprint(split), self.identity()])}"
        entry = cache.get(key)
        if entry is not None:
            with np.load(entry / "pool.npz") as saved:
                self.pool = Ragged(saved["values"], saved["offsets"])
            log.info("Hard negatives (%s): cache hit %s", self.name, entry)
            return
        cache.check_writable()
        self.pool = self.mine(split, self.scorer(split))
        with cache.put(key) as tmp:
            np.savez(tmp / "pool.npz", values=self.pool.values, offsets=self.pool.offsets)
        path = cache.path(key)
        log.info("Hard negatives (%s): cached %s", self.name, path)

    def sample(self, split, rows, rng):
        if self.pool is None:
            self.prepare(split)
        return sample_from(self.pool, rows, rng, self.per_query)

    def refresh(self, scorer, split: PreparedSplit) -> None:
        """Re-mine with another scorer (e.g. the model being trained); not cached."""
        self.pool = self.mine(split, scorer)

    # ------------------------------------------------------------------ mining
    def mine(self, split: PreparedSplit, scorer) -> Ragged:
        start = time.perf_counter()
        depth = min(self.range_max + int(split.positives.lengths.max()) + 10, split.num_passages)
        words: dict[int, set] = {}

        def word_set(pid: int) -> set:
            if pid not in words:
                words[pid] = set(split_words(split.passage_texts[pid]))
            return words[pid]

        fallback = split.negatives()
        pools, dropped, fell_back = [], {"selected": 0, "near_duplicate": 0, "margin": 0}, 0
        rows_all = np.arange(split.num_queries)
        with tqdm(total=len(rows_all), desc=f"Mining {self.name} negatives", unit="query") as bar:
            for begin in range(0, len(rows_all), self.chunk):
                rows = rows_all[begin : begin + self.chunk]
                scores = scorer(rows)
                top = rank_by_scores(scores, depth)
                top_scores = scores.gather(1, top).numpy()
                if self.margin is not None:  # each row's best positive score, for the margin filter
                    positives = torch.from_numpy(split.positives.padded(rows, fill=-1))
                    pos_scores = scores.gather(1, positives.clamp(min=0)).masked_fill(positives < 0, float("-inf")).max(1).values.numpy()
                for i, row in enumerate(rows):
                    selected = set(split.positives[row].tolist())
                    kept = []
                    for pid, score in zip(top[i].tolist(), top_scores[i].tolist()):
                        if pid in selected:
                            dropped["selected"] += 1
                        elif any(jaccard(word_set(pid), word_set(s)) >= self.near_duplicate_jaccard for s in selected):
                            dropped["near_duplicate"] += 1
                        elif self.margin is not None and score > pos_scores[i] - self.margin:
                            dropped["margin"] += 1
                        else:
                            kept.append(pid)
                    window = kept[self.range_min : self.range_max]
                    if not window:
                        window = fallback[row].tolist()
                        fell_back += 1
                    pools.append(window)
                bar.update(len(rows))
        self.last_mining_seconds = time.perf_counter() - start
        log.info(
            "Mined %s negatives for %d queries in %.1fs (window %d-%d of the ranking; skipped %s; %d queries fell back to their own candidates)",
            self.name, len(pools), self.last_mining_seconds, self.range_min, self.range_max, dropped, fell_back,
        )
        return Ragged.from_lists(pools)
