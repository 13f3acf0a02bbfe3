"""MaxSim rerank: a first stage's top passages scored again by late interaction over static subword vectors.

For a query's subword tokens t and a candidate passage's tokens s (a model2vec static model's tokenizer and
vectors: the model ``embeddings=distilled`` distils from the teacher and starts the towers from; untrained
here)::

    maxsim(q, p) = sum_t w_t * max_s cos(v_t, v_s) / sum_t w_t,    w_t = |v_t| * idf(t)

ColBERT's MaxSim (Khattab & Zaharia 2020) over static vectors: every query token meets its best match in the
passage, so a passage that says a query word in other words (car / automobile) still scores, where a mean of
vectors dilutes it. |v_t| is the static model's own token weight (its vectors' norms fall with frequency);
idf is BM25's, over the subword tokens of the corpus being ranked (the one IDF rule: ``evaluate.py`` over the
split's passages, ``Searcher`` over the folder's). The first stage's top ``depth`` passages are then ranked by

    (1 - weight) * minmax(first stage's scores) + weight * minmax(maxsim)

each min-max over those ``depth`` passages, ties to the lower row; passages below them keep the first stage's
order, after them. The idf and every passage's token ids come from one pass over the corpus's texts, cached by
what identifies the passages (an index folder's hash of its passages file; in ``evaluate.py`` a digest of the
split's passage texts), so a large corpus pays it once, ``dense_maxsim`` and ``hybrid_maxsim`` share it, and a
query reads its candidates' ids (memory-mapped) instead of tokenizing their texts again (100 Cranfield queries
through ``Searcher``, k=10, one thread, best of 3 alternating, on a loaded machine: tokenizing them took 3.2x the
time; the rerank now takes 4.8x the plain search's).

Chosen on marco7k validation with ``experiment=best`` (``experiments/semantic/README.md``, "MaxSim rerank"):
dense then MaxSim at weight 0.5 ranks best there. Out of domain it can cost a little (Cranfield), so it is off
unless asked for: ``retriever=maxsim`` in ``evaluate.py``, ``rerank=maxsim`` in ``search.py`` / ``serve.py``,
``Searcher.load(..., rerank=MaxSimRerank())``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from two_tower.core import progress
from two_tower.core.cache import ContentCache, default_root
from two_tower.core.checks import GroupSettings
from two_tower.core.errors import ConfigError, TwoTowerError
from two_tower.core.metrics import rank_by_scores
from two_tower.data.embeddings import DistilledEmbeddings
from two_tower.data.prepared import PreparedSplit
from two_tower.data.teacher import DEFAULT_TEACHER
from two_tower.retrieval.hybrid import min_max
from two_tower.retrieval.retriever import SplitRetriever


log = logging.getLogger(__name__)

# The cache entry's layout (maxsim-idf/<key>/: idf.npy, float32 a token of the static model's vocabulary; PassageIds' files).
IDF_FORMAT = 2

# Candidates scored a query are held as [query tokens, depth, max_tokens] cosines; a deeper rerank is a mistake.
MAX_DEPTH = 1000


@dataclass(frozen=True)
class MaxSimRerank(GroupSettings):
    """How many first-stage passages are scored again, the weight of MaxSim in the fusion, and which static
    model gives the token vectors (``embeddings=distilled``'s teacher and dimension; cached by content)."""

    GROUP = "rerank"

    depth: int = 100
    weight: float = 0.5
    teacher: str = DEFAULT_TEACHER
    dim: int = 256
    # passage tokens read (the teacher's own max_seq_length); a passage's tail beyond it is not matched
    max_tokens: int = 256

    def __post_init__(self):
        super().__post_init__()  # each value's range (core.checks.RULES: rerank.depth, weight, dim, max_tokens)
        if self.depth > MAX_DEPTH:
            raise ConfigError(f"rerank.depth={self.depth}: at most {MAX_DEPTH} passages a query are scored again")

    def tokens(self) -> "StaticTokens":
        return static_tokens(self.teacher, self.dim)


class StaticTokens:
    """A model2vec static model's tokenizer, unit token vectors and token weights (vector norms)."""

    def __init__(self, model):
        table = np.asarray(model.embedding, dtype=np.float32)
        if model.weights is not None:
            table = table * np.asarray(model.weights, dtype=np.float32)[:, None]
        norms = np.linalg.norm(table, axis=1)
        self.model = model
        self.weights = torch.from_numpy(norms)
        self.unit = torch.from_numpy(table / np.maximum(norms, 1e-12)[:, None])

    def ids(self, texts: list[str], max_tokens: int) -> list[np.ndarray]:
        return [np.asarray(ids[:max_tokens], dtype=np.int64) for ids in self.model.tokenize(list(texts))]


@functools.lru_cache(maxsize=2)
def static_tokens(teacher: str, dim: int) -> StaticTokens:
    """The static model ``embeddings=distilled`` uses for this teacher and dimension (distilled once, cached);
    a teacher that cannot be found or distilled, or a damaged cache entry, is one ConfigError line."""
    source = DistilledEmbeddings(teacher=teacher, dim=dim)
    try:
        model = source.static_model()
    except Exception as err:  # model2vec / huggingface errors span lines; name the setting instead
        message = " ".join(str(err).split())
        raise ConfigError(f"rerank.teacher={teacher} (rerank.dim={dim}): no static model to rerank with ({type(err).__name__}: {message[:300]})") from err
    if model.dim != dim:
        raise ConfigError(f"rerank.dim={dim}: the static model in {source._folder()} has {model.dim} dims")
    return StaticTokens(model)


def ids_dtype(vocabulary_size: int):
    """The unsigned type a corpus's stored token ids take (2 bytes a token for a vocabulary of at most 65,536)."""
    return np.uint16 if vocabulary_size <= 1 << 16 else np.uint32


def corpus_idf(tokens: StaticTokens, texts_of, size: int, max_tokens: int, chunk: int = 50_000, ids_to: Path | None = None) -> torch.Tensor:
    """BM25's idf of every token over the corpus's ``size`` passages (``texts_of(rows)`` gives their texts),
    read ``chunk`` passages at a time: log((N - df + 0.5) / (df + 0.5) + 1). With ``ids_to`` (a folder) the
    passages' token ids, which this pass computes anyway, are written there too (``PassageIds``), so a rerank
    reads its candidates' ids instead of tokenizing their texts at every query."""

    df = np.zeros(len(tokens.weights), dtype=np.float64)
    offsets = np.zeros(size + 1, dtype=np.int64)
    dtype = ids_dtype(len(tokens.weights))
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(ids_to / PassageIds.IDS, "wb")) if ids_to is not None else None
        for start in progress.bar(range(0, size, chunk), desc="MaxSim idf", unit="chunk", disable=size <= chunk):
            ids = tokens.ids(texts_of(np.arange(start, min(start + chunk, size))), max_tokens)
            for ids_of_one in ids:
                df[np.unique(ids_of_one)] += 1
            offsets[start + 1 : start + 1 + len(ids)] = offsets[start] + np.cumsum([len(i) for i in ids])
            if out is not None and ids:
                out.write(np.concatenate(ids).astype(dtype).tobytes())
    if ids_to is not None:
        np.save(ids_to / PassageIds.OFFSETS, offsets)
    return torch.from_numpy(np.log((size - df + 0.5) / (df + 0.5) + 1.0).astype(np.float32))


