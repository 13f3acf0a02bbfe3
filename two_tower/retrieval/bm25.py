"""BM25 (bm25s) over a split's passages: the lexical baseline, on the same protocol as the models.

bm25s' own tokenizer (lower-cased words of 2+ letters/digits, English stopwords removed, optionally
stemmed with PyStemmer). Defaults are bm25s' (Lucene variant, k1=1.5, b=0.75, no stemming).
"""

from __future__ import annotations

import logging

import bm25s
import numpy as np
import torch

from two_tower.data.prepared import PreparedSplit
from two_tower.retrieval.retriever import SplitRetriever

logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG


class BM25Retriever(SplitRetriever):
    def __init__(self, method: str = "lucene", k1: float = 1.5, b: float = 0.75, stopwords: str | None = "english", stemmer: str | None = None):
        super().__init__()
        self.method, self.k1, self.b, self.stopwords = method, k1, b, stopwords
        if stemmer:
            import Stemmer

            self.stem = Stemmer.Stemmer(stemmer).stemWords
        else:
            self.stem = None
        self.bm25 = None
        self.query_tokens: list[list[str]] = []

    def tokenize(self, texts: list[str], **kwargs):
        return bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stem, show_progress=False, **kwargs)

    def prepare(self, split: PreparedSplit) -> None:
        if split is self.split:
            return
        super().prepare(split)
        self.bm25 = bm25s.BM25(method=self.method, k1=self.k1, b=self.b)
        self.bm25.index(self.tokenize(split.passage_texts), show_progress=False)
        self.query_tokens = self.tokenize(split.query_texts, return_ids=False)

    def scores(self, query_rows: np.ndarray) -> torch.Tensor:
        out = np.zeros((len(query_rows), self.split.num_passages), dtype=np.float32)
        for i, row in enumerate(query_rows):
            tokens = self.query_tokens[row]
            if tokens:  # a query of stopwords only scores nothing
                out[i] = self.bm25.get_scores(tokens)
        return torch.from_numpy(out)
