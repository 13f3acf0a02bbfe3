"""A split after validation and tokenization: unique passages, queries, and which passages each query has.

Token ids and passage lists are ragged arrays (values + offsets, i.e. Arrow list arrays), so batches are
cut with numpy, never with per-row Python objects. ``save``/``load`` keep a split as a ``datasets``
folder (memory-mapped Arrow) inside the tokenization cache.
"""

from __future__ import annotations

import hashlib

import json
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable

from two_tower.core.ragged import Ragged  # noqa: F401  (re-exported: data modules import it from here)
from two_tower.data.msmarco import CleanRow
from two_tower.data.tokenizer import UNK_ID, Tokenizer

# a split's own query and passage ids (a BEIR collection's), beside its queries/ and passages/ folders
IDS = "ids.json"


@dataclass
class PreparedSplit:
    """Queries and the split's unique passages, tokenized; positives/candidates index into passages."""

    query_texts: list[str]
    query_tokens: Ragged
    passage_texts: list[str]
    passage_tokens: Ragged
    positives: Ragged  # selected passages of each query
    candidates: Ragged  # all passages listed with each query (selected or not)
    gains: Ragged | None = None  # graded relevance of each positive (BEIR qrels); None = all 1
    query_ids: list[str] | None = None  # the collection's own ids (BEIR); None = row numbers
    passage_ids: list[str] | None = None

    def content_digest(self) -> str:
        """A digest of what the split says (its query and passage texts, each query's passages and which it selects, and
        their gains), the same wherever its files are: a checkpoint records its run's, so a resume on other data is
        refused (``data.path`` may change on resume, to where the data moved)."""
        digest = hashlib.sha1()
        for texts in (self.query_texts, self.passage_texts):
            digest.update(len(texts).to_bytes(8, "little"))
            for text in texts:
                digest.update(text.encode("utf-8", "surrogatepass"))
                digest.update(b"\0")
        for ragged, dtype in ((self.positives, np.int64), (self.candidates, np.int64), (self.gains, np.float64)):
            if ragged is not None:  # one dtype whatever the arrays were stored as
                digest.update(np.ascontiguousarray(ragged.values, dtype=dtype).tobytes())
                digest.update(np.ascontiguousarray(ragged.offsets, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]

    @classmethod
    def from_rows(cls, rows: list[CleanRow], tokenizer: Tokenizer | None = None, workers: int = 1, name: str | None = None) -> "PreparedSplit":
        """``tokenizer`` None: texts and passage lists only (``tokenized`` adds the tokens); ``workers``:
        processes tokenizing (``Tokenizer.encode_ragged``); ``name``: show progress bars labelled with it."""
        passage_index: dict[str, int] = {}
        positives, candidates = [], []
        for row in rows:
            ids = [passage_index.setdefault(text, len(passage_index)) for text in row.passages]
            # A passage listed twice for one query counts once, selected if either copy is.
            candidates.append(list(dict.fromkeys(ids)))
            positives.append(list(dict.fromkeys(i for i, s in zip(ids, row.selected) if s)))
        split = cls.untokenized([row.query for row in rows], list(passage_index), Ragged.from_lists(positives), Ragged.from_lists(candidates))
        return split if tokenizer is None else split.tokenized(tokenizer, workers, name)

    @classmethod
    def untokenized(cls, query_texts: list[str], passage_texts: list[str], positives: Ragged, candidates: Ragged, **extra) -> "PreparedSplit":
        """A split whose token arrays are placeholders, one UNK token a text (retrievers that tokenize for themselves
        read the texts; ``tokenized`` fills them)."""
        return cls(
            query_texts=query_texts,
            query_tokens=Ragged.from_lists([[UNK_ID]] * len(query_texts)),
            passage_texts=passage_texts,
            passage_tokens=Ragged.from_lists([[UNK_ID]] * len(passage_texts)),
            positives=positives,
            candidates=candidates,
            **extra,
        )

    def tokenized(self, tokenizer: Tokenizer, workers: int = 1, name: str | None = None, passage_tokens: Ragged | None = None) -> "PreparedSplit":
        """The split with its queries and passages tokenized (``workers`` processes; progress bars labelled with
        ``name`` where given); ``passage_tokens``: its passages' tokens, already made (another split of one corpus)."""
        if passage_tokens is None:
            passage_tokens = Ragged(*tokenizer.encode_ragged(self.passage_texts, tokenizer.max_passage_len, workers, name and f"Tokenizing {name} passages"))
        return replace(
            self,
            query_tokens=Ragged(*tokenizer.encode_ragged(self.query_texts, tokenizer.max_query_len, workers, name and f"Tokenizing {name} queries")),
            passage_tokens=passage_tokens,
        )

    @property
    def num_queries(self) -> int:
        return len(self.query_texts)

    @property
    def num_passages(self) -> int:
        return len(self.passage_texts)

    def negatives(self) -> Ragged:
        """Each query's unselected candidates."""
        rows = []
        for q in range(self.num_queries):
            pos = set(self.positives[q].tolist())
            rows.append([p for p in self.candidates[q].tolist() if p not in pos])
        return Ragged.from_lists(rows)

    def relevance(self, rows) -> list:
        """What the metrics read for these query rows: each row's relevant passage ids, or {id: gain}
        where the relevance is graded."""
        if self.gains is None:
            return [self.positives[r] for r in rows]
        return [dict(zip(self.positives[r].tolist(), self.gains[r].tolist())) for r in rows]

    def evaluated_queries(self) -> np.ndarray:
        """Queries with at least one selected passage (the ones metrics are computed over)."""
        return np.flatnonzero(self.positives.lengths > 0)

    def save(self, path: Path) -> None:
        queries = pa.table(
            {
                "text": pa.array(self.query_texts, pa.string()),
                "input_ids": self.query_tokens.to_arrow(),
                "positives": self.positives.to_arrow(),
                "candidates": self.candidates.to_arrow(),
                **({"gains": self.gains.to_arrow()} if self.gains is not None else {}),
            }
        )
        passages = pa.table({"text": pa.array(self.passage_texts, pa.string()), "input_ids": self.passage_tokens.to_arrow()})
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            datasets.Dataset(InMemoryTable(queries)).save_to_disk(str(path / "queries"))
            datasets.Dataset(InMemoryTable(passages)).save_to_disk(str(path / "passages"))
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
        if self.query_ids is not None or self.passage_ids is not None:  # a collection's own ids (BEIR)
            (path / IDS).write_text(json.dumps({"query_ids": self.query_ids, "passage_ids": self.passage_ids}))

    @classmethod
    def load(cls, path: Path, passages_of: tuple[Path, "PreparedSplit"] | None = None) -> "PreparedSplit":
        """``passages_of``: (the folder another split was loaded from, that split); where this split's passages are
        the same (texts and tokens, compared in Arrow on the memory-mapped files), it shares that split's lists
        instead of reading them again (a BEIR folder's splits all rank one corpus: held once, not once a split)."""
        queries = datasets.load_from_disk(str(path / "queries")).data
        passages = datasets.load_from_disk(str(path / "passages")).data
        if passages_of is not None and _same_passages(passages, datasets.load_from_disk(str(passages_of[0] / "passages")).data):
            passage_texts, passage_tokens = passages_of[1].passage_texts, passages_of[1].passage_tokens
        else:
            passage_texts, passage_tokens = passages.column("text").to_pylist(), Ragged.from_arrow(passages.column("input_ids"))
        return cls(
            query_texts=queries.column("text").to_pylist(),
            query_tokens=Ragged.from_arrow(queries.column("input_ids")),
            passage_texts=passage_texts,
            passage_tokens=passage_tokens,
            positives=Ragged.from_arrow(queries.column("positives")),
            candidates=Ragged.from_arrow(queries.column("candidates")),
            gains=Ragged.from_arrow(queries.column("gains"), np.float64) if "gains" in queries.column_names else None,
            **(json.loads((path / IDS).read_text()) if (path / IDS).is_file() else {}),
        )


def _same_passages(a, b) -> bool:
    """Whether two saved passage tables hold the same texts and tokens (Arrow's comparison: no Python objects)."""
    return a.num_rows == b.num_rows and all(a.column(name).equals(b.column(name)) for name in ("text", "input_ids"))
