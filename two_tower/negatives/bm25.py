"""``negatives=bm25``: hard negatives ranked by BM25 (bm25s) over the training corpus."""

from __future__ import annotations

from two_tower.negatives.mining import MinedNegatives


class BM25Negatives(MinedNegatives):
    name = "bm25"

    def __init__(self, *args, stemmer: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stemmer = stemmer

    def identity(self) -> dict:
        return {**super().identity(), "stemmer": self.stemmer}

    def scorer(self, split):
        from two_tower.retrieval.bm25 import BM25Retriever

        retriever = BM25Retriever(stemmer=self.stemmer)
        retriever.prepare(split)
        return retriever.scores
