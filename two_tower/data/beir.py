"""BEIR-format collections: the format IR people exchange test collections in.

```
DIR/corpus.jsonl        {"_id": ..., "title": ..., "text": ...} a line
DIR/queries.jsonl       {"_id": ..., "text": ...} a line
DIR/qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score, after a header line
```

A document is ``title + " " + text`` (stripped), as BEIR's own evaluation joins them. A judgement with
score > 0 is relevant, with the score as its gain in nDCG (graded, as trec_eval computes it); score 0
is judged not relevant. Queries without a relevant document in the split are not evaluated (a warning counts
those judged only not relevant: BEIR's own evaluation averages them in as 0). Bad lines
(not JSON, no ``_id`` or an empty id, no text, non-integer score, unknown ids) are skipped and counted per reason; a
missing file is one clear error.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from two_tower.core.atomic import not_a_file
from two_tower.core.skipped import Skipped
from two_tower.data.jsonl import UnreadableRow, read_jsonl
from two_tower.core.errors import BeirError

log = logging.getLogger(__name__)

CORPUS, QUERIES, QRELS = "corpus.jsonl", "queries.jsonl", "qrels"
INTEGER = re.compile(r"[+-]?[0-9]+")  # a qrels score: ASCII digits
MAX_SCORE = 2**31 - 1  # trec_eval and pytrec_eval read a score as a C int (gains are float64, which hold every one exactly)


def is_beir_folder(path) -> bool:
    # a corpus.jsonl that is a folder or a link to nothing makes it one too, said as such (it was read as MS MARCO shards: "no test-*.parquet")
    return path is not None and os.path.lexists(Path(path).expanduser() / CORPUS)


@dataclass
class BeirCollection:
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> {corpus id: score}
    skipped: dict[str, Counter] = field(default_factory=dict)  # file -> reason -> count
    # query id -> {document id: score} for relevant documents that are not in the corpus (or have no usable
    # text): never retrieved, but counted as BEIR / pytrec_eval count them (in nDCG's ideal ranking and
    # recall's denominator), so a query judged only on such documents scores 0 instead of being left out
    unlisted: dict[str, dict[str, int]] = field(default_factory=dict)
    # query id -> the documents in the corpus its judgements call not relevant (score <= 0), in qrels order: a training
    # query's unselected candidates (what negatives=random draws), as an MS MARCO row's unselected passages are
    not_relevant: dict[str, list[str]] = field(default_factory=dict)

    def relevant(self) -> dict[str, dict[str, int]]:
        """{query id: {document id: score > 0}} of every evaluated query, documents outside the corpus included (BEIR's
        and pytrec_eval's qrels, for a scorer such as ranx: without ``unlisted``, scripts scored relevant documents that
        are not in the corpus as absent, which raised their nDCG and recall, and left out queries judged only on them)."""
        return {q: {d: g for d, g in {**self.qrels.get(q, {}), **self.unlisted.get(q, {})}.items() if g > 0} for q in self.query_ids}


def _no_document(root: Path, skipped: Skipped) -> str:
    """The error of a corpus none of whose lines is usable, with why each was skipped (logged after the error, so
    never shown: an `_id` written as 1.0 gave "no usable document" alone; a probe)."""
    return f"{root / CORPUS}: no usable document" + (f"; skipped {skipped}" if skipped else " (the file holds no line)")


def _jsonl(path: Path, skipped: Skipped):
    """(line number, row) of each usable line: a JSON object with an ``_id``."""
    if not path.is_file():
        raise BeirError(_no_file(path))
    for number, row in read_jsonl(path, numbered=True):
        if isinstance(row, UnreadableRow):  # not UTF-8 or not JSON: the same reasons as every jsonl reader
            skipped.skip(row.reason, number)
            continue
        # an integer id is read as its digits; true (a bool, an int to Python) is no id, as 1.0 and objects are not
        if not isinstance(row, dict) or not isinstance(row.get("_id"), (str, int)) or isinstance(row["_id"], bool) or str(row["_id"]).strip() == "":
            skipped.skip("no_id", number)
            continue
        yield number, row


def _text(row: dict, title: bool) -> str:
    parts = [row.get("title") if title else None, row.get("text")]
    return " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())


def _strings(row: dict, title: bool) -> bool:
    """Whether the row's text (and title) are strings or absent: a number or a list is not read as a text."""
    return all(row.get(k) is None or isinstance(row[k], str) for k in (("title", "text") if title else ("text",)))


def _read_corpus(root: Path, skipped: Skipped) -> dict[str, str]:
    """{id: title and text joined} of the folder's corpus.jsonl, unusable lines counted in ``skipped`` (a
    repeated ``_id``: the first line's text is kept)."""
    corpus: dict[str, str] = {}
    for number, row in _jsonl(root / CORPUS, skipped):
        text = _text(row, title=True)
        if not _strings(row, title=True):
            skipped.skip("text_not_a_string", number)
        elif not text:
            skipped.skip("empty_text", number)
        elif str(row["_id"]) in corpus:
            skipped.skip("duplicate_id", number)
        else:
            corpus[str(row["_id"])] = text
    return corpus


