"""The distillation teacher as a retriever: a sentence-transformers model ranking by cosine.

The reference the towers learn from (``loss=distill``), on the same split, metrics and tie rules as
every other retriever, so "how far is the student from its teacher" is one more row of the table and
one more per-query file (``two_tower.cli.compare`` pairs them). It encodes the split's queries and
passages once; the vectors are cached by content (``SentenceTransformerTeacher``), so a second
evaluation of the same split costs nothing. Slow on a CPU (about 30 passages/s for all-MiniLM-L6-v2 on
one thread, experiments/semantic): the dense towers are made to avoid exactly this cost.
"""

from __future__ import annotations

import numpy as np
import torch

from two_tower.data.prepared import PreparedSplit
from two_tower.data.teacher import DEFAULT_TEACHER, SentenceTransformerTeacher
from two_tower.retrieval.retriever import SplitRetriever


class TeacherRetriever(SplitRetriever):
    def __init__(self, model: str = DEFAULT_TEACHER, batch_size: int = 64, max_seq_length: int | None = 256, threads: int | None = None, cache_dir: str | None = None):
        super().__init__()
        self.teacher = SentenceTransformerTeacher(model, batch_size, max_seq_length, threads, cache_dir)
        self.queries = self.passages = None

    def prepare(self, split: PreparedSplit) -> None:
        if split is self.split:
            return
        super().prepare(split)
        vectors = self.teacher.vectors(split.query_texts, split.passage_texts)
        self.queries, self.passages = torch.from_numpy(vectors.queries), torch.from_numpy(vectors.passages)

    def scores(self, query_rows: np.ndarray) -> torch.Tensor:
        return self.queries[query_rows] @ self.passages.T
