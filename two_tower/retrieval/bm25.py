"""BM25 (bm25s) over a corpus: the lexical baseline on the same protocol as the models, and the lexical
part of an index folder's hybrid search.

bm25s' own tokenizer (lower-cased words of 2+ letters/digits, English stopwords removed, optionally
stemmed with PyStemmer), with combining marks kept inside words (``bm25_token_pattern``). Defaults are bm25s' (Lucene variant, k1=1.5, b=0.75, no stemming).
``BM25Scorer`` holds one corpus's index and scores query texts over all of it; ``BM25Retriever`` is
``evaluate.py``'s retriever around one; index folders save one (``save`` / ``load``) so ``Searcher`` scores
queries exactly as ``evaluate.py``'s ``bm25_stemmed`` does.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

import bm25s
import numpy as np
import torch

from two_tower.core.checks import unknown_setting
from two_tower.core.errors import ConfigError, CorpusError
from two_tower.data.prepared import PreparedSplit
from two_tower.data.tokenizer import combining_marks, has_astral_mark
from two_tower.retrieval.retriever import SplitRetriever

logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG

SETTINGS_FILE = "settings.json"


def bm25_token_pattern(astral: bool = False) -> str:
    """bm25s's token rule (runs of two or more word characters, ``\\b\\w\\w+\\b``) with combining marks counted as
    word characters (``combining_marks``): the same tokens for text without marks (a run shorter than two characters
    never starts a match). ``astral``: also the marks above U+FFFF (Adlam, historic scripts), for a corpus that has
    one; their class of ranges is slow (had every corpus with an emoji used it, marco7k's training passages would
    tokenize at 0.56x the speed)."""
    return rf"[\w{combining_marks(astral)}]{{2,}}"


def sorted_vocabulary(tokens: bm25s.tokenization.Tokenized) -> bm25s.tokenization.Tokenized:
    """The same tokens with the vocabulary numbered in sorted order. With a stemmer, bm25s (0.3.16) numbers the stems
    in the iteration order of a Python ``set``, which changes with the process's string-hash seed: two builds of the
    same corpus saved different files (``vocab.index.json`` and the score matrix's columns), though they scored
    alike. Unstemmed, bm25s numbers words by first occurrence, which is already stable."""
    order = sorted(tokens.vocab)
    renumber = [0] * len(order)
    for new, word in enumerate(order):
        renumber[tokens.vocab[word]] = new
    ids = [[renumber[i] for i in doc] for doc in tokens.ids]
    return bm25s.tokenization.Tokenized(ids=ids, vocab={word: i for i, word in enumerate(order)})


class BM25Scorer:
    def __init__(self, method: str = "lucene", k1: float = 1.5, b: float = 0.75, stopwords: str | None = "english", stemmer: str | None = None,
                 unicode_words: bool = True):
        """``unicode_words``: words as ``two_tower.data.tokenizer.split_words`` keeps them (composed form, combining
        marks inside words), where bm25s's own pattern cut a word at each mark ("हिन्दी" gave "ह", "न", "द"; a Hindi
        query found nothing). False: bm25s's pattern, as indexes saved before it was an option were built."""
        self.method, self.k1, self.b, self.stopwords, self.stemmer = method, k1, b, stopwords, stemmer
        self.unicode_words = unicode_words
        if stemmer:
            import Stemmer

            self.stem = Stemmer.Stemmer(stemmer).stemWords
        else:
            self.stem = None
        self.bm25: bm25s.BM25 | None = None

    @classmethod
    def from_config(cls, settings: dict, name: str) -> "BM25Scorer":
        """From a config mapping, every mistake a ConfigError naming ``name.key`` (checked by building an
        empty bm25s index with the settings)."""
        known = ("method", "k1", "b", "stopwords", "stemmer")
        unknown = [k for k in settings if k not in known]
        if unknown:
            raise ConfigError(unknown_setting(name, unknown[0], list(known)))
        for key in ("k1", "b"):
            value = settings.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"{name}.{key}={value!r}: must be a number >= 0")
        try:
            scorer = cls(**settings)
            scorer.index(["a check of the settings", "another passage"])
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"{name}: {' '.join(str(err).split())} (settings {settings})") from err
        return scorer

    @property
    def settings(self) -> dict:
        return {"method": self.method, "k1": self.k1, "b": self.b, "stopwords": self.stopwords, "stemmer": self.stemmer,
                **({"unicode_words": True} if self.unicode_words else {})}

    def tokenize(self, texts: list[str], show_progress: bool = False, **kwargs):
        if self.unicode_words:
            texts = [t if t.isascii() else unicodedata.normalize("NFC", t) for t in texts]
            kwargs["token_pattern"] = bm25_token_pattern(any(not t.isascii() and has_astral_mark(t) for t in texts))
        tokens = bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stem, show_progress=show_progress, **kwargs)
        if self.stem is not None and kwargs.get("return_ids", True):
            tokens = sorted_vocabulary(tokens)
        return tokens

    def index(self, texts: list[str], show_progress: bool = False) -> "BM25Scorer":
        """``show_progress``: bm25s's progress bars (index.py: 20 s at 200k passages was silent)."""
        tokens = self.tokenize(texts, show_progress=show_progress)
        if not tokens.vocab:  # bm25s fails on an empty vocabulary with a bare max() error
            raise CorpusError(f"BM25: none of the {len(texts)} passages has a word it indexes (stopwords={self.stopwords}); every word is a stopword or punctuation")
        self.bm25 = bm25s.BM25(method=self.method, k1=self.k1, b=self.b)
        self.bm25.index(tokens, show_progress=show_progress)
        return self

    def query_tokens(self, texts: list[str]) -> list[list[str]]:
        return self.tokenize(texts, return_ids=False)

    def scores(self, token_lists: list[list[str]]) -> np.ndarray:
        """[len(token_lists), num_passages] float32 BM25 scores; a query of stopwords only scores nothing."""
        out = np.zeros((len(token_lists), self.bm25.scores["num_docs"]), dtype=np.float32)
        for i, tokens in enumerate(token_lists):
            if tokens:
                out[i] = self.bm25.get_scores(tokens)
        return out

    def no_match_scores(self, token_lists: list[list[str]]) -> np.ndarray:
        """[len(token_lists)] float32: what a passage sharing no word with each query scores: 0, or with bm25s's
        bm25l and bm25+ (which score a query word's absence too) the sum of the query words' non-occurrence
        scores, as ``get_scores`` adds it to every passage."""
        out = np.zeros(len(token_lists), dtype=np.float32)
        absent = getattr(self.bm25, "nonoccurrence_array", None)
        if absent is not None:
            for i, tokens in enumerate(token_lists):
                if tokens:
                    out[i] += absent[self.bm25.get_tokens_ids(tokens)].sum()
        return out

    def save(self, folder: Path) -> list[str]:
        """Write the index and its settings into ``folder``; returns the file names written."""
        folder.mkdir(parents=True, exist_ok=True)
        self.bm25.save(str(folder), show_progress=False)
        (folder / SETTINGS_FILE).write_text(json.dumps(self.settings))
        return sorted(p.name for p in folder.iterdir())

    @classmethod
    def load(cls, folder: Path) -> "BM25Scorer":
        """The index ``save`` wrote in ``folder``; a ValueError where its files are not such (a settings.json that is not an
        object of the settings, a params file without bm25s's keys: they were an AttributeError, a TypeError or a KeyError)."""
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        if not isinstance(settings, dict):
            raise ValueError(f"{folder / SETTINGS_FILE} is not a JSON object of BM25 settings")
        settings.setdefault("unicode_words", False)  # saved before the option: bm25s's pattern, as it was built with
        try:
            scorer = cls(**settings)
            scorer.bm25 = bm25s.BM25.load(str(folder), show_progress=False)
        except (TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"{folder}: not a BM25 index this code wrote ({type(err).__name__}: {err})") from err
        return scorer

    @property
    def num_passages(self):
        """How many passages the index holds (as bm25s recorded it; None if it did not)."""
        return self.bm25.scores.get("num_docs")


class BM25Retriever(SplitRetriever):
    def __init__(self, method: str = "lucene", k1: float = 1.5, b: float = 0.75, stopwords: str | None = "english", stemmer: str | None = None,
                 unicode_words: bool = True):
        super().__init__()
        self.scorer = BM25Scorer(method, k1, b, stopwords, stemmer, unicode_words)
        self.query_tokens: list[list[str]] = []

    def prepare(self, split: PreparedSplit) -> None:
        if split is self.split:
            return
        super().prepare(split)
        self.scorer.index(split.passage_texts)
        self.query_tokens = self.scorer.query_tokens(split.query_texts)

    def scores(self, query_rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.scorer.scores([self.query_tokens[row] for row in query_rows]))

    def no_match_scores(self, query_rows: np.ndarray) -> torch.Tensor:
        """What a passage sharing no word with the query scores: ``BM25Scorer.no_match_scores``."""
        return torch.from_numpy(self.scorer.no_match_scores([self.query_tokens[row] for row in query_rows]))[:, None]
