"""Pseudo-queries: unlabelled training rows cut from the training passages, labelled by the teacher only.

A pseudo-query is a query-length span of words cropped from a training passage (as the "cropping" of
Contriever or the inverse cloze task of ORQA, with the passage kept whole). Its row lists the source
passage as positive only so that the batch holds it, and the candidates of a labelled query that lists
the source passage as its candidates (negatives to draw from); with ``loss=distill`` a pseudo row learns from the
teacher's scores over the batch's passages (KL) and never from that label (``TripletBatches`` marks the
labelled rows). Only training passages are cropped: validation and test text is never read.
"""

from __future__ import annotations

import numpy as np

from two_tower.core.checks import check
from two_tower.core.errors import ConfigError
from two_tower.data.prepared import PreparedSplit, Ragged
from two_tower.data.tokenizer import Tokenizer


def crop_queries(passage_texts: list[str], count: int, min_words: int, max_words: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``count`` spans of ``min_words``..``max_words`` words (fewer if the passage is shorter), each from a
    passage drawn uniformly (a passage may give several); returns (texts, source passage ids)."""
    for key, value in (("count", count), ("min_words", min_words), ("max_words", max_words)):
        check(f"data.pseudo_queries.{key}", value)
    if min_words > max_words:
        raise ConfigError(f"data.pseudo_queries.min_words={min_words} must be at most data.pseudo_queries.max_words={max_words}")
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, len(passage_texts), size=count) if passage_texts else np.zeros(0, np.int64)
    texts = []
    for source in sources:
        words = passage_texts[source].split()
        length = min(int(rng.integers(min_words, max_words + 1)), len(words))
        start = int(rng.integers(0, len(words) - length + 1))
        texts.append(" ".join(words[start : start + length]))
    return texts, sources.astype(np.int64)


def with_pseudo_queries(split: PreparedSplit, tokenizer: Tokenizer, count: int, min_words: int = 4, max_words: int = 12, seed: int = 0) -> PreparedSplit:
    """``split`` with ``count`` pseudo-query rows appended after its labelled rows (same passages)."""
    texts, sources = crop_queries(split.passage_texts, count, min_words, max_words, seed)
    # a span without a word the tokenizer reads gives no query (punctuation alone was kept: a query of UNK alone, which
    # the teacher encoded all the same: a probe)
    keep = [i for i, t in enumerate(texts) if tokenizer.split(t)]
    texts, sources = [texts[i] for i in keep], sources[keep]
    tokens = tokenizer.encode_queries(texts)
    own = [[int(s)] for s in sources]
    # Candidates: those of the first labelled query listing the source passage (its topical neighbours,
    # which the teacher then ranks), so negatives=random/bm25 have a pool for pseudo rows too.
    listed_by = np.full(split.num_passages, -1, dtype=np.int64)
    # the first query listing a passage: np.unique's first index of each (an assignment through repeated indices, which
    # this was, reversed, leaves which value stays unspecified in numpy's documentation)
    listed, first = np.unique(split.candidates.values, return_index=True)
    listed_by[listed] = split.candidates.row_ids()[first]
    candidates = [own[i] + [int(c) for c in split.candidates[q] if c != own[i][0]] if q >= 0 else own[i] for i, q in enumerate(listed_by[sources])]

    def extend(ragged: Ragged, rows) -> Ragged:
        extra = Ragged.from_lists(rows)
        return Ragged(np.concatenate([ragged.values, extra.values.astype(ragged.values.dtype)]), np.concatenate([ragged.offsets, extra.offsets[1:] + ragged.offsets[-1]]))

    gains = None if split.gains is None else extend(split.gains, [[1.0]] * len(own))
    return PreparedSplit(
        query_texts=[*split.query_texts, *texts],
        query_tokens=extend(split.query_tokens, tokens),
        passage_texts=split.passage_texts,
        passage_tokens=split.passage_tokens,
        positives=extend(split.positives, own),
        candidates=extend(split.candidates, candidates),
        gains=gains,
        query_ids=None if split.query_ids is None else [*split.query_ids, *(f"pseudo-{i}" for i in range(len(texts)))],
        passage_ids=split.passage_ids,
    )