def load_beir_corpus(path) -> tuple[list[str], list[str]]:
    """The ids and texts of a BEIR folder's corpus alone (what ``index.py`` needs: no queries or qrels)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BeirError(f"data.path={root}: no such folder")
    if not (root / CORPUS).is_file():
        raise BeirError(_no_file(root / CORPUS))
    skipped = Skipped()
    corpus = _read_corpus(root, skipped)
    if not corpus:
        raise BeirError(_no_document(root, skipped))
    if skipped:
        log.warning("%s: skipped %s", root / CORPUS, skipped)
    return list(corpus), list(corpus.values())


def load_beir(path, split: str = "test", for_training: bool = False) -> BeirCollection:
    """The folder's corpus, the queries ``split``'s qrels judge and their judgements. ``for_training``: only how
    judgements of documents absent from the corpus are reported (a training split leaves them out; an evaluated one
    counts them as relevant and never retrieved)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BeirError(f"data.path={root}: no such folder")
    skipped = {CORPUS: Skipped(), QUERIES: Skipped(), f"{QRELS}/{split}.tsv": Skipped()}
    corpus = _read_corpus(root, skipped[CORPUS])
    queries: dict[str, str] = {}
    for number, row in _jsonl(root / QUERIES, skipped[QUERIES]):
        text = _text(row, title=False)
        if not _strings(row, title=False):
            skipped[QUERIES].skip("text_not_a_string", number)
        elif not text:
            skipped[QUERIES].skip("empty_text", number)
        elif str(row["_id"]) in queries:
            skipped[QUERIES].skip("duplicate_id", number)
        else:
            queries[str(row["_id"])] = text
    qrels, judged_not_relevant = _read_qrels(root / QRELS / f"{split}.tsv", queries, skipped[f"{QRELS}/{split}.tsv"])
    if not corpus:
        raise BeirError(_no_document(root, skipped[CORPUS]))
    if not queries:  # said as such: the qrels error below blamed its lines (unknown_query) and never named queries.jsonl
        raise BeirError(f"{root / QUERIES}: no usable query" + (f"; skipped {skipped[QUERIES]}" if skipped[QUERIES] else " (the file holds no line)"))
    unlisted = {q: {c: g for c, g in judged.items() if c not in corpus} for q, judged in qrels.items()}
    unlisted = {q: docs for q, docs in unlisted.items() if docs}
    qrels = {q: {c: g for c, g in judged.items() if c in corpus} for q, judged in qrels.items()}
    if not any(qrels.values()):
        lines = skipped[f"{QRELS}/{split}.tsv"]
        raise BeirError(f"{root / QRELS / f'{split}.tsv'}: no query with a relevant document in the corpus"
                        + (f" (lines skipped: {lines}; a line is query-id<TAB>corpus-id<TAB>score)" if lines else ""))
    for name, counts in skipped.items():
        if counts:
            log.warning("%s: skipped %s", root / name, counts)
    if unlisted:
        log.warning("%s: %d relevance judgements name documents not in the corpus (or without a usable text): %s",
                    root / QRELS / f"{split}.tsv", sum(map(len, unlisted.values())),
                    "left out of training" if for_training else "counted as relevant and never retrieved, as BEIR scores them")
    query_ids = [q for q in queries if qrels.get(q) or unlisted.get(q)]
    qrels = {q: qrels.get(q, {}) for q in query_ids}
    not_relevant: dict[str, list[str]] = {}
    for qid, cid in judged_not_relevant:
        if qid in qrels and cid in corpus:
            not_relevant.setdefault(qid, []).append(cid)
    return BeirCollection(list(corpus), list(corpus.values()), query_ids, [queries[q] for q in query_ids], qrels, skipped, unlisted,
                          not_relevant)


def check_files(path, split: str) -> None:
    """Before any work on it: the folder's corpus, queries and ``split``'s qrels exist (BeirError naming the
    first that does not)."""
    root = Path(path).expanduser()
    for file in (root / CORPUS, root / QUERIES):
        if not file.is_file():
            raise BeirError(_no_file(file))
    qrels = root / QRELS / f"{split}.tsv"
    if not qrels.is_file():
        raise BeirError(_no_qrels(qrels))


def _no_file(path: Path) -> str:
    return f"{path}: {not_a_file(path) or 'no such file'} (a BEIR folder has {CORPUS}, {QUERIES} and {QRELS}/<split>.tsv)"


def _no_qrels(path: Path) -> str:
    problem = not_a_file(path)
    if problem:  # it said "no such qrels file (split=test; this folder has ['test'])" of a folder qrels/test.tsv
        return f"{path}: {problem} (split={path.stem})"
    available = sorted(p.stem for p in path.parent.glob("*.tsv") if p.is_file()) if path.parent.is_dir() else []
    return f"{path}: no such qrels file (split={path.stem}; this folder has {available or 'none'})"


