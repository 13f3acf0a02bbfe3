"""A trained checkpoint as an embedding model: passage and query vectors as numpy arrays, for a vector store of
one's own (or any numpy code).

```python
from two_tower.retrieval.encoder import Encoder

encoder = Encoder.load("outputs/runs/<run>/checkpoints/last.ckpt")
encoder.fit_corpus(passages)            # the corpus's term statistics (IDF), which a bag-of-words path weighs words by
P = encoder.encode_passages(passages)   # [len(passages), dim] float32
Q = encoder.encode_queries(queries)     # [len(queries), dim] float32
scores = Q @ P.T                        # inner product: the scores evaluate.py and index folders rank by
```

The vectors are the towers' outputs as the model scores them (inner product, no further normalisation), encoded
in length-sorted batches exactly as validation, ``evaluate.py`` and ``index.py`` encode them. A tower reads a text's
first ``max_passage_len`` (a query's: ``max_query_len``) words, fixed when the model was trained; how many texts fill
that window is logged, as those commands log it (a warning from 10% of them). A model with a
bag-of-words path (every shipped recipe) weighs words by their IDF over the corpus being searched, so
``fit_corpus`` comes first, with the whole corpus: passages encoded in several calls then share one set of weights,
and queries are weighed by the same. ``fit_corpus`` returns those statistics (``TermStatistics``: ``save``/``load``),
and ``Encoder.load(..., statistics=...)`` takes them back, so a corpus is counted once. An encoder's statistics are
its own: the module's are set to them while it encodes and put back after (under a lock a module's encoders
share), as is its mode (it encodes in eval mode: no dropout, whatever mode the module is in), so encoders sharing one module (``Encoder(module)``), or a module used elsewhere too, never weigh words by
another's corpus.
"""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path

import numpy as np

from two_tower.core.checks import whole_number
from two_tower.core.errors import ConfigError
from two_tower.data.prepared import Ragged
from two_tower.data.tokenizer import WindowCount
from two_tower.model.bag import TermStatistics
from two_tower.retrieval.checkpoint import encode_tokens, load_checkpoint, progress_bar
from two_tower.retrieval.indexer import corpus_statistics
from two_tower.retrieval.query_encoder import check_queries, not_a_list_of_texts

log = logging.getLogger(__name__)


class Encoder:
    """A checkpoint's two towers, encoding texts into vectors (see the module's docstring)."""

    def __init__(self, module, batch_size: int = 512, statistics: TermStatistics | str | Path | None = None):
        self.module, self.batch_size = module, _batch_size(batch_size)
        self.statistics: TermStatistics | None = None
        self._weights: list | None = None  # the module's bags' weights for ``statistics`` (``TwoTower.statistics_state``)
        if statistics is not None:
            self.use_statistics(statistics)

    @classmethod
    def load(cls, checkpoint: str | Path, batch_size: int = 512, statistics: TermStatistics | str | Path | None = None) -> "Encoder":
        """The encoder of a ``.ckpt`` (CPU, eval mode); ``statistics``: a corpus's, as ``fit_corpus`` returned them
        (or their file: ``use_statistics``)."""
        _batch_size(batch_size)  # before the checkpoint is read: a bad setting is named first
        return cls(load_checkpoint(checkpoint), batch_size, statistics)

    @property
    def dim(self) -> int:
        """The vectors' size (queries' and passages' alike)."""
        return int(self.module.towers.passage_encoder.output_dim)

    @property
    def needs_corpus(self) -> bool:
        """Whether the model weighs words by corpus statistics (a bag-of-words path), so ``fit_corpus`` comes first."""
        return bool(self.module.towers.bags())

    def fit_corpus(self, passages: list[str]) -> TermStatistics | None:
        """Count the terms of the corpus to be searched (every passage of it, once), weigh words by them from now
        on, and return them (None for a model without a bag-of-words path, which needs none)."""
        passages = _texts(passages, "passage")
        if not passages:  # statistics of no passage weigh every word alike: not the corpus's weights
            raise ConfigError("fit_corpus() was given no passages: give it the whole corpus to be searched")
        statistics = corpus_statistics(self.module, passages)
        if statistics is not None:
            self.use_statistics(statistics)
        return statistics

    def use_statistics(self, statistics: TermStatistics | str | Path) -> None:
        """Weigh words by a corpus's statistics (``fit_corpus``'s, or the path of a file ``TermStatistics.save`` wrote,
        such as an index folder's ``term_statistics.npz``): this encoder's vectors from now on; the module's own
        statistics are left as they were. Anything else is one error naming it."""
        if not self.needs_corpus:  # accepted and never read (a probe): a model without a bag-of-words path weighs no word by them
            raise ConfigError("statistics: this model has no bag-of-words path, so no corpus statistics weigh its words; drop them")
        statistics = _statistics(statistics)
        towers = self.module.towers
        with _lock(self.module):
            before = towers.statistics_state()
            try:
                towers.set_statistics(statistics)
                self._weights = towers.statistics_state()
            finally:
                towers.restore_statistics(before)
        self.statistics = statistics

    def encode_passages(self, passages: list[str]) -> np.ndarray:
        """[len(passages), dim] float32 passage vectors."""
        return self._encode(passages, "passage")

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """[len(queries), dim] float32 query vectors. A query with no word the tokenizer reads is refused
        (``EmptyQueryError`` naming it): its vector would rank arbitrary passages first."""
        return self._encode(queries, "query")

    def _encode(self, texts: list[str], kind: str) -> np.ndarray:
        texts = _texts(texts, kind)
        if self.needs_corpus and self.statistics is None:
            raise ConfigError("this model has a bag-of-words path, which weighs words by their IDF over the corpus being searched: "
                              "call fit_corpus(passages) with the whole corpus first (or Encoder.load(..., statistics=...))")
        tokenizer = self.module.tokenizer
        if kind == "query":
            check_queries(tokenizer, texts)  # Searcher's rule and words: one with no word would encode as UNK alone
            encode, tower = self.module.encode_queries, self.module.towers.query_encoder
        else:
            encode, tower = self.module.encode_passages, self.module.towers.passage_encoder
        tokens = Ragged(*tokenizer.encode_ragged(texts, tokenizer.max_query_len if kind == "query" else tokenizer.max_passage_len))
        # the towers read a text's first max_len words only: said as index.py and evaluate.py say it
        window = WindowCount.of_queries(tokenizer) if kind == "query" else WindowCount.of_passages(tokenizer)
        window.add(tokens.lengths)
        window.log(log, "queries" if kind == "query" else "passages")
        towers = self.module.towers
        with _lock(self.module), progress_bar(len(texts), f"Encoding {'queries' if kind == 'query' else 'passages'}") as bar:
            before = towers.statistics_state()
            modes = [(part, part.training) for part in self.module.modules()]  # a module in training mode: no dropout here
            if self._weights is not None:
                towers.restore_statistics(self._weights)
            self.module.eval()
            try:
                return encode_tokens(encode, tokens, int(tower.output_dim), self.batch_size, progress=bar).numpy()
            finally:
                towers.restore_statistics(before)
                for part, training in modes:
                    part.training = training


