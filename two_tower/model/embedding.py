"""The word-vector table of an open vocabulary (see ``two_tower.data.tokenizer`` for the id ranges).

- training vocabulary rows (``words``): pre-trained vectors where they exist, trained or frozen with
  ``embeddings.freeze``; saved in checkpoints when trained, derived again from the source when frozen
  (``two_tower.model.frozen_rows``);
- extension rows: the pre-trained vectors of every other word of the source (GloVe: ~366k more words).
  Always frozen and never saved (80 MB for GloVe 6B 50d): they are read from the source again when a
  model loads (``two_tower.model.vocabulary.attach_vocabulary``) and checked against a saved CRC;
- hashed buckets: any other word's id, modulo ``buckets``, picks one of ``buckets`` random rows (at the
  word vectors' scale, trained like the vocabulary rows), so identical unknown strings give identical RNN inputs
  (the fastText hashing trick, on whole words); saved in checkpoints, frozen or not.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import nn


# rows a block of OpenEmbedding.crc widens to float32 at a time (256-d: 16 MB)
CRC_ROWS = 16_384


class OpenEmbedding(nn.Module):
    def __init__(self, num_words: int, dim: int, extension_size: int = 0, buckets: int = 0, freeze: bool = False):
        super().__init__()
        self.num_words, self.extension_size, self.num_buckets = num_words, extension_size, buckets
        self.vocab_size = num_words + extension_size
        self.embedding_dim = dim
        self.words = nn.Embedding(num_words, dim, padding_idx=0)
        # Empty until load_extension gives the rows (never saved): a zero-filled placeholder of the full size was
        # 0.36 GB written and dropped at every model load (400k x 256 float32). ``extension`` holds the vectors
        # source's whole table, shared with it (not a copy of the extension's rows), and ``extension_rows`` the row of
        # each extension id in it.
        self.register_buffer("extension", torch.zeros(0, dim), persistent=False)
        self.register_buffer("extension_rows", torch.zeros(0, dtype=torch.int64), persistent=False)
        self.register_buffer("extension_crc", torch.zeros((), dtype=torch.int64))
        self.extension_loaded = extension_size == 0
        self.buckets = nn.Embedding(buckets, dim) if buckets else None
        if self.buckets is not None:
            nn.init.normal_(self.buckets.weight, std=0.3)
        self.freeze(freeze)

    def freeze(self, frozen: bool) -> None:
        self.words.weight.requires_grad_(not frozen)
        if self.buckets is not None:
            self.buckets.weight.requires_grad_(not frozen)

    @property
    def weight(self) -> torch.Tensor:
        """The training vocabulary rows (what ``nn.Embedding.weight`` was before the vocabulary opened)."""
        return self.words.weight

    @staticmethod
    def crc(matrix: np.ndarray, rows: np.ndarray | None = None) -> int:
        """CRC32 of the rows (``matrix[rows]``; all of them without ``rows``) as float32 bytes, whatever dtype they
        are held in: float16 rows give the CRC of their float32 values, which checkpoints saved. Computed a block of
        rows at a time, without a float32 copy of the whole."""
        # over the array's own buffer: tobytes() copied it first (GloVe's extension rows at 256 dims, 0.4 GB more at
        # every model load's peak); the same bytes, the same CRC
        if rows is None and (matrix.dtype == np.float32 or matrix.ndim != 2):
            return zlib.crc32(np.ascontiguousarray(matrix, dtype=np.float32).data)
        count = len(matrix) if rows is None else len(rows)
        crc = 0
        for start in range(0, count, CRC_ROWS):
            block = matrix[start : start + CRC_ROWS] if rows is None else matrix[rows[start : start + CRC_ROWS]]
            crc = zlib.crc32(np.ascontiguousarray(block, dtype=np.float32).data, crc)
        return crc

    def load_words(self, matrix) -> None:
        weight = torch.as_tensor(np.asarray(matrix), dtype=self.words.weight.dtype)
        if weight.shape != self.words.weight.shape:
            raise ValueError(f"embedding matrix {tuple(weight.shape)} does not match the model's {tuple(self.words.weight.shape)}")
        with torch.no_grad():
            self.words.weight.copy_(weight)
            if self.buckets is not None and len(weight) > 2:
                # Hashed words start at the scale of the word vectors (drawn at std 0.3 before), so an
                # unknown word is not louder than a known one in a mean of word vectors.
                self.buckets.weight.mul_(float(weight[2:].std()) / 0.3)

    def load_extension(self, matrix: np.ndarray, rows: np.ndarray | None = None) -> None:
        """The extension's rows, from the vectors source; must be the rows the model was trained with. ``rows``: the
        row of each extension id in ``matrix``, the source's whole table, which is then held as it is (shared with
        the source, not copied); without it, ``matrix`` is the extension's rows. Float16 rows (the distilled vectors'
        table) are held as they are and widened when looked up: the same float32 values at half the memory."""
        matrix = np.ascontiguousarray(matrix, dtype=matrix.dtype if matrix.dtype in (np.float16, np.float32) else np.float32)
        rows = np.arange(len(matrix), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if matrix.ndim != 2 or matrix.shape[1] != self.embedding_dim or len(rows) != self.extension_size:
            shape = (len(rows), *matrix.shape[1:])
            raise ValueError(f"extension rows {shape} do not match the model's ({self.extension_size}, {self.embedding_dim})")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(matrix)):
            raise ValueError(f"extension rows {int(rows.min())}..{int(rows.max())} outside the source's {len(matrix)} rows")
        crc = self.crc(matrix, rows)
        if int(self.extension_crc) not in (0, crc):
            raise ValueError(f"the extension vectors (CRC {crc}) are not the ones the model was trained with (CRC {int(self.extension_crc)}): the vectors source changed")
        device = self.words.weight.device
        self.extension = torch.from_numpy(matrix).to(device)
        self.extension_rows = torch.from_numpy(rows).to(device)
        self.extension_crc.fill_(crc)
        self.extension_loaded = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        attached = self.extension_size > 0 and int(self.extension_crc) != 0
        expected = int(self.extension_crc)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if attached and int(self.extension_crc) != expected:
            error_msgs.append(f"{prefix}extension: the extension vectors (CRC {expected}) are not the ones the model was trained with (CRC {int(self.extension_crc)})")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        in_words = ids < self.num_words
        out = self.words(torch.where(in_words, ids, 0))
        if self.extension_size:
            if not self.extension_loaded:
                raise RuntimeError("the vocabulary extension's vectors were not loaded (two_tower.model.vocabulary.attach_vocabulary)")
            extended = ~in_words & (ids < self.vocab_size)
            rows = self.extension[self.extension_rows[(ids - self.num_words).clamp(0, self.extension_size - 1)]]
            out = torch.where(extended.unsqueeze(-1), rows.to(out.dtype), out)
        if self.buckets is not None:
            hashed = ids >= self.vocab_size
            out = torch.where(hashed.unsqueeze(-1), self.buckets((ids - self.vocab_size).clamp(min=0) % self.num_buckets), out)
        return out