class PassageIds:
    """Every passage's static-model token ids (first ``max_tokens``), as ``corpus_idf`` wrote them in a folder:
    the ids one passage after another (``passage_ids.bin``, memory-mapped: a corpus of any size costs pages
    read, not memory) and where each passage starts (``passage_offsets.npy``, 8 bytes a passage)."""

    IDS, OFFSETS = "passage_ids.bin", "passage_offsets.npy"

    def __init__(self, folder: Path, vocabulary_size: int):
        self.offsets = np.load(folder / self.OFFSETS)
        dtype, path = ids_dtype(vocabulary_size), folder / self.IDS
        if self.offsets[-1] == 0:  # np.memmap refuses an empty file
            self.ids = np.fromfile(path, dtype=dtype)
        else:
            self.ids = np.memmap(path, dtype=dtype, mode="r")
        if len(self.ids) != self.offsets[-1]:
            raise TwoTowerError(f"{path}: {len(self.ids)} token ids where its offsets say {self.offsets[-1]} (a damaged cache entry; remove it)")

    def __call__(self, rows) -> list[np.ndarray]:
        return [np.asarray(self.ids[self.offsets[r] : self.offsets[r + 1]], dtype=np.int64) for r in np.asarray(rows).tolist()]


def maxsim(tokens: StaticTokens, idf: torch.Tensor, query: np.ndarray, passages: list[np.ndarray]) -> np.ndarray:
    """MaxSim of one query's token ids against each passage's token ids (0 for a query with no token)."""
    if len(query) == 0 or not passages:
        return np.zeros(len(passages), dtype=np.float32)
    q = torch.from_numpy(query)
    weights = tokens.weights[q] * idf[q]
    total = weights.sum()
    if total <= 0:
        return np.zeros(len(passages), dtype=np.float32)
    width = max(1, max(len(p) for p in passages))
    padded = torch.zeros((len(passages), width), dtype=torch.long)
    real = torch.zeros((len(passages), width), dtype=torch.bool)
    for row, ids in enumerate(passages):
        padded[row, : len(ids)] = torch.from_numpy(ids)
        real[row, : len(ids)] = True
    # each query token's cosine with every vocabulary token, then read at the passages' tokens:
    # [query tokens, passages, passage tokens] without a [passages, passage tokens, dim] copy
    sims = (tokens.unit[q] @ tokens.unit.T)[:, padded]
    best = sims.masked_fill(~real[None], -1.0).amax(2)  # an empty passage matches nothing: -1
    # summed token by token, not by .sum(0): a reduction vectorised across passages rounds the last columns
    # differently, so two passages with the same tokens scored 1 ulp apart and their tie went by position
    score = torch.zeros(best.shape[1], dtype=best.dtype)
    for weight, row in zip(weights, best):
        score += weight * row
    return (score / total).numpy()


