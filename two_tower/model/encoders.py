"""Towers: word embeddings -> RNN/GRU/LSTM over packed sequences -> pooling -> projection -> L2 norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
POOLINGS = ("last", "mean", "max")


class RNNEncoder(nn.Module):
    """Encodes padded id batches; padding never reaches the result (packed sequences + masked pooling)."""

    def __init__(
        self,
        embedding: nn.Embedding,
        cell: str = "gru",
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        pooling: str = "mean",
        dim: int | None = 128,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"encoder.cell must be one of {sorted(CELLS)}, got {cell!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"encoder.pooling must be one of {POOLINGS}, got {pooling!r}")
        self.embedding = embedding
        self.cell, self.pooling = cell, pooling
        self.rnn = CELLS[cell](
            embedding.embedding_dim,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(dropout)
        rnn_out = hidden_size * (2 if bidirectional else 1)
        self.projection = nn.Linear(rnn_out, dim) if dim else nn.Identity()
        self.output_dim = dim or rnn_out

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, hidden = self.rnn(packed)
        if self.pooling == "last":
            h = hidden[0] if self.cell == "lstm" else hidden  # [layers * directions, B, H]
            directions = 2 if self.rnn.bidirectional else 1
            pooled = torch.cat(list(h[-directions:]), dim=-1)
        else:
            padded, _ = pad_packed_sequence(output, batch_first=True, total_length=ids.shape[1])
            mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]).unsqueeze(-1)
            if self.pooling == "mean":
                pooled = (padded * mask).sum(1) / lengths.to(padded.device).clamp(min=1).unsqueeze(-1).to(padded.dtype)
            else:
                pooled = padded.masked_fill(~mask, float("-inf")).max(1).values
        return F.normalize(self.projection(self.dropout(pooled)), dim=-1)


class TwoTower(nn.Module):
    """Query and passage towers over one shared embedding table; the RNNs are shared or separate."""

    def __init__(self, vocab_size: int, embedding_dim: int, encoder_factory, shared_towers: bool = True, freeze_embeddings: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        self.query_encoder = encoder_factory(embedding=self.embedding)
        self.passage_encoder = self.query_encoder if shared_towers else encoder_factory(embedding=self.embedding)

    def load_embeddings(self, matrix) -> None:
        weight = torch.as_tensor(matrix, dtype=self.embedding.weight.dtype)
        if weight.shape != self.embedding.weight.shape:
            raise ValueError(f"embedding matrix {tuple(weight.shape)} does not match the model's {tuple(self.embedding.weight.shape)}")
        with torch.no_grad():
            self.embedding.weight.copy_(weight)

    def encode_queries(self, ids, lengths):
        return self.query_encoder(ids, lengths)

    def encode_passages(self, ids, lengths):
        return self.passage_encoder(ids, lengths)
