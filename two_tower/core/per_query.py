"""Per-query results: one row per evaluated query (its id, its text, each metric), so any two runs on
the same split can be compared query by query (``python -m two_tower.cli.compare``).

Written as parquet beside the run's aggregate metrics, atomically (``two_tower.core.atomic``): a killed
run never leaves half a file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from two_tower.core.atomic import atomic_write
from two_tower.core.errors import PerQueryError

QUERY_COLUMNS = ("qid", "query")
# Written beside a run's tables when training ended (not killed, not still running): validation tables
# exist after the first epoch, so only this tells a finished run's from an interrupted one's.
FIT_ENDED = "fit_ended.json"
# A run's per-query tables, by stage: the test split (scored once), the best validation, the latest validation.
STAGE_FILES = {"test": "test.parquet", "val": "val_best.parquet", "val_last": "val_last.parquet"}
# Columns that describe the row, not a metric of it (constants such as the epoch or the checkpoint scored).
NOT_METRICS = (*QUERY_COLUMNS, "epoch", "checkpoint")


def frame(qids: list[str], queries: list[str], values: dict[str, list[float]], **constants) -> pd.DataFrame:
    """A per-query table: ``qid``, ``query``, one column per metric, plus constant columns (e.g. epoch)."""
    data = {"qid": [str(q) for q in qids], "query": list(queries), **{k: np.asarray(v, dtype=np.float64) for k, v in values.items()}}
    out = pd.DataFrame(data)
    for name, value in constants.items():
        out[name] = value
    return out


def split_frame(split, rows, values: dict[str, list[float]], **constants) -> pd.DataFrame:
    """``frame`` for the queries ``rows`` of a PreparedSplit (qid: its query id, else its row number)."""
    rows = np.asarray(rows).tolist()
    ids = split.query_ids
    return frame([ids[r] if ids is not None else str(r) for r in rows], [split.query_texts[r] for r in rows], values, **constants)


def write(table: pd.DataFrame, path: str | Path) -> Path:
    """Write ``table`` to ``path`` (.parquet, .jsonl or .tsv), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        with atomic_write(path, "wb") as f:
            table.to_parquet(f, index=False)
    elif path.suffix == ".jsonl":
        with atomic_write(path, "w") as f:
            table.to_json(f, orient="records", lines=True)
    elif path.suffix == ".tsv":
        with atomic_write(path, "w") as f:
            table.to_csv(f, sep="\t", index=False)
    else:
        raise PerQueryError(f"{path}: per-query files are .parquet, .jsonl or .tsv")
    return path


def read(path: str | Path, metric: str | None = None) -> pd.DataFrame:
    """A per-query table; with ``metric``, checks that the column exists."""
    path = Path(path)
    if path.is_dir():  # pandas reads a folder as a parquet dataset: "no column ['qid', 'query', ...] (has [])" (a probe)
        raise PerQueryError(f"{path}: a folder, not a per-query file")
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        elif path.suffix == ".jsonl":
            table = pd.read_json(path, orient="records", lines=True, dtype={"qid": str, "query": str})  # a query "123" came back the number 123
        elif path.suffix == ".tsv":
            table = pd.read_csv(path, sep="\t", dtype={"qid": str})
            # ids and texts as written: pandas reads "NaN", "null", "NA", "None", "" as missing, so qids "NaN" and
            # "null" both came back "nan" (two queries paired as one) and a query "None" as nan
            text = [c for c in QUERY_COLUMNS if c in table.columns]
            if text:
                table[text] = pd.read_csv(path, sep="\t", usecols=text, dtype=str, keep_default_na=False)[text]
        else:
            raise PerQueryError(f"{path}: per-query files are .parquet, .jsonl or .tsv")
    except PerQueryError:
        raise
    except Exception as err:
        raise PerQueryError(f"{path}: not a readable per-query file: {type(err).__name__}: {err}") from err
    missing = [c for c in (*QUERY_COLUMNS, *([metric] if metric else [])) if c not in table.columns]
    if missing:
        raise PerQueryError(f"{path}: no column {missing} (has {list(table.columns)})")
    if metric and not _metric_column(table, metric):
        metrics = [c for c in table.columns if _metric_column(table, c)]
        raise PerQueryError(f"{path}: {metric} is not a metric column; the metrics are {metrics}")
    table["qid"] = table["qid"].astype(str)
    return table


def _metric_column(table: pd.DataFrame, name: str) -> bool:
    """Numbers other than true/false: a column of booleans is numeric to pandas, and was compared as 0 and 1 (a probe)."""
    column = table[name]
    return name not in NOT_METRICS and pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
