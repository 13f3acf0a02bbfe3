"""``negatives=ann``: hard negatives ranked by a dense model, ANCE-style.

The first pool comes from ``checkpoint`` (a previous run's towers, with that run's tokenizer). With
``refresh_every_n_epochs=N`` the pool is mined again every N epochs with the model being trained.

Memory stays bounded at any corpus size: passage and query vectors are written to files in a temporary
folder under ``cache_dir`` (removed when mining ends) and read back a block at a time, so the process
holds one block of ``passage_block_mb`` of passage vectors and the score rows of one step (``max_score_mb``),
not the whole [passages, dim] matrix (658,608 x 2,176 float32 = 5.7 GB at experiment=best_glove's width).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch

from two_tower.core.atomic import sweep_stale_temps, temp_path
from two_tower.core.cache import content_digest
from two_tower.core.checks import check
from two_tower.core.errors import CheckpointError
from two_tower.data.prepared import PreparedSplit
from two_tower.negatives.mining import MinedNegatives

# Passage blocks are multiples of this many rows (see FileScorer).
BLOCK_ALIGN = 64


class VectorFile:
    """A float32 matrix [rows, dim] kept in a file: written a batch of rows at a time (``vf[index] =
    vectors``, as ``encode_tokens`` does) and read back a block of rows at a time. Plain reads, no mmap:
    mapped pages would count in the process's resident memory. Rows never written read as zeros."""

    def __init__(self, path: Path, rows: int, dim: int):
        self.path, self.rows, self.dim, self.row_bytes = Path(path), rows, dim, 4 * dim
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._close = weakref.finalize(self, os.close, self.fd)  # also if never closed explicitly
        os.ftruncate(self.fd, rows * self.row_bytes)

    def __len__(self) -> int:
        return self.rows

    def __setitem__(self, index, vectors) -> None:
        values = np.ascontiguousarray(torch.as_tensor(vectors).detach().to(torch.float32).cpu().numpy())
        for row, vector in zip(np.asarray(index).reshape(-1).tolist(), values):
            if os.pwrite(self.fd, vector.data, row * self.row_bytes) != self.row_bytes:
                raise OSError(f"{self.path}: short write")

    def _read_into(self, buffer: np.ndarray, offset: int) -> None:
        view, done = memoryview(buffer).cast("B"), 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read")
            done += got

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.dim), dtype=np.float32)
        self._read_into(out, start * self.row_bytes)
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(np.asarray(rows).tolist()):
            self._read_into(out[i], row * self.row_bytes)
        return out

    def close(self) -> None:
        self._close()
        self.fd = -1


