"""The trained model as a retriever: exact inner product over the split's encoded passages.

Encodes like validation (same tokenizer, length-sorted batches, ``rank_dense_within`` for the rerank
setting), so a checkpoint evaluated here scores what it logged as ``val/*`` at that epoch.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from two_tower.data.prepared import PreparedSplit, Ragged
from two_tower.data.tokenizer import WindowCount
from two_tower.retrieval.checkpoint import encode_tokens, load_checkpoint, progress_bar
from two_tower.core.errors import ConfigError
from two_tower.core.metrics import rank_dense_within
from two_tower.retrieval.retriever import SplitRetriever

log = logging.getLogger(__name__)


class DenseRetriever(SplitRetriever):
    def __init__(self, checkpoint: str, batch_size: int = 512):
        super().__init__()
        if not checkpoint:
            raise ConfigError("the dense retriever needs a checkpoint: pass ckpt=PATH")
        self.module = load_checkpoint(checkpoint)
        self.batch_size = batch_size
        self.queries = self.passages = None
        self.token_ranges: dict[str, dict[str, float]] | None = None

    def prepare(self, split: PreparedSplit) -> None:
        if split is self.split:
            return
        super().prepare(split)
        self.passages, self.queries = self.encode(*self.tokenize(split))

    def tokenize(self, split: PreparedSplit) -> tuple[Ragged, Ragged, np.ndarray]:
        """The split's passages and queries in the checkpoint's tokens, and the queries to encode (logs
        the token ranges; sets the bag-of-words statistics of this split's passages)."""
        tokenizer, towers = self.module.tokenizer, self.module.towers
        # Straight into int32 arrays (the same ids; no Python list of ids per text).
        passage_tokens = Ragged(*tokenizer.encode_ragged(split.passage_texts, tokenizer.max_passage_len))
        query_tokens = Ragged(*tokenizer.encode_ragged(split.query_texts, tokenizer.max_query_len))
        evaluated = split.evaluated_queries()
        self.token_ranges = {
            "queries": tokenizer.id_ranges(np.concatenate([query_tokens.values[query_tokens.offsets[r] : query_tokens.offsets[r + 1]] for r in evaluated] or [[]])),
            "passages": tokenizer.id_ranges(passage_tokens.values),
        }
        log.info("Token ranges (share of tokens in the training vocabulary / extension / hashed): %s", {k: {r: round(v, 4) for r, v in d.items()} for k, d in self.token_ranges.items()})
        wordless = [int(r) for r in evaluated if not tokenizer.split(split.query_texts[r])]
        if wordless:
            # the Searcher, search.py and serve.py refuse such a query; here it is ranked, as validation ranks it
            first = split.query_ids[wordless[0]] if split.query_ids is not None else f"row {wordless[0]}"
            log.warning("%d of %d evaluated queries have no searchable word (first: %s, %r): the model ranks them by the "
                        "vector of an empty query, as validation does (the Searcher and search.py refuse them)",
                        len(wordless), len(evaluated), first, split.query_texts[wordless[0]][:40])
        for what, tokens, window, rows in (("passages", passage_tokens, WindowCount.of_passages(tokenizer), slice(None)),
                                           ("queries", query_tokens, WindowCount.of_queries(tokenizer), evaluated)):
            window.add(tokens.lengths[rows])
            window.log(log, what)
        # The bag-of-words path weighs terms by their IDF over this split's passages, as validation does.
        if towers.bags():
            towers.set_statistics(towers.corpus_statistics(passage_tokens))
        return passage_tokens, query_tokens, evaluated

    def encode(self, passage_tokens: Ragged, query_tokens: Ragged, evaluated: np.ndarray, passages_out=None, queries_out=None):
        """Passage and query vectors ([rows, dim] float32; queries not in ``evaluated`` stay zero), into
        ``passages_out`` / ``queries_out`` if given (see ``encode_tokens``)."""
        towers = self.module.towers
        with progress_bar(len(passage_tokens), "Encoding passages") as bar:
            passages = encode_tokens(self.module.encode_passages, passage_tokens, towers.passage_encoder.output_dim, self.batch_size, progress=bar, out=passages_out)
        with progress_bar(len(evaluated), "Encoding queries") as bar:
            queries = encode_tokens(self.module.encode_queries, query_tokens, towers.query_encoder.output_dim, self.batch_size, items=evaluated, progress=bar, out=queries_out)
        return passages, queries

    def scores(self, query_rows: np.ndarray) -> torch.Tensor:
        return self.queries[query_rows] @ self.passages.T

    def rank_candidates(self, query_rows: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        return rank_dense_within(self.queries[query_rows], self.passages, self.split.candidates, query_rows)