def _read_qrels(path: Path, queries: dict, skipped: Skipped) -> tuple[dict[str, dict[str, int]], list[tuple[str, str]]]:
    """({query id: {document id: score}} of the relevant judgements, [(query id, document id)] of the judgements
    of a document as not relevant, in file order); each pair's last line counts."""
    if not path.is_file():
        raise BeirError(_no_qrels(path))
    qrels: dict[str, dict[str, int]] = {}
    unjudged: dict[tuple[str, str], None] = {}  # pairs judged 0 (not relevant) so far, in file order
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                fields = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n").split("\t")  # a BOM may open it
            except UnicodeDecodeError:
                skipped.skip("not_utf8", number)
                continue
            if any("\0" in f for f in fields):  # never in an id or a score: a UTF-16 file, binary bytes (an id "d\x002" was judged, a probe)
                skipped.skip("nul_byte", number)
                continue
            if number == 1 and fields[:2] == ["query-id", "corpus-id"]:
                continue
            if fields == [""]:
                continue
            if len(fields) != 3:
                skipped.skip("not_3_columns", number)
                continue
            qid, cid, score = fields
            if not qid.strip() or not cid.strip():  # "q1<TAB><TAB>1" named a document "": relevant, never retrieved, scored
                skipped.skip("no_id", number)
                continue
            if not INTEGER.fullmatch(score.strip()):  # int() also reads "1_0" as 10 and other scripts' digits ("١"): a probe
                skipped.skip("score_not_integer", number)
                continue
            score = int(score)
            if abs(score) > MAX_SCORE:  # a gain of 400 digits was a traceback (OverflowError: int too large to convert to float)
                skipped.skip("score_too_large", number)
                continue
            if qid not in queries:
                skipped.skip("unknown_query", number)
            else:  # a document absent from the corpus is still judged: a relevant one is a miss for every system
                judged = qrels.setdefault(qid, {})
                if cid in judged or (qid, cid) in unjudged:  # the same pair again: the last line wins, as BEIR's loader reads it
                    skipped.skip("repeated_judgement", number)
                if score > 0:
                    judged[cid] = score
                    unjudged.pop((qid, cid), None)
                else:
                    judged.pop(cid, None)
                    unjudged[(qid, cid)] = None
    not_relevant = sum(1 for judged in qrels.values() if not judged)
    if not_relevant:  # BEIR's evaluation (pytrec_eval over every query of the qrels) averages them in as 0
        log.warning("%s: %d queries judged only not relevant (score <= 0) are left out of the averages; BEIR's own "
                    "evaluation counts each as 0, so its figures on this split are lower by that share", path, not_relevant)
    return {qid: judged for qid, judged in qrels.items() if judged}, list(unjudged)


def prepared_split(collection: BeirCollection, for_training: bool = False):
    """The collection as a ``PreparedSplit`` (untokenized) whose passages are the whole corpus.

    To evaluate: graded gains, no candidate lists (no ``rerank_mrr@10``), and relevant documents absent from the
    corpus kept as rows past its end (no ranking holds them; the metrics count them, as BEIR does).
    ``for_training``: each query's relevant documents in the corpus are its positives (a query with none is left
    out; every positive weighs the same), no gains; its candidate list is its positives and the documents judged not
    relevant to it (score <= 0; what ``negatives=random`` draws); the corpus is what negatives are mined from."""
    from two_tower.data.prepared import PreparedSplit, Ragged

    position = {cid: i for i, cid in enumerate(collection.corpus_ids)}
    if for_training:
        rows = [(qid, text, [position[c] for c in collection.qrels[qid]]) for qid, text in zip(collection.query_ids, collection.query_texts)]
        rows = [row for row in rows if row[2]]
        candidates = [row[2] + [position[c] for c in collection.not_relevant.get(row[0], [])] for row in rows]
        return PreparedSplit.untokenized([row[1] for row in rows], collection.corpus_texts, Ragged.from_lists([row[2] for row in rows]),
                                         Ragged.from_lists(candidates), query_ids=[row[0] for row in rows], passage_ids=collection.corpus_ids)
    # relevant documents absent from the corpus get rows past its end: no ranking holds them, the metrics count them
    absent = list(dict.fromkeys(c for q in collection.query_ids for c in collection.unlisted.get(q, {})))
    position.update({cid: len(collection.corpus_ids) + i for i, cid in enumerate(absent)})
    positives, gains = [], []
    for qid in collection.query_ids:
        judged = {**collection.qrels[qid], **collection.unlisted.get(qid, {})}
        positives.append([position[c] for c in judged])
        gains.append([float(s) for s in judged.values()])
    return PreparedSplit.untokenized(
        collection.query_texts,
        collection.corpus_texts,
        Ragged.from_lists(positives),
        Ragged.from_lists([[] for _ in positives]),
        gains=Ragged(np.array([g for row in gains for g in row], dtype=np.float64), Ragged.from_lists(positives).offsets),
        query_ids=collection.query_ids,
        passage_ids=collection.corpus_ids + absent,  # the absent ones name qrels.txt's lines only
    )
