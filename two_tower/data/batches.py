"""Batch plans and the datasets that turn them into padded tensors.

A sampler yields one numpy "plan" per batch; the DataLoader (``batch_size=None``) hands it to the
dataset, which cuts token ids out of the ragged arrays and pads them to the batch's longest sequence.
Training plans are length-bucketed so padding stays small; evaluation plans are sorted by length.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from two_tower.data.prepared import PreparedSplit, Ragged
from two_tower.data.tokenizer import PAD_ID
from two_tower.data.sampling import NegativeSampler, sample_from
from two_tower.data.teacher import TeacherVectors


def pad_rows(ragged: Ragged, rows: np.ndarray, fill: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``rows`` of ``ragged`` right-padded with ``fill`` to the longest (at least one column):
    (ids [B, T] int64, lengths [B] int64), the same as padding row by row (``tokenizer.pad_batch``)."""
    rows = np.asarray(rows, dtype=np.int64)
    return ragged.padded(rows, fill), ragged.lengths[rows]


class TripletBatchSampler(Sampler):
    """Each epoch: shuffle rows, draw each row's positive and negatives, bucket by length, batch.

    A plan is an int64 array [B, 2 + per_query]: (row, positive passage, negative passages...).
    Deterministic in (seed, epoch), so a resumed run sees the same batches. With several processes,
    each takes every ``world_size``-th batch (the same number of batches on every rank).
    """

    def __init__(
        self,
        split: PreparedSplit,
        negatives: NegativeSampler,
        batch_size: int,
        seed: int = 0,
        bucket_batches: int = 50,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        batches_done: Callable[[], int] | None = None,
    ):
        self.split, self.negatives, self.batch_size = split, negatives, batch_size
        self.batches_done = batches_done
        self.seed, self.bucket_batches, self.shuffle = seed, bucket_batches, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def batches_in(num_queries: int, batch_size: int) -> int:
        """Batches an epoch of ``num_queries`` rows makes, over every process."""
        return -(-num_queries // batch_size)

    def __len__(self) -> int:
        return self.batches_in(self.split.num_queries, self.batch_size) // self.world_size

    def plans(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = self.split.num_queries
        rows = rng.permutation(n) if self.shuffle else np.arange(n)
        positives = sample_from(self.split.positives, rows, rng, 1)
        negatives = self.negatives.sample(self.split, rows, rng)
        plan = np.concatenate([rows[:, None], positives, negatives], axis=1)
        if self.bucket_batches:
            lengths = self.split.passage_tokens.lengths[plan[:, 1:]].max(axis=1)
            chunk = self.bucket_batches * self.batch_size
            for start in range(0, n, chunk):
                part = plan[start : start + chunk]
                plan[start : start + chunk] = part[np.argsort(lengths[start : start + chunk], kind="stable")]
        batches = [plan[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        usable = len(batches) // self.world_size * self.world_size
        return batches[self.rank : usable : self.world_size]

    def __iter__(self):
        # A generator: the plans are drawn at the first batch, after Lightning's set_epoch, which on
        # resume comes after the DataLoader iterator is created. A run resumed mid-epoch skips the
        # batches it had already trained on (``batches_done``).
        plans = self.plans()
        yield from plans[self.batches_done() if self.batches_done else 0 :]


class TripletBatches(Dataset):
    """Plan -> tensors. Passages are encoded once per batch even if several rows share them.
    With ``teacher`` vectors (loss=distill), each batch also carries the teacher's vectors of its
    queries and of its unique passages. With ``labelled_rows`` (rows from it on are pseudo-queries,
    ``two_tower.data.pseudo_queries``), each batch says which of its rows are labelled."""

    def __init__(self, split: PreparedSplit, teacher: TeacherVectors | None = None, labelled_rows: int | None = None):
        self.split, self.teacher, self.labelled_rows = split, teacher, labelled_rows

    def __getitem__(self, plan: np.ndarray) -> dict[str, torch.Tensor]:
        rows, passages = plan[:, 0], plan[:, 1:]
        unique, inverse = np.unique(passages, return_inverse=True)
        inverse = inverse.reshape(passages.shape)
        query_ids, query_lengths = pad_rows(self.split.query_tokens, rows)
        passage_ids, passage_lengths = pad_rows(self.split.passage_tokens, unique)
        positive_pids, _ = pad_rows(self.split.positives, rows, fill=-1)
        batch = {
            "query_ids": torch.from_numpy(query_ids),
            "query_lengths": torch.from_numpy(query_lengths),
            "passage_ids": torch.from_numpy(passage_ids),
            "passage_lengths": torch.from_numpy(passage_lengths),
            "passage_pids": torch.from_numpy(unique.astype(np.int64)),
            "positive_column": torch.from_numpy(inverse[:, 0].astype(np.int64)),
            "negative_columns": torch.from_numpy(inverse[:, 1:].astype(np.int64)),
            "positive_pids": torch.from_numpy(positive_pids),
        }
        if self.teacher is not None:
            batch["teacher_queries"] = torch.from_numpy(self.teacher.queries[rows])
            batch["teacher_passages"] = torch.from_numpy(self.teacher.passages[unique])
        if self.labelled_rows is not None:
            batch["labelled"] = torch.from_numpy(rows < self.labelled_rows)
        return batch


class LengthSortedBatches(Sampler):
    """Batches of item indices, longest first, so each batch pads little. Sharded by rank."""

    def __init__(self, lengths: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1, items: np.ndarray | None = None):
        items = np.arange(len(lengths)) if items is None else items
        order = items[np.argsort(-lengths[items], kind="stable")]
        # Every rank gets a batch (Lightning refuses a rank with an empty loader: 300 validation queries in one
        # 512-row batch over 2 processes). Batches of at most items // processes make at least one a process (of
        # ceil(items / processes), 4 items made 2 batches over 3 processes, and a split with fewer items than
        # processes left the last ranks none: a traceback in one process, a gloo one in the others).
        batch_size = max(1, min(batch_size, len(order) // world_size))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.batches = batches[rank::world_size]
        if not self.batches and len(order):
            # Fewer items than processes: this rank encodes again an item a lower rank encodes, which the
            # gathers drop (TwoTowerModule._gather keeps each passage's first row, _local_queries leaves a
            # query to the lowest rank that has it), so the figures are those of one process.
            self.batches = [order[:1]]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class TokenBatches(Dataset):
    """Plan (item indices) -> {"index", "ids", "lengths"} for encoding queries or passages."""

    def __init__(self, tokens: Ragged):
        self.tokens = tokens

    def __getitem__(self, items: np.ndarray) -> dict[str, torch.Tensor]:
        ids, lengths = pad_rows(self.tokens, items)
        return {"index": torch.from_numpy(items.astype(np.int64)), "ids": torch.from_numpy(ids), "lengths": torch.from_numpy(lengths)}
