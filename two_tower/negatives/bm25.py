"""``negatives=bm25``: hard negatives ranked by BM25 (bm25s) over the training corpus."""

from __future__ import annotations

from two_tower.core.checks import check
from two_tower.negatives.mining import MinedNegatives


class BM25Negatives(MinedNegatives):
    name = "bm25"

    def __init__(self, *args, stemmer: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        check("negatives.stemmer", stemmer)
        self.stemmer = stemmer
        self.unicode_words = True  # the run's word rule, set by the datamodule (False: a run saved before it)

    def identity(self) -> dict:
        # the rule enters the key only when set, so pools mined before it existed stay valid for the runs made then
        return {**super().identity(), "stemmer": self.stemmer, **({"unicode_words": True} if self.unicode_words else {})}

    def scorer(self, split):
        from two_tower.retrieval.bm25 import BM25Retriever

        retriever = BM25Retriever(stemmer=self.stemmer, unicode_words=self.unicode_words)
        retriever.prepare(split)

        def scores(rows):
            """BM25 scores, -inf where a passage shares no word with the query (not matched: never a negative; they
            filled windows in passage order, the first training row's passages the negatives of 68-81 queries each)."""
            found = retriever.scores(rows)
            return found.masked_fill(found <= retriever.no_match_scores(rows), float("-inf"))

        return scores
