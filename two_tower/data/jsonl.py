"""JSON-lines files read line by line: a line that is not UTF-8 or not JSON is one bad row, counted and
skipped like any other bad row, never an exception that ends the run (one stray byte in a shard of a
million rows must not cost the other rows)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class UnreadableRow:
    """A line that could not be read as a JSON value; ``reason`` is ``not_utf8``, ``not_json``, ``repeated_key`` (an
    object giving a key twice) or ``nested_too_deep`` (past Python's recursion limit)."""

    reason: str
    path: str
    line: int


def read_jsonl(path: str | Path, digest=None, numbered: bool = False):
    """Yield each non-blank line of ``path`` as its JSON value, or an ``UnreadableRow``; ``digest`` (a
    hashlib object) is updated with the raw bytes. ``numbered``: (line number, value) pairs."""
    for number, value in _numbered_jsonl(path, digest):
        yield (number, value) if numbered else value


def _numbered_jsonl(path: str | Path, digest=None):
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if digest is not None:
                digest.update(raw)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark may open the file
            except UnicodeDecodeError:
                yield number, UnreadableRow("not_utf8", str(path), number)
                continue
            if not text.strip():  # a byte-order mark alone: a blank line (it was a line not JSON)
                continue
            try:
                value = json.loads(text, object_pairs_hook=_once)
            except RepeatedKey:
                yield number, UnreadableRow("repeated_key", str(path), number)
                continue
            except RecursionError:  # arrays or objects nested past Python's recursion limit: a BEIR file's traceback (a probe)
                yield number, UnreadableRow("nested_too_deep", str(path), number)
                continue
            except ValueError:
                yield number, UnreadableRow("not_json", str(path), number)
                continue
            if _SURROGATE_ESCAPE.search(raw) and not _encodes(value):
                # JSON may escape half of a surrogate pair ("\ud800"): Python reads it into a string that no
                # UTF-8 writer takes (pyarrow's traceback when the split was saved, after its tokenization)
                yield number, UnreadableRow("not_utf8", str(path), number)
                continue
            yield number, value


class RepeatedKey(ValueError):
    pass


def _once(pairs: list) -> dict:
    """An object whose keys are each given once: json.loads keeps the last of a repeated key, so {"_id": "a", "_id": "b"}
    or {"query": "x", "query": "y"} was read as one of two rows without a word (a probe); such a line is a bad row."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise RepeatedKey
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodes(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class JsonlRows(list):
    """The rows of some jsonl files, in order, with ``_fingerprint`` (a hash of their bytes, the cache key
    part that a ``datasets.Dataset`` would give)."""

    @classmethod
    def read(cls, files: list[Path]) -> "JsonlRows":
        digest = hashlib.sha1()
        rows = cls()
        for path in files:
            digest.update(str(path.name).encode() + b"\0")
            rows.extend(read_jsonl(path, digest))
        rows._fingerprint = f"jsonl-{digest.hexdigest()[:20]}"
        return rows

    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self:
            if isinstance(row, dict):
                seen.update(dict.fromkeys(row))
        return list(seen)
