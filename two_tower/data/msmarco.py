"""Load MS MARCO v1.1 rows (Hugging Face Hub or a local folder of parquet shards) and validate them.

A v1.1 row has a ``query`` string and ``passages`` = {``passage_text``: [...], ``is_selected``: [...]}.
``validate_rows`` keeps the rows a two-tower model can learn from and counts the others by reason.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import datasets
import pyarrow.parquet as pq

from two_tower.core.cache import content_digest
from two_tower.data.jsonl import JsonlRows, UnreadableRow
from two_tower.data.tokenizer import split_words
from two_tower.core.errors import DataSourceError

log = logging.getLogger(__name__)

HUB_DATASET = "microsoft/ms_marco"
HUB_CONFIG = "v1.1"
LOCAL_EXTENSIONS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _set_hub_offline() -> None:
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def offline_unless_hub_reachable(what: str) -> None:
    """Probe the Hub with a short timeout; if it cannot be reached, read ``what`` from the local Hugging Face cache
    only (offline mode), at once, instead of retrying for minutes on a machine with no network."""
    if not datasets.config.HF_HUB_OFFLINE and not _hub_reachable():
        log.warning("The Hugging Face Hub is unreachable; trying the local cache for %s", what)
        _set_hub_offline()


def load_hub_split(split: str, name: str = HUB_DATASET, config: str = HUB_CONFIG) -> datasets.Dataset:
    """Load one split from the Hub, or from the local HF cache when the Hub cannot be reached.

    Never hangs on a machine with no network: the Hub is probed with a short timeout first.
    """
    offline_unless_hub_reachable(f"{name} ({config})")
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises several types for "not cached, no network"
        raise DataSourceError(
            f"Could not load {name} ({config}) split '{split}' from the Hugging Face Hub or its local "
            f"cache: {type(err).__name__}: {' '.join(str(err).split())}. Alternatives: point at a local folder of the same "
            "parquet shards with `data.path=DIR` (e.g. data.path=../shared/data/marco7k); train.py also trains "
            "offline on generated rows with `data=synthetic`."
        ) from err


def has_local_split(path: str | os.PathLike, split: str) -> bool:
    """Whether the local folder ``path`` holds shards of ``split`` (e.g. ``test-*.parquet``)."""
    root = Path(path).expanduser()
    return root.is_dir() and any(f.is_file() and f.suffix in LOCAL_EXTENSIONS for f in root.rglob(f"{glob.escape(split)}-*"))


def local_split_files(path: str | os.PathLike, split: str) -> list[Path]:
    """The files of ``split`` in a folder of hub-style shards (``{split}-*.parquet`` or ``.jsonl``), or the
    one file ``path``; DataSourceError naming what the folder holds when there are none."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataSourceError(f"data.path={root} does not exist")
    if root.is_file():
        files = [root]
    else:
        # {split}-* only, as has_local_split and the docs say: {split}* also read train_heldout-*.parquet into train
        # and val-* beside validation-* into val (a probe)
        named = [f for f in root.rglob(f"{glob.escape(split)}-*") if f.suffix in LOCAL_EXTENSIONS]
        # a shard's name on a link to nothing (a disk not mounted) or on a folder: it was left out without a word
        unreadable = sorted(f for f in named if not f.is_file())
        if unreadable:
            what = "a folder" if unreadable[0].is_dir() else "a link to nothing" if unreadable[0].is_symlink() else "not a file"
            raise DataSourceError(f"{unreadable[0]}: a shard of the '{split}' split that is {what}"
                                  + (f" ({len(unreadable)} such: {', '.join(f.name for f in unreadable[:5])})" if len(unreadable) > 1 else ""))
        files = sorted(named)
        check_shard_numbers(root, split, files)
        if not files:
            found = sorted(p.name for p in root.iterdir())[:10]
            hint = (f"it has a train split but no {split} split: add {split}-*.parquet shards, or name another split of it "
                    f"(train.py: data.val_split=NAME; index.py, evaluate.py: split=NAME)" if split != "train" and has_local_split(root, "train")
                    else f"expected hub-style shards such as {split}-00000-of-00001.parquet")
            raise DataSourceError(f"No '{split}-*.parquet' (or .jsonl) shards in {root}; it holds {found}: {hint}")
        folders = sorted({str(f.parent.relative_to(root)) for f in files})
        if len(folders) > 1:  # e.g. an old/ copy beside the shards: its rows were merged in without a word
            log.warning("data.path=%s: the '%s' split's %d files are in %d folders (%s), all read as one split: %s", root, split,
                        len(files), len(folders), ", ".join(folders), ", ".join(str(f.relative_to(root)) for f in files[:6]))
    return files


