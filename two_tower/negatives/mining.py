"""Hard-negative mining: rank the training corpus for every training query, keep a window of the ranking.

Like sentence-transformers' ``mine_hard_negatives``: a query's selected passages and near duplicates
of them are dropped, candidates within ``margin`` of the positive's score can be skipped (likely
unlabelled positives), and the negatives kept are those ranked ``range_min`` to ``range_max`` among the
rest (read as deep as it takes to fill them; a passage the scorer did not match, scored -inf, is never kept). Each epoch draws ``per_query`` of them per row. Mined pools are cached by a hash of the data and
settings; queries whose pool comes out empty fall back to their own unselected candidates.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from two_tower.core import progress
from two_tower.core.cache import ContentCache, default_root
from two_tower.core.checks import check, check_explicit_negatives, check_mining_range
from two_tower.core.errors import ConfigError
from two_tower.data.prepared import PreparedSplit, Ragged
from two_tower.data.tokenizer import split_words
from two_tower.data.sampling import NegativeSampler, sample_from

log = logging.getLogger(__name__)


def split_fingerprint(split: PreparedSplit) -> str:
    """What mined negatives depend on: the split's tokens and positives, its candidates (a query whose window
    comes out empty falls back to its own: a pool kept another candidate list's, a probe), and its texts, which
    BM25 and the near-duplicate check read whole (the tokens stop at max_passage_len: a passage edited past it
    kept a pool mined from the old text, a probe)."""
    digest = hashlib.sha1()
    for array in (split.passage_tokens.values, split.passage_tokens.offsets, split.query_tokens.values, split.positives.values, split.positives.offsets,
                  split.candidates.values, split.candidates.offsets):
        digest.update(np.ascontiguousarray(array).tobytes())
    for texts in (split.passage_texts, split.query_texts):
        for text in texts:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()[:16]


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


def top_k_by_scores(scores: torch.Tensor, k: int, block: int = 64) -> torch.Tensor:
    """Top-``k`` columns of each row of ``scores`` [Q, P] (float32), best first, ties by lower index: the
    order of a stable descending sort (``metrics.rank_by_scores``) without sorting whole rows.

    Each score and its column are packed into one int64 key (the float's order-preserving bits above,
    the complemented column below), all distinct, so ``torch.topk`` on the keys has no ties to break.
    Rows are done ``block`` at a time: the extra memory is block x P x 8 bytes, not Q x P x 16 (a sort's
    values and indices).
    """
    k = min(k, scores.shape[1])
    columns = 0xFFFFFFFF - torch.arange(scores.shape[1], dtype=torch.int64)
    out = []
    for start in range(0, len(scores), block):
        rows = scores[start : start + block].to(torch.float32) + 0.0  # -0.0 -> +0.0: they tie in a sort
        bits = rows.view(torch.int32)
        bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)  # same order as the floats
        keys = (bits << 32) | columns
        out.append(torch.topk(keys, k, dim=1, sorted=True).indices)
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.int64)


class WordSets:
    """Each passage's set of words (for the near-duplicate filter), computed on first use and kept as a
    sorted int32 array of word ids (~4 bytes a word, not a Python set of strings: ~4.5 KB a passage,
    3 GB over 660k passages). ``jaccard`` gives exactly ``jaccard(set(a), set(b))`` of the word strings."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.ids: dict[str, int] = {}
        self.sets: dict[int, np.ndarray] = {}

    def __getitem__(self, pid: int) -> np.ndarray:
        got = self.sets.get(pid)
        if got is None:
            ids = self.ids
            got = self.sets[pid] = np.unique(np.array([ids.setdefault(w, len(ids)) for w in split_words(self.texts[pid])], dtype=np.int32))
        return got

    def jaccard(self, a: int, b: int) -> float:
        x, y = self[a], self[b]
        common = len(np.intersect1d(x, y, assume_unique=True))
        return common / max(len(x) + len(y) - common, 1)


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
        cache_dir: str | None = None,
        max_score_mb: int = 256,
    ):
        for key, value in (("per_query", per_query), ("range_min", range_min), ("range_max", range_max),
                           ("near_duplicate_jaccard", near_duplicate_jaccard), ("margin", margin), ("max_score_mb", max_score_mb)):
            check(f"negatives.{key}", value)  # the rules the train config check applies, in its words
        check_explicit_negatives(per_query)
        check_mining_range(range_min, range_max)
        self.per_query, self.range_min, self.range_max = per_query, range_min, range_max
        self.near_duplicate_jaccard, self.margin = near_duplicate_jaccard, margin
        self.refresh_every_n_epochs, self.chunk = refresh_every_n_epochs, chunk
        # Queries scored at once: at most `chunk`, and fewer when their score rows (4 bytes a passage)
        # would pass max_score_mb (512 rows x 660k passages = 1.35 GB). The pools do not depend on it.
        self.max_score_mb = max_score_mb
        self.cache_dir = Path(cache_dir or default_root()).expanduser()
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
            # pools since the window reads down the ranking until it fills, and stops at passages the scorer did not
            # match (a BM25 pool was padded with passages sharing no word with the query, in passage order)
            "window": "filled, matched only",
        }

    # ------------------------------------------------------------------ NegativeSampler
    def prepare(self, split: PreparedSplit) -> None:
        cache = ContentCache(self.cache_dir, "negatives")
        key = f"{self.name}-{cache.key([split_fingerprint(split), self.identity()])}"
        def read(folder: Path) -> Ragged:
            with np.load(folder / "pool.npz") as saved:
                pool = Ragged(saved["values"], saved["offsets"])
            if len(pool.offsets) != split.num_queries + 1:
                raise ValueError(f"a pool of {len(pool.offsets) - 1} queries for {split.num_queries}")
            return pool

        pool = cache.read(key, read)
        if pool is not None:
            self.pool = pool
            log.info("Hard negatives (%s): cache hit %s", self.name, cache.path(key))
            return
        cache.check_writable()
        self.pool = self.mine_and_close(split, self.scorer(split))
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
        self.pool = self.mine_and_close(split, scorer)

    def mine_and_close(self, split: PreparedSplit, scorer) -> Ragged:
        """``mine``, then ``scorer.close()`` if it has one (e.g. to remove its files of vectors)."""
        try:
            return self.mine(split, scorer)
        finally:
            close = getattr(scorer, "close", None)
            if close is not None:
                close()

    # ------------------------------------------------------------------ mining
    def mine(self, split: PreparedSplit, scorer) -> Ragged:
        start = time.perf_counter()
        depth = min(self.range_max + int(split.positives.lengths.max()) + 10, split.num_passages)
        words = WordSets(split.passage_texts)

        fallback = split.negatives()
        # a refresh: where a row's window and its own candidates are both empty, it keeps the negatives it had
        previous = self.pool if self.pool is not None and len(self.pool.offsets) == split.num_queries + 1 else None
        pools, dropped, fell_back, kept_previous, empty = [], {"selected": 0, "near_duplicate": 0, "margin": 0, "unmatched": 0}, 0, 0, 0
        rows_all = np.arange(split.num_queries)
        with progress.bar(total=len(rows_all), desc=f"Mining {self.name} negatives", unit="query") as bar:
            # (a margin holds a second copy of the rows' scores: half as many rows a step)
            step = max(1, min(self.chunk, int(self.max_score_mb * (1 << 20)) // (4 * max(split.num_passages, 1) * (2 if self.margin is not None else 1))))
            for begin in range(0, len(rows_all), step):
                rows = rows_all[begin : begin + step]
                scores = scorer(rows)
                dropped["unmatched"] += int(torch.isneginf(scores).sum())  # scored -inf by the scorer (BM25: no word in common)
                if self.margin is not None:  # each row's best positive score, for the margin filter
                    positives = torch.from_numpy(split.positives.padded(rows, fill=-1))
                    pos_scores = scores.gather(1, positives.clamp(min=0)).masked_fill(positives < 0, float("-inf")).max(1).values.numpy()
                    # The passages above a row's margin are never kept: ranked as not matched (-inf), so the window is read
                    # from the first passage below it (reading down to it, 4x deeper a step and every rank in Python, took
                    # 220 ms a query on 50k passages with margin=0; 2.5 ms without a margin)
                    above = scores > torch.from_numpy(pos_scores - self.margin)[:, None]
                    dropped["margin"] += int(above.sum())
                    scores = scores.masked_fill(above, float("-inf"))
                top = top_k_by_scores(scores, depth)
                top_scores = scores.gather(1, top).numpy()
                for i, row in enumerate(rows):
                    selected = set(split.positives[row].tolist())
                    kept, order, order_scores, seen, reach, row_scores = [], top[i].tolist(), top_scores[i].tolist(), 0, depth, scores[i]
                    while True:
                        for pid, score in zip(order[seen:], order_scores[seen:]):
                            seen += 1
                            if score == float("-inf"):  # not matched (BM25: no word in common) or above the margin, nor is any after it
                                reach = split.num_passages
                                break
                            if pid in selected:
                                dropped["selected"] += 1
                            elif self.near_duplicate_jaccard is not None and any(words.jaccard(pid, s) >= self.near_duplicate_jaccard for s in selected):
                                dropped["near_duplicate"] += 1
                            else:
                                kept.append(pid)
                                if len(kept) == self.range_max:
                                    break
                        if len(kept) == self.range_max or reach >= split.num_passages:
                            break
                        # its selected passages and their near duplicates left the window short: read further down this
                        # query's ranking (a margin, now masked above, once emptied 186 marco7k queries' windows this way)
                        reach = min(4 * reach, split.num_passages)
                        deeper = top_k_by_scores(row_scores[None], reach)[0]
                        order, order_scores = deeper.tolist(), row_scores[deeper].tolist()
                    window = kept[self.range_min : self.range_max]
                    if not window:
                        window = fallback[row].tolist()
                        fell_back += 1
                    if not window and previous is not None and len(previous[row]):
                        window = previous[row].tolist()
                        kept_previous += 1
                    empty += not window
                    pools.append(window)
                bar.update(len(rows))
        self.last_mining_seconds = time.perf_counter() - start
        if empty and self.per_query:
            # An MS MARCO row always has an unselected candidate to fall back on; a BEIR folder's training query has
            # one only where its qrels judge a document not relevant. Drawn from, such a row was a ValueError traceback.
            filters = ", ".join([f"negatives.range_min={self.range_min}", f"negatives.range_max={self.range_max}",
                                 f"negatives.near_duplicate_jaccard={self.near_duplicate_jaccard}"]
                                + ([f"negatives.margin={self.margin}"] if self.margin is not None else []))
            raise ConfigError(f"{empty} of the {split.num_queries} training queries have no {self.name} negative left ({filters}; "
                              f"dropped: {dropped}) and no unselected candidate to fall back on (a BEIR folder's training qrels "
                              "usually judge relevant documents only): loosen those settings, or use negatives=in_batch")
        if kept_previous:
            log.warning("%d training queries have no %s negative in this refresh's window nor a candidate of their own: they keep "
                        "their negatives", kept_previous, self.name)
        log.info(
            "Mined %s negatives for %d queries in %.1fs (window %d-%d of the ranking; skipped %s; %d queries fell back to their own candidates)",
            self.name, len(pools), self.last_mining_seconds, self.range_min, self.range_max, dropped, fell_back,
        )
        return Ragged.from_lists(pools)