def passage_blocks(num_passages: int, block_rows: int) -> list[tuple[int, int]]:
    """[start, stop) blocks of ``block_rows`` (rounded down to a multiple of BLOCK_ALIGN, at least that),
    the remainder joined to the last block rather than left as a short block of its own."""
    size = max(BLOCK_ALIGN, block_rows // BLOCK_ALIGN * BLOCK_ALIGN)
    starts = list(range(0, num_passages, size))
    if len(starts) > 1 and num_passages - starts[-1] < size:
        starts.pop()
    return list(zip(starts, starts[1:] + [num_passages]))


class FileScorer:
    """``scorer(rows)`` = ``queries[rows] @ passages.T`` [len(rows), passages] float32, with both
    matrices in VectorFiles in ``folder`` (a temporary folder, removed by ``close()`` or when this object
    is collected). The product is computed a passage block at a time; blocks are multiples of
    BLOCK_ALIGN rows with no short tail block, and with those the block products are bit for bit the
    columns of the single product with one torch thread (training's default, ``threads=1``; checked against it,
    ties included, in tests/test_negatives.py, and at 658,608 passages by the pools' SHA-1 in
    experiments/scale/INDEX_AND_MINING.md), so the mined pools are those of the in-memory matrix. With several
    threads the matrix routines may split the two products differently and their last bits differ, which can
    order exact near-ties otherwise."""

    def __init__(self, folder: Path, num_passages: int, passage_dim: int, num_queries: int, query_dim: int, passage_block_mb: float = 64):
        self.folder = Path(folder)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self.passages = VectorFile(self.folder / "passages.f32", num_passages, passage_dim)
        self.queries = VectorFile(self.folder / "queries.f32", num_queries, query_dim)
        self.blocks = passage_blocks(num_passages, int(passage_block_mb * (1 << 20)) // (4 * max(passage_dim, 1)))

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        queries = torch.from_numpy(self.queries.take(rows))
        out = torch.empty(len(rows), self.passages.rows)
        for start, stop in self.blocks:
            out[:, start:stop] = queries @ torch.from_numpy(self.passages.read(start, stop)).T
        return out

    def close(self) -> None:
        self.passages.close()
        self.queries.close()
        self._cleanup()


def new_file_scorer(folder: str | Path, num_passages: int, passage_dim: int, num_queries: int, query_dim: int, passage_block_mb: float) -> FileScorer:
    """A FileScorer in a temporary folder under ``folder`` named as ``two_tower.core.atomic``'s temporaries, so that
    one left by a killed mining (SIGKILL, or SIGTERM before training starts: no finalizer runs) is swept by the next
    one here. A plain ``mkdtemp`` folder was left for good (the vectors of the whole corpus: GBs at scale, a probe)."""
    parent = Path(folder).expanduser()
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(parent)
    tmp = temp_path(parent / "ann-vectors")
    tmp.mkdir(mode=0o700)
    return FileScorer(tmp, num_passages, passage_dim, num_queries, query_dim, passage_block_mb)


class ANNNegatives(MinedNegatives):
    name = "ann"

    def __init__(self, *args, checkpoint: str | None = None, batch_size: int = 512, passage_block_mb: float = 64, **kwargs):
        super().__init__(*args, **kwargs)
        if not checkpoint:
            raise ValueError("negatives=ann needs negatives.checkpoint=PATH (a trained .ckpt to mine with)")
        self.checkpoint = Path(checkpoint).expanduser()
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"negatives.checkpoint={self.checkpoint}: no such checkpoint file")
        check("negatives.passage_block_mb", passage_block_mb)
        check("negatives.batch_size", batch_size)
        self.batch_size = batch_size
        # Memory for the passage vectors multiplied at once (the rest wait in a file); pools do not depend on it.
        self.passage_block_mb = passage_block_mb

    @functools.cached_property
    def checkpoint_digest(self) -> str:
        """The mining checkpoint by its bytes (~1 s a GB), read once: the pools' cache key (by path, size and time,
        another checkpoint of the same configuration copied over it with the old time (``cp -p``, ``touch -r``,
        ``rsync -a``) got the old checkpoint's pool from the cache: a probe) and what a run's checkpoints record of it
        (``TwoTowerDataModule.data_digests``: a resume after it was replaced is refused)."""
        return content_digest([self.checkpoint])

    def identity(self) -> dict:
        return {**super().identity(), "checkpoint": self.checkpoint_digest}

    def scorer(self, split):
        from two_tower.retrieval.dense import DenseRetriever

        try:
            retriever = DenseRetriever(str(self.checkpoint), batch_size=self.batch_size)
        except CheckpointError as err:  # its line names evaluate's and index.py's setting, ckpt=: here it is this one
            raise CheckpointError(str(err).replace(f"ckpt={self.checkpoint}", f"negatives.checkpoint={self.checkpoint}", 1)) from err
        passage_tokens, query_tokens, evaluated = retriever.tokenize(split)
        towers = retriever.module.towers
        scorer = new_file_scorer(self.cache_dir, len(passage_tokens), towers.passage_encoder.output_dim, len(query_tokens), towers.query_encoder.output_dim, self.passage_block_mb)
        try:
            retriever.encode(passage_tokens, query_tokens, evaluated, passages_out=scorer.passages, queries_out=scorer.queries)
        except BaseException:
            scorer.close()
            raise
        return scorer


def model_scorer(module, split: PreparedSplit, batch_size: int = 512, folder: str | Path | None = None, passage_block_mb: float = 64):
    """Scores of the split's queries over its passages by ``module`` as it is now (its tokenizer = the
    split's), as a FileScorer in a temporary folder under ``folder`` (default: the system's temp folder);
    the caller closes it."""
    from two_tower.retrieval.checkpoint import encode_tokens

    dim_p, dim_q = module.towers.passage_encoder.output_dim, module.towers.query_encoder.output_dim
    scorer = new_file_scorer(folder or tempfile.gettempdir(), len(split.passage_tokens), dim_p, len(split.query_tokens), dim_q, passage_block_mb)
    was_training = module.training
    module.eval()
    module.use_corpus(split)
    try:
        encode_tokens(module.encode_passages, split.passage_tokens, dim_p, batch_size, out=scorer.passages)
        encode_tokens(module.encode_queries, split.query_tokens, dim_q, batch_size, out=scorer.queries)
    except BaseException:
        scorer.close()
        raise
    finally:
        module.train(was_training)
    return scorer
