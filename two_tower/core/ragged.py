"""Ragged arrays: rows of varying length as values + offsets (Arrow list arrays), cut with numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class Ragged:
    """Rows of varying length: row i is ``values[offsets[i]:offsets[i + 1]]``."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_lists(cls, rows) -> "Ragged":
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter((v for r in rows for v in r), dtype=np.int32, count=int(offsets[-1]))
        return cls(values, offsets)

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray | pa.Array, dtype=np.int32) -> "Ragged":
        """``dtype``: of the values (ids: int32; a split's graded gains: float64)."""
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        offsets = np.asarray(array.offsets, dtype=np.int64)
        values = np.asarray(array.values, dtype=dtype)
        return cls(values[offsets[0] : offsets[-1]], offsets - offsets[0])

    def to_arrow(self) -> pa.Array:
        """An Arrow list array of the rows; a large list (64-bit offsets) where the values pass a list's 32-bit
        offsets (over 2**31 - 1 tokens: the int32 cast wrapped, and writing a split's cache failed after its
        tokenizing, 'Negative offsets in list array'). ``from_arrow`` reads either."""
        if len(self.offsets) and self.offsets[-1] > np.iinfo(np.int32).max:
            return pa.LargeListArray.from_arrays(pa.array(self.offsets.astype(np.int64)), pa.array(self.values))
        return pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), pa.array(self.values))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row_ids(self) -> np.ndarray:
        """For each value, the row it belongs to."""
        return np.repeat(np.arange(len(self)), self.lengths)

    def padded(self, rows: np.ndarray, fill: int) -> np.ndarray:
        """The given rows as a dense int64 array, right-padded with ``fill`` (at least one column).
        Vectorised: no Python loop over the rows."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        columns = np.arange(max(int(lengths.max(initial=0)), 1))
        real = columns[None, :] < lengths[:, None]
        out = np.full(real.shape, fill, dtype=np.int64)
        out[real] = self.values[(starts[:, None] + columns[None, :])[real]]
        return out

    def gather(self, rows: np.ndarray) -> list[np.ndarray]:
        return [self.values[self.offsets[r] : self.offsets[r + 1]] for r in rows]
