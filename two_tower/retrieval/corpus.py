"""The passages to index: the unique passages of a data split, or a passage file (parquet, jsonl, tsv).

Ids are strings. A split's passages are numbered in first-appearance order (the split's passage index,
the same numbering evaluation and TREC run files use). A file brings its own ids, which must be unique;
rows with a missing or empty text are skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from two_tower.data import msmarco
from two_tower.data.beir import is_beir_folder, load_beir_corpus
from two_tower.data.jsonl import UnreadableRow, read_jsonl
from two_tower.data.prepared import PreparedSplit
from two_tower.core.atomic import not_a_file
from two_tower.core.skipped import Skipped
from two_tower.core.errors import ConfigError, CorpusError

log = logging.getLogger(__name__)

def _parquet_frame(path: Path) -> pd.DataFrame:
    """A parquet file as pandas reads it, but for its integer columns: nullable integers, where pandas made a column
    holding a null floats (integer ids [1, null, 3] were refused as 'not a string or an integer: 1.0', row 2's
    missing id unnamed; an id past 2**53 was rounded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    nullable = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(),
                pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(), pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype()}
    return pq.read_table(path).to_pandas(types_mapper=nullable.get)


READERS = {
    ".parquet": _parquet_frame,
    ".jsonl": lambda p: _jsonl_frame(p),
    ".tsv": lambda p: _tsv_frame(p),
}


# The first bytes of compressed files, which a text reader would read as a few lines of garbage.
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"PK\x03\x04": "zip", b"\x28\xb5\x2f\xfd": "zstd"}


def _tsv_frame(path: Path) -> pd.DataFrame:
    """A tsv passage file read line by line (as the BEIR qrels and every jsonl reader read theirs): lines that
    are not UTF-8, hold a NUL byte or are not two tab-separated fields are skipped and counted by reason, the first of each named;
    blank lines are passed over; a BOM may open the file; lines end in \\n or \\r\\n, or, in a file with no \\n at the
    start, in \\r. A lone \\r inside a line of a \\n file is the text's (it ended the line: a stray one in a passage made
    the rest of it a passage of its own, with whatever id followed, and line numbers ran past the editor's)."""
    ids, texts, numbers, skipped = [], [], [], Skipped()
    with open(path, "rb") as f:
        start = f.read(1 << 20)
    lone_cr = b"\r" in start and b"\n" not in start
    # surrogateescape: bytes that are not UTF-8 come through as lone surrogates, so one such line is skipped
    with open(path, encoding="utf-8", errors="surrogateescape", newline=None if lone_cr else "\n") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\n").removesuffix("\r")
            if number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            if not_utf8(line):
                reason = "not_utf8"
            elif "\0" in line:  # never in text: a UTF-16 file (every line's ids and texts were read with NULs in them) or binary bytes
                reason = "nul_byte"
            else:
                fields = line.split("\t")
                if len(fields) == 2:
                    ids.append(fields[0])
                    texts.append(fields[1])
                    numbers.append(number)
                    continue
                reason = "not_two_fields"
            skipped.skip(reason, number)
    check_skipped(path, skipped, len(ids), "a line is id<TAB>text")
    return pd.DataFrame({0: ids, 1: texts}, dtype=object, index=pd.Index(numbers, name=LINE))


def _jsonl_frame(path: Path) -> pd.DataFrame:
    """A jsonl passage file read line by line: lines that are not UTF-8, not JSON or not an object are
    skipped and counted by reason (as in every other jsonl reader), the first of each named, not a failure of
    the whole file; a file of which no line is read (or most are not) is one error saying so."""
    rows, numbers, skipped = [], [], Skipped()
    for number, row in read_jsonl(path, numbered=True):  # the file's line numbers (blank lines are not rows)
        if isinstance(row, UnreadableRow):
            reason = row.reason
        elif not isinstance(row, dict):
            reason = "row_not_a_mapping"
        else:
            rows.append(row)
            numbers.append(number)
            continue
        skipped.skip(reason, number)
    check_skipped(path, skipped, len(rows), "a line is one JSON object")
    if not rows:  # said as such: it said "missing column(s) ['id', 'text']; found []"
        raise CorpusError(f"corpus={path}: the file holds no line; a line is one JSON object")
    return pd.DataFrame(rows, dtype=object, index=pd.Index(numbers, name=LINE))


# The index name of the text readers' frames, whose index is each row's line in the file (a parquet frame's is its row)
LINE = "line"


