"""Towers: word embeddings -> RNN/GRU/LSTM -> pooling -> projection (+ the mean input vector, with
``skip``) -> L2 norm; optionally a bag-of-words path beside.

Padding never reaches the result. A unidirectional RNN runs over the whole padded batch and the
pooling masks the padded steps out (its output at step t depends only on steps <= t, so the padding
after a sequence cannot change it). A bidirectional RNN's backward pass would start in the padding,
so it runs over packed sequences. On CPU the padded run is the faster one in training: PyTorch
computes the input projections of all steps in one matrix product for a padded batch, but step by
step for a packed one (experiments/benchmark/README.md has the numbers). ``packing="packed"`` forces
packed sequences for every direction; the two give the same vectors up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from two_tower.core.checks import check, check_packing
from two_tower.model.bag import BagOfWords, TermStatistics
from two_tower.model.embedding import OpenEmbedding

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}  # the names: two_tower/core/checks.py CELLS


class RNNEncoder(nn.Module):
    """Encodes padded id batches; padding never reaches the result (masked pooling, or packed sequences
    when bidirectional or ``packing="packed"``)."""

    def __init__(
        self,
        embedding: OpenEmbedding,
        cell: str = "gru",
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        pooling: str = "mean",
        dim: int | None = 128,
        packing: str = "auto",
        bag_dim: int = 0,
        bag_mix: float = 0.5,
        bag_stemmer: str | None = None,
        bag_passage_idf_power: float = 1.0,
        skip: bool = False,
    ):
        super().__init__()
        for key, value in (("cell", cell), ("pooling", pooling), ("packing", packing)):
            check(f"encoder.{key}", value)
        check_packing(packing, bidirectional)
        # auto: masks where they give the same result (unidirectional), packed sequences otherwise.
        self.packed = packing == "packed" or bidirectional
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
        self.skip: nn.Linear | None = None
        if skip:
            # Skip path: the mean of the input word vectors (the static model a distilled table comes
            # from), through a linear map that starts as the identity, plus the RNN's projection, which
            # starts at zero. An untrained tower scores exactly like the static model; training adds.
            dim = embedding.embedding_dim
            self.skip = nn.Linear(dim, dim, bias=False)
            nn.init.eye_(self.skip.weight)
        self.projection = nn.Linear(rnn_out, dim) if dim else nn.Identity()
        if skip:
            nn.init.zeros_(self.projection.weight)
            nn.init.zeros_(self.projection.bias)
        self.output_dim = dim or rnn_out
        self.bag: BagOfWords | None = None
        if bag_dim:
            check("encoder.bag_mix", bag_mix)
            # Words of one stem (bag_stemmer) share a key, so "runs" matches "running".
            check("encoder.bag_passage_idf_power", bag_passage_idf_power)
            self.bag = BagOfWords(embedding.num_words, bag_dim, stemmer=bag_stemmer, passage_idf_power=bag_passage_idf_power)
            # Share of the bag in the score: score = (1 - mix) * cos(RNN parts) + mix * cos(bag parts); learned.
            self.bag_mix_logit = nn.Parameter(torch.logit(torch.tensor(float(bag_mix))))
            self.output_dim += bag_dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, passages: bool = False) -> torch.Tensor:
        """Unit vectors of a batch of texts; ``passages``: they are passages (the bag weighs their words
        by IDF ** ``bag_passage_idf_power``, a query's by IDF)."""
        x = self.dropout(self.embedding(ids))
        if not self.packed:
            return self._forward_masked(ids, lengths, x, passages)
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
        return self._output(pooled, ids, lengths, x, passages)

    def _forward_masked(self, ids: torch.Tensor, lengths: torch.Tensor, x: torch.Tensor, passages: bool = False) -> torch.Tensor:
        """Unidirectional RNN over the padded batch; only steps < length are pooled."""
        output, _ = self.rnn(x)  # [B, T, H]
        lengths = lengths.to(output.device)
        if self.pooling == "last":  # the last real step's output is the packed run's final hidden state
            pooled = output[torch.arange(len(ids), device=output.device), (lengths - 1).clamp(min=0)]
        else:
            mask = (torch.arange(ids.shape[1], device=output.device)[None, :] < lengths[:, None]).unsqueeze(-1)
            if self.pooling == "mean":
                pooled = (output * mask).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(output.dtype)
            else:
                pooled = output.masked_fill(~mask, float("-inf")).max(1).values
        return self._output(pooled, ids, lengths, x, passages)

    def _output(self, pooled: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, x: torch.Tensor | None = None, passages: bool = False) -> torch.Tensor:
        out = self.projection(self.dropout(pooled))
        if self.skip is not None:
            mask = (torch.arange(ids.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]).unsqueeze(-1)
            static = (x * mask).sum(1) / lengths.to(x.device).clamp(min=1).unsqueeze(-1).to(x.dtype)
            out = out + self.skip(static)
        out = F.normalize(out, dim=-1)
        if self.bag is None:
            return out
        mix = torch.sigmoid(self.bag_mix_logit)
        return torch.cat([(1 - mix).sqrt() * out, mix.sqrt() * self.bag(ids, lengths, passages)], dim=-1)  # unit length


class TwoTower(nn.Module):
    """Query and passage towers over one shared embedding table; the RNNs are shared or separate."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        encoder_factory,
        shared_towers: bool = True,
        freeze_embeddings: bool = False,
        extension_size: int = 0,
        hash_buckets: int = 0,
    ):
        super().__init__()
        self.embedding = OpenEmbedding(vocab_size, embedding_dim, extension_size, hash_buckets, freeze=freeze_embeddings)
        self.query_encoder = encoder_factory(embedding=self.embedding)
        self.passage_encoder = self.query_encoder if shared_towers else encoder_factory(embedding=self.embedding)

    def load_embeddings(self, matrix) -> None:
        self.embedding.load_words(matrix)

    def bags(self) -> list[BagOfWords]:
        encoders = {id(e): e for e in (self.query_encoder, self.passage_encoder)}.values()
        return [e.bag for e in encoders if getattr(e, "bag", None) is not None]

    def corpus_statistics(self, tokens) -> TermStatistics | None:
        """Term statistics of a tokenized corpus (a ``Ragged``), or None without a bag-of-words path."""
        bags = self.bags()
        return bags[0].corpus_statistics(tokens.values, tokens.offsets) if bags else None

    def set_statistics(self, stats: TermStatistics | None) -> None:
        """Weigh words by their IDF over this corpus from now on (every bag-of-words path)."""
        for bag in self.bags():
            bag.set_statistics(stats)

    def statistics_state(self) -> list:
        """What every bag-of-words path weighs words by now (no copy), for ``restore_statistics``."""
        return [(bag.stat_keys, bag.stat_idf, bag.unseen_idf) for bag in self.bags()]

    def restore_statistics(self, state: list) -> None:
        """Weigh words as when ``statistics_state`` gave ``state`` (no recount: the same tensors)."""
        for bag, (keys, idf, unseen) in zip(self.bags(), state, strict=True):
            bag.stat_keys, bag.stat_idf, bag.unseen_idf = keys, idf, unseen

    def encode_queries(self, ids, lengths):
        return self.query_encoder(ids, lengths)

    def encode_passages(self, ids, lengths):
        return self.passage_encoder(ids, lengths, passages=True)