def _batch_size(batch_size) -> int:
    """Texts a batch (0 and -1 encoded one text a batch, silently slow; 2.5 or None failed deep in the batching with
    "'<' not supported ..." or a range() TypeError)."""
    return whole_number("batch_size", batch_size, meaning=" (texts encoded a batch)")


def _statistics(statistics) -> TermStatistics:
    """``statistics`` as ``TermStatistics``: given, or read from the file ``TermStatistics.save`` wrote."""
    if isinstance(statistics, TermStatistics):
        return statistics
    if not isinstance(statistics, (str, Path)):
        raise ConfigError(f"statistics: give TermStatistics (what fit_corpus returns) or the path of their file, not "
                          f"{type(statistics).__name__} ({statistics!r:.60})")
    path = Path(statistics).expanduser()
    if path.is_dir():
        raise ConfigError(f"statistics={path}: a folder; give the file (an index folder's is {path / TermStatistics.FILE})")
    if not path.is_file():
        raise ConfigError(f"statistics={path}: no such file")
    try:
        return TermStatistics.load(path)
    except Exception as err:  # not an .npz, or one without keys, df and num_passages
        raise ConfigError(f"statistics={path}: not a term statistics file ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from err


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> the lock its encoders share
_LOCKS_LOCK = threading.Lock()


def _lock(module) -> threading.Lock:
    """The lock of ``module``'s statistics: its encoders set them, encode and put them back one at a time."""
    with _LOCKS_LOCK:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.Lock()
        return lock


def _texts(texts, kind: str) -> list[str]:
    """``texts`` as a list of strings: any iterable of them (a list, a generator, a pandas Series), read once (a
    generator checked and then read again was empty: fit_corpus counted a corpus of 0 passages); a lone string
    (it would be read as a list of characters), a mapping (its keys) or a table (its column names) or a non-text is
    one error naming it."""
    if isinstance(texts, (str, bytes, bytearray)):
        raise ConfigError(f"give a list of {kind} texts, not one {'string' if isinstance(texts, str) else type(texts).__name__} ({texts[:40]!r})")
    if (why := not_a_list_of_texts(texts)) is not None:  # a {id: text} dict: its ids were encoded (or counted by fit_corpus)
        raise ConfigError(f"give a list of {kind} texts, {why}")
    try:
        texts = list(texts)
    except TypeError:
        raise ConfigError(f"give a list of {kind} texts, not {type(texts).__name__} ({texts!r:.60})") from None
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"{kind} {i + 1} of {len(texts)} is not text ({type(text).__name__}: {text!r:.60})")
    return texts