def place(frame: pd.DataFrame, position: int) -> tuple[str, int]:
    """Where the frame's row at ``position`` is in its file: ("line", N) (tsv, jsonl: blank and skipped lines counted),
    else ("row", N) (parquet; from 1)."""
    return ("line", int(frame.index[position])) if frame.index.name == LINE else ("row", position + 1)


def where(frame: pd.DataFrame, position: int) -> str:
    """``place`` as text: ``line N`` or ``row N``."""
    return "%s %d" % place(frame, position)


def check_skipped(path: Path, skipped: Skipped, read: int, what: str) -> None:
    """Say the lines a corpus reader skipped (the first of each reason named); refuse the file when no line,
    or fewer than half of them, could be read: it is not such a file (another format, compressed, ...), and an
    index of its few readable lines would be garbage."""
    if not skipped:
        return
    total = read + sum(skipped.values())
    if read == 0:
        raise CorpusError(f"corpus={path}: no line read: every line was skipped {skipped}; {what}")
    if read < total / 2:
        raise CorpusError(f"corpus={path}: only {read} of {total} lines read, the others skipped {skipped}; {what}")
    log.warning("corpus=%s: skipped %s: %s", path, skipped, what)


def _missing(value) -> bool:
    """Whether a cell holds no value: None, nan, pd.NA, NaT (not a list or an array, which pd.isna reads element-wise)."""
    try:
        return bool(pd.isna(value)) if pd.api.types.is_scalar(value) or value is None else False
    except (TypeError, ValueError):
        return False


@dataclass
class Passages:
    ids: list[str]
    texts: list[str]
    source: dict = field(default_factory=dict)  # where they came from, recorded in the index manifest

    def __len__(self) -> int:
        return len(self.ids)

    def texts_hash(self) -> str:
        digest = hashlib.sha1()
        for i, t in zip(self.ids, self.texts):
            digest.update(f"{i}\t{t}\n".encode())
        return digest.hexdigest()[:16]


def load_split_rows(split: str, path: str | None, hub_name: str, hub_config: str):
    """Validated rows of an evaluation split (rows without a selected passage still bring their passages)."""
    rows, report = msmarco.validate_rows(msmarco.load_split(split, path, hub_name, hub_config), split, for_training=False)
    # skipped rows are a warning, as train.py says them: the data is not what it says
    log.log(logging.WARNING if report.skipped else logging.INFO, report.summary())
    return rows


def split_passages(split: str, path: str | None, hub_name: str, hub_config: str) -> Passages:
    """A split's unique passages numbered 0.. in first-appearance order; a BEIR folder's whole corpus
    with its own ids (title and text joined as BEIR does)."""
    if is_beir_folder(path):  # the corpus alone: every split of the folder ranks it, and indexing needs no qrels
        ids, texts = load_beir_corpus(path)
        return Passages(ids, texts, {"kind": "beir", "path": str(Path(path).resolve())})
    rows = load_split_rows(split, path, hub_name, hub_config)
    texts = PreparedSplit.from_rows(rows).passage_texts
    source = {"kind": "split", "split": split, "path": str(Path(path).resolve()) if path else f"hub:{hub_name}/{hub_config}"}
    return Passages([str(i) for i in range(len(texts))], texts, source)


def not_utf8(value: bytes | str) -> bool:
    """Bytes that are not UTF-8, or text read from such bytes (Python keeps them as lone surrogates in argv
    and a text stdin)."""
    try:
        value.decode("utf-8") if isinstance(value, bytes) else value.encode("utf-8")
    except UnicodeError:
        return True
    return False


def check_columns(id_column, text_column) -> None:
    """``corpus_columns.id`` and ``.text``: two different non-empty names (null, a number or the same name for both was an
    AttributeError traceback in the read, after the checkpoint had loaded)."""
    for key, value in (("id", id_column), ("text", text_column)):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"corpus_columns.{key}={json.dumps(value)}: must be a column's name (text)")
    if id_column == text_column:
        raise ConfigError(f"corpus_columns.id and corpus_columns.text are both {id_column!r}: name two different columns")