SHARD_NUMBER = re.compile(r"-(\d+)-of-(\d+)$")  # hub-style shard names: validation-00000-of-00002.parquet


def check_shard_numbers(root: Path, split: str, files: list[Path]) -> None:
    """Warn of the shards that hub-style names say a split has and the folder lacks (train-00001-of-00002 alone: half
    the split was read as all of it, without a word). A warning, not an error: a shard may be left out on purpose."""
    numbered: dict[tuple[Path, int], set[int]] = {}
    for f in files:
        match = SHARD_NUMBER.search(f.stem)
        if match:
            numbered.setdefault((f.parent, int(match.group(2))), set()).add(int(match.group(1)))
    for (folder, count), present in sorted(numbered.items()):
        missing = sorted(set(range(count)) - present)
        if missing:
            log.warning("data.path=%s: the '%s' split's shard names say it has %d shards, and %d of them are not in %s (shard number %s): "
                        "the split is read without them", root, split, count, len(missing), folder,
                        ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else ""))


def check_not_a_json_array(files: list[Path]) -> None:
    """A .json shard written as one JSON array (json.dump of a list) is not JSON lines: say so. Read as lines, it lacked
    its columns (found []), or, written one row a line, kept its last row alone (the others end in a comma)."""
    for path in files:
        with open(path, "rb") as f:
            start = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if start.startswith(b"["):
            raise DataSourceError(f"{path}: one JSON array; a split file holds one JSON object a line (JSON lines), e.g. "
                                  f"jq -c '.[]' {path.name} > {path.stem}.jsonl")


def load_local_split(path: str | os.PathLike, split: str) -> datasets.Dataset:
    """Load ``split`` from a folder of hub-style shards (``{split}-*.parquet`` or ``.jsonl``) or one file."""
    files = local_split_files(path, split)
    kinds = {LOCAL_EXTENSIONS.get(f.suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise DataSourceError(
            f"{[str(f) for f in files]}: expected parquet or jsonl files of one kind, got suffixes "
            f"{sorted({f.suffix for f in files})}"
        )
    kind = kinds.pop()
    if kind == "parquet":
        check_same_schema(files)
    try:
        if kind == "json":  # read line by line: a bad line (not UTF-8, not JSON) is a skipped row, not a crash
            check_not_a_json_array(files)
            ds = JsonlRows.read(files)
            columns = ds.columns()
        else:
            rows = {f: pq.ParquetFile(f).metadata.num_rows for f in files}
            empty = [f for f, n in rows.items() if n == 0]
            if empty:  # datasets fails on a 0-row shard ("BatchSize must be greater than 0") and names every file
                if len(empty) == len(files):  # the error alone (a warning that they were left out came before it)
                    raise DataSourceError(f"data.path={Path(path).expanduser()}: every shard of the '{split}' split holds no rows")
                log.warning("data.path=%s: %d shard(s) of the '%s' split hold no rows, left out: %s", Path(path).expanduser(), len(empty), split,
                            ", ".join(f.name for f in empty[:5]))
                files = [f for f in files if rows[f]]
            # datasets keys its own cache by path and mtime, so a shard rewritten with the same mtime (a copy with
            # preserved times, touch -r) was read as its old rows, whatever this project's cache held. Its cache is
            # put in a folder named by the shards' content, which also identifies the data in this project's caches.
            digest = content_digest(files)
            ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train",
                                       cache_dir=str(Path(datasets.config.HF_DATASETS_CACHE) / "two_tower_local" / digest))
            expected = sum(rows[f] for f in files)
            if ds.num_rows != expected:
                raise DataSourceError(f"{Path(path).expanduser()}: datasets read {ds.num_rows} rows of the '{split}' split, the files hold {expected}")
            ds._fingerprint = digest
            columns = ds.column_names
    except DataSourceError:
        raise
    except Exception as err:
        raise DataSourceError(f"Could not read {[str(f) for f in files]}: {type(err).__name__}: {err}") from err
    missing = {"query", "passages"} - set(columns)
    if missing and not columns:  # empty files (no row, so no column): said as such, not as rows of other columns (a probe)
        raise DataSourceError(f"{', '.join(str(f) for f in files[:3])}: the '{split}' split's files hold no row")
    if missing:
        raise DataSourceError(
            f"{files[0]}: missing required column(s) {sorted(missing)}; MS MARCO v1.1 rows need "
            f"'query' and 'passages' (with passage_text and is_selected), found {columns}"
        )
    return ds


def load_split(split: str, path: str | None = None, hub_name: str = HUB_DATASET, hub_config: str = HUB_CONFIG):
    if path:
        return load_local_split(path, split)
    return load_hub_split(split, hub_name, hub_config)


# ---------------------------------------------------------------------------------------------------
# Row validation


@dataclass
class CleanRow:
    query: str
    passages: list[str]
    selected: list[bool]


@dataclass
class ValidationReport:
    split: str
    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    # rows an evaluation split keeps for the ranked corpus although they fail a training check, by reason (part
    # of kept); those with no selected passage are not scored, the others are
    corpus_only: Counter = field(default_factory=Counter)
    # where the first row skipped for each reason is: "FILE line N" for a line that could not be read, else "row N"
    # (its place among the split's rows, from 1)
    first: dict = field(default_factory=dict)

    def skip(self, reason: str, row) -> None:
        self.skipped[reason] += 1
        if reason not in self.first:
            self.first[reason] = f"{row.path} line {row.line}" if isinstance(row, UnreadableRow) else f"row {self.total}"

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items())) or "none"
        corpus = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.corpus_only.items()))
        # where the first of each reason is (it was kept but not said: evaluate.py and index.py named no row to look at)
        first = ", ".join(f"{self.first[reason]} ({reason})" for reason in sorted(self.skipped) if reason in self.first)
        return f"[{self.split}] kept {self.kept}/{self.total} rows; skipped by reason: {reasons}" + (f" (first at {first})" if first else "") + (
            f"; kept although not training rows: {corpus} (no_selected_passage ones are not scored)" if corpus else "")