def fuse(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * minmax(first) + weight * minmax(second), each over the given candidates (``hybrid.min_max``,
    the weighted fusion's normalisation, in float64)."""

    def minmax(x):
        x = np.asarray(x, dtype=np.float64)
        return min_max(x, x.min(), x.max())

    return ((1 - weight) * minmax(first) + weight * minmax(second)).astype(np.float32)


def texts_key(texts) -> str:
    """A digest of a corpus's passage texts, in order (what ``CorpusMaxSim``'s idf cache entry is kept under)."""
    digest = hashlib.blake2b(digest_size=16)
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def below_reranked(first, top_first):
    """Scores of first-stage passages below the reranked ones: ``first - top_first - 1``, below every fused
    score (0 to 1) and in the first stage's order (``top_first``: the query's best first-stage score)."""
    return first - top_first - 1.0


class CorpusMaxSim:
    """MaxSim against one corpus: the idf and every passage's token ids, computed once in a pass over its
    passages and kept in the cache entry of ``corpus_key`` (the ids memory-mapped from it: what is held in
    memory is the idf, one float a token, and 8 bytes a passage). Where no entry can be kept (no key, a
    read-only or full cache), only the idf is computed and held, and a query tokenizes its candidates' texts."""

    def __init__(self, settings: MaxSimRerank, texts_of, size: int, corpus_key: str | None = None):
        """``texts_of(rows)``: the texts of those passage rows; ``size``: how many passages. With ``corpus_key``
        (what identifies the passages, e.g. an index folder's hash of its passages file) the idf and the
        token ids are kept in the cache (``TWO_TOWER_CACHE``/maxsim-idf), so a large folder pays its pass
        once, not at every start."""
        self.settings, self.tokens, self.texts_of = settings, settings.tokens(), texts_of
        if corpus_key is None:
            self._idf_only(size)
            return
        cache = ContentCache(default_root(), "maxsim-idf")
        key = ContentCache.key([corpus_key, size, settings.teacher, settings.dim, settings.max_tokens, DistilledEmbeddings._model2vec_version(), IDF_FORMAT])
        if cache.get(key) is None:
            try:
                cache.check_writable()
                with cache.put(key) as tmp:
                    np.save(tmp / "idf.npy", corpus_idf(self.tokens, texts_of, size, settings.max_tokens, ids_to=tmp).numpy())
            except (TwoTowerError, OSError) as err:  # unwritable or full: the pass is paid again next start, nothing else
                log.warning("MaxSim idf and token ids not cached (%s): candidates are tokenized at every query", err)
                self._idf_only(size)
                return
        entry = cache.path(key)
        self.idf = torch.from_numpy(np.load(entry / "idf.npy"))
        self.passage_ids = PassageIds(entry, len(self.tokens.weights))

    def _idf_only(self, size: int) -> None:
        self.idf = corpus_idf(self.tokens, self.texts_of, size, self.settings.max_tokens)
        self.passage_ids = lambda rows: self.tokens.ids(self.texts_of(np.asarray(rows)), self.settings.max_tokens)

    def rerank(self, query: str, rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidates ``rows`` (with the first stage's ``scores``) ranked by the fused score, best first,
        ties to the lower row (as ``evaluate.py`` ranks); returns (rows, fused scores)."""
        if len(rows) == 0:
            return rows, scores
        query_ids = self.tokens.ids([query], self.settings.max_tokens)[0]
        passages = self.passage_ids(rows)
        fused = fuse(scores, maxsim(self.tokens, self.idf, query_ids, passages), self.settings.weight)
        rows = np.asarray(rows)
        order = np.lexsort((rows, -fused))
        return rows[order], fused[order]


class MaxSimRetriever(SplitRetriever):
    """``evaluate.py``'s MaxSim rerank of another retriever (``parts: [dense]`` or ``[hybrid_weighted]``):
    that retriever's top ``depth`` passages get the fused score (above every other passage, which keep
    that retriever's order below them)."""

    def __init__(self, parts: list[SplitRetriever], **settings):
        super().__init__()
        if len(parts) != 1:
            raise ConfigError(f"a MaxSim rerank reranks one retriever's ranking; parts has {len(parts)}")
        self.part, self.settings = parts[0], MaxSimRerank(**settings)

    def prepare(self, split: PreparedSplit) -> None:
        super().prepare(split)
        self.part.prepare(split)
        # keyed by the passages' content, so dense_maxsim and hybrid_maxsim (and the next evaluate run) share one idf pass
        self.corpus = CorpusMaxSim(
            self.settings, lambda rows: [split.passage_texts[r] for r in rows.tolist()], len(split.passage_texts), corpus_key=texts_key(split.passage_texts)
        )

    def score_parts(self) -> list[SplitRetriever]:
        return [self.part]

    def scores(self, query_rows: np.ndarray) -> torch.Tensor:
        first = self.part_scores(self.part, query_rows).float()
        top = rank_by_scores(first, min(self.settings.depth, first.shape[1]))
        out = below_reranked(first, first.max(1, keepdim=True).values)
        for i, row in enumerate(query_rows.tolist()):
            candidates = top[i].numpy()
            rows, fused = self.corpus.rerank(self.split.query_texts[row], candidates, first[i, candidates].numpy())
            out[i, torch.from_numpy(rows)] = torch.from_numpy(fused)
        return out