def read_corpus_file(path: str | Path, id_column: str = "id", text_column: str = "text") -> Passages:
    """Passages from a parquet or jsonl file with ``id_column`` and ``text_column``, or a tsv of
    ``id<TAB>text`` lines (MS MARCO's collection.tsv layout; a header line naming the columns is skipped)."""
    check_columns(id_column, text_column)
    path = Path(path).expanduser()
    if not path.is_file():  # a folder or a link to nothing said as such (it said "no such file")
        hint = f"; corpus= takes a .tsv, .jsonl or .parquet file (a BEIR folder: data.path={path})" if path.is_dir() else ""
        raise CorpusError(f"corpus={path}: {not_a_file(path) or 'no such file'}{hint}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise CorpusError(f"corpus={path}: unsupported file type {path.suffix!r}; use one of {sorted(READERS)}")
    with open(path, "rb") as f:
        head = f.read(6)
    packed = next((name for magic, name in COMPRESSED.items() if head.startswith(magic)), None)
    if packed and path.suffix.lower() != ".parquet":
        raise CorpusError(f"corpus={path}: a {packed} file, not plain {path.suffix[1:]} text; decompress it first")
    try:
        frame = reader(path)
    except CorpusError:
        raise
    except Exception as err:
        raise CorpusError(f"corpus={path}: could not read it ({type(err).__name__}: {' '.join(str(err).split())})") from err
    if path.suffix.lower() == ".tsv":
        frame.columns = [id_column, text_column]
        header = bool(len(frame)) and [str(v).strip().lower() for v in frame.iloc[0]] == [id_column.lower(), text_column.lower()]  # any case
        if header:
            frame = frame.iloc[1:]
        if not len(frame):  # said as such: it said "no passage with a non-empty text"
            raise CorpusError(f"corpus={path}: " + ("the file holds its header line alone" if header else "the file holds no line") + "; a line is id<TAB>text")
    if not len(frame):  # a parquet file of no row: said as such (it said "no passage with a non-empty text")
        raise CorpusError(f"corpus={path}: the file holds no row")
    missing = [c for c in (id_column, text_column) if c not in frame.columns]
    if missing:
        raise CorpusError(
            f"corpus={path}: missing column(s) {missing}; found {list(frame.columns)}. "
            "Name the columns with corpus_columns.id=... corpus_columns.text=..."
        )
    raw_ids = frame[id_column].tolist()
    # JSON gives any value, parquet any column type: an object, a list, true or 1.0 became the id "{'a': 1}", "True", "1.0" (a
    # probe; a parquet column of float ids, as pandas writes an integer column with a missing value, gave the ids "0.0", "1.0", ...)
    typed = [i for i, v in enumerate(raw_ids) if not _missing(v) and (isinstance(v, bool) or not isinstance(v, (str, int)))]
    if typed:
        value = raw_ids[typed[0]]
        shown = json.dumps(value.tolist() if hasattr(value, "tolist") else value, default=repr)[:80]
        raise CorpusError(f"corpus={path}: {len(typed)} row(s) have an {id_column!r} that is not a string or an integer (the first: "
                          f"{where(frame, typed[0])}, {shown}); every id is a string or an integer")
    # pd.isna: None, nan, and pandas' own missing values (a nullable Int64 column's <NA> became the id '<NA>')
    ids = ["" if _missing(v) else str(v).strip() for v in raw_ids]
    if "" in ids:  # where in the file (it said "row 51 of the rows read", not the line, once lines had been skipped: a probe)
        raise CorpusError(f"corpus={path}: {ids.count('')} row(s) have no {id_column!r} (the first: {where(frame, ids.index(''))}); "
                          "every passage needs an id")
    raw = frame[text_column].tolist()
    texts = [t.strip() if isinstance(t, str) else "" for t in raw]
    keep = [i for i, t in enumerate(texts) if t]
    if len(keep) < len(texts):
        # A number or a list where the text should be (jsonl) is not read as a text; counted apart.
        other = sum(1 for t in raw if not isinstance(t, str) and not _missing(t))
        detail = f" ({other} of them not a string)" if other else ""
        first = next(i for i, t in enumerate(texts) if not t)
        log.warning("corpus=%s: skipped %d of %d rows with a missing or empty text%s (the first: id %r, %s)", path, len(texts) - len(keep),
                    len(texts), detail, ids[first], where(frame, first))
    ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]
    if not ids:
        raise CorpusError(f"corpus={path}: no passage with a non-empty text")
    duplicated = pd.Series(ids).value_counts()
    duplicated = duplicated[duplicated > 1]
    if len(duplicated):  # with the lines (or rows) where the first ones stand, found only now (not for every passage)
        at: dict[str, list[int]] = {i: [] for i in duplicated.head(3).index}
        for i, position in zip(ids, keep):
            if i in at and len(at[i]) < 3:
                at[i].append(place(frame, position)[1])
        kind = place(frame, keep[0])[0]
        examples = ", ".join(f"{i!r} x{n} ({kind}s {', '.join(map(str, at[i]))}{', ...' if n > 3 else ''})" for i, n in duplicated.head(3).items())
        raise CorpusError(f"corpus={path}: {len(duplicated)} id(s) appear more than once ({examples}); ids must be unique")
    return Passages(ids, texts, {"kind": "file", "path": str(path.resolve())})