def is_selected_flag(value) -> bool | None:
    """The one type rule for ``is_selected``, whatever the file format: a bool, or the integer 0 or 1.
    Anything else (``"1"``, ``1.0``, ``2``, None) is None: the row is skipped as ``bad_is_selected``,
    never guessed (a JSON reader may turn ``"1"`` into 1, a parquet column keeps it a string)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def check_row(row: dict) -> tuple[CleanRow | None, str | None]:
    """Return (clean row, reason). Never raises on malformed input.

    ``reason`` is None for a row fit for training. A malformed row gives (None, reason); a well-formed
    row whose passages are all selected or all unselected gives (row, reason) (see CORPUS_ONLY_REASONS).
    """
    if isinstance(row, UnreadableRow):
        return None, row.reason
    if not isinstance(row, dict):
        return None, "row_not_a_mapping"
    query = row.get("query")
    if not isinstance(query, str):
        return None, "query_not_a_string"
    if not query.strip():
        return None, "empty_query"
    passages = row.get("passages")
    if not isinstance(passages, dict):
        return None, "passages_missing"
    texts, flags = passages.get("passage_text"), passages.get("is_selected")
    if not isinstance(texts, (list, tuple)) or not isinstance(flags, (list, tuple)):
        return None, "passages_missing"
    if len(texts) != len(flags):
        return None, "length_mismatch"
    if not all(isinstance(t, str) for t in texts):
        return None, "passage_not_a_string"
    if not all(t.strip() for t in texts):
        return None, "empty_passage"
    selected = [is_selected_flag(f) for f in flags]
    if None in selected:
        return None, "bad_is_selected"
    clean = CleanRow(query.strip(), [t.strip() for t in texts], selected)
    if not split_words(query, unicode_words=True):
        # Punctuation, emoji, control or zero-width characters alone: the towers read nothing, and validation scored an
        # arbitrary ranking for it (search refuses such a query: EmptyQueryError; a probe). Not a training row; in an
        # evaluation split its passages stay in the ranked corpus and the query is not scored (no passage selected)
        return CleanRow(clean.query, clean.passages, [False] * len(clean.passages)), "query_without_a_word"
    if not any(clean.selected):
        return clean, "no_selected_passage"
    if all(clean.selected):
        return clean, "no_unselected_passage"
    chosen = {t for t, s in zip(clean.passages, clean.selected) if s}
    if all(t in chosen for t, s in zip(clean.passages, clean.selected) if not s):
        # every unselected passage is a selected one's text: one passage, so nothing to contrast it with
        return clean, "unselected_same_as_selected"
    return clean, None


# An evaluation split keeps these rows' passages in its corpus; its metrics skip queries with no positive.
CORPUS_ONLY_REASONS = {"no_selected_passage", "no_unselected_passage", "unselected_same_as_selected", "query_without_a_word"}


def check_same_schema(files: list[Path]) -> None:
    """Parquet shards of one split must share one schema: ``datasets`` casts every shard to the first one's,
    so a shard with ``is_selected`` as strings would be cast to numbers or fail whole, by file order."""
    def read_schema(path: Path):
        try:
            return pq.read_schema(path)
        except Exception as err:  # said here, in one line: datasets would log it twice at ERROR before failing
            raise DataSourceError(f"{path}: not a readable parquet file ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from err

    try:
        first = read_schema(files[0])
        for other in files[1:]:
            schema = read_schema(other)
            if not schema.equals(first):
                theirs, ours = dict(zip(first.names, first.types)), dict(zip(schema.names, schema.types))
                field = next((n for n in sorted(set(theirs) | set(ours)) if theirs.get(n) != ours.get(n)), "?")
                raise DataSourceError(f"{other}: its schema differs from {files[0]}'s (field {field}: {ours.get(field)} vs {theirs.get(field)}); shards of a split must share one")
    except DataSourceError:
        raise
    except Exception as err:  # not parquet at all: the reader below says so
        log.debug("schema check skipped: %s", err)


def _content(row: CleanRow) -> int:
    """A hash of what a row says (query, passages, labels), for telling a row repeated without its query_id."""
    return hash((row.query, tuple(row.passages), tuple(row.selected)))


def validate_rows(rows, split: str, for_training: bool = True) -> tuple[list[CleanRow], ValidationReport]:
    """Keep the usable rows of an iterable of v1.1 rows; count the others by reason.

    A training row needs a selected and an unselected passage. An evaluation split also keeps rows
    with no selected (or no unselected) passage, since their passages belong to the ranked corpus;
    they are still counted under their reason.
    """
    report = ValidationReport(split)
    kept: list[CleanRow] = []
    # query_id (and, for kept rows without one, their content's hash) -> the kept row's place in kept, its corpus-only
    # reason, its row number; seen_rows: the content hash of every kept row (this process only)
    seen: dict[str, tuple[int, str | None, int]] = {}
    unidentified: dict[int, tuple[int, str | None, int]] = {}
    seen_rows: set[int] = set()
    for row in rows:
        report.total += 1
        # A query_id seen before in the split is the same query again (it would count twice in every metric).
        # Only kept rows count as seen: a later usable row of a query whose first row was unusable is kept.
        # 123 and "123" are one id (a jsonl may write both).
        query_id = row.get("query_id") if isinstance(row, dict) else None
        identified = isinstance(query_id, (int, str)) and not isinstance(query_id, bool)
        if identified and str(query_id) in seen:
            at, kept_reason, number = seen[str(query_id)]
            clean, reason = check_row(row) if kept_reason is not None else (None, None)
            if clean is not None and reason is None and _content(clean) not in unidentified:
                # The query's kept row was kept for its passages only (none selected, an evaluation split): this labelled
                # row of it takes its place, and that one is the duplicate. The unlabelled one was kept and the
                # labelled skipped, so the query was not scored at all (a helper's probe: 59 of 60 evaluated).
                report.corpus_only[kept_reason] -= 1
                report.corpus_only += Counter()  # drops a count that fell to 0
                report.skipped["duplicate_query_id"] += 1
                report.first.setdefault("duplicate_query_id", f"row {number}")
                kept[at] = clean
                seen[str(query_id)] = (at, None, report.total)
                seen_rows.add(_content(clean))
            else:
                report.skip("duplicate_row" if clean is not None and reason is None else "duplicate_query_id", row)
            continue
        clean, reason = check_row(row)
        fingerprint = _content(clean) if clean is not None else None
        if clean is not None:
            # A row equal to a kept one (query, passages, labels) where either has no query_id is the same row again: a
            # shard copied twice counted every query twice in every metric (a probe), and so did a copy that had lost
            # its query_id beside the one that kept it (a later probe). Two rows with different ids are two queries:
            # the first row with an id equal to a kept row without one gives it that id (in either order, one row).
            if identified and fingerprint in unidentified:
                seen[str(query_id)] = unidentified.pop(fingerprint)
                report.skip("duplicate_row", row)
                continue
            if not identified and fingerprint in seen_rows:
                report.skip("duplicate_row", row)
                continue
        keep = clean is not None and (reason is None or (not for_training and reason in CORPUS_ONLY_REASONS))
        if reason is not None:
            if keep:
                report.corpus_only[reason] += 1
            else:
                report.skip(reason, row)
        if keep:
            kept.append(clean)
            seen_rows.add(fingerprint)
            if identified:
                seen[str(query_id)] = (len(kept) - 1, reason, report.total)
            else:
                unidentified[fingerprint] = (len(kept) - 1, reason, report.total)
    report.kept = len(kept)
    if not kept or not any(any(r.selected) for r in kept):
        raise DataSourceError(
            f"No usable rows in the '{split}' split ({report.total} read; skipped: {dict(report.skipped)}"
            + (f"; kept for their passages only: {dict(report.corpus_only)}" if report.corpus_only else "") + "). "
            + ("Each row needs a query and passages with at least one selected and one unselected passage." if for_training else
               # an evaluation split keeps rows without an unselected passage and scores them: it needs a selected one
               "An evaluation split needs a row whose query has a word and at least one selected passage (is_selected 1).")
        )
    return kept, report
