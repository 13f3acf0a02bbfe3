"""Towers: word embeddings -> RNN/GRU/LSTM -> pooling -> projection -> L2 norm.

Padding never reaches the result. A unidirectional RNN runs over the whole padded batch and the
pooling masks the padded steps out (its output at step t depends only on steps <= t, so the padding
after a sequence cannot change it). A bidirectional RNN's backward pass would start in the padding,
so it runs over packed sequences. On CPU the padded run is the faster one in training: PyTorch
computes the input projections of all steps in one matrix product for a padded batch, but step by
step for a packed one (experiments/benchmark/README.md has the numbers). ``packing="packed"`` forces
packed sequences for every direction; the two give the same vectors up to float rounding.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
POOLINGS = ("last", "mean", "max")
PACKINGS = ("auto", "packed", "masks")


class RNNEncoder(nn.Module):
    """Encodes padded id batches; padding never reaches the result (masked pooling, or packed sequences
    when bidirectional or ``packing="packed"``)."""

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
        packing: str = "auto",
        bag_dim: int = 0,
        bag_train_vectors: bool = False,
        bag_mix: float = 0.5,
        bag_stemmer: str | None = None,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"encoder.cell must be one of {sorted(CELLS)}, got {cell!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"encoder.pooling must be one of {POOLINGS}, got {pooling!r}")
        if packing not in PACKINGS:
            raise ValueError(f"encoder.packing must be one of {PACKINGS}, got {packing!r}")
        if packing == "masks" and bidirectional:
            raise ValueError("encoder.packing=masks needs a unidirectional RNN (a backward pass would start in the padding)")
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
        self.projection = nn.Linear(rnn_out, dim) if dim else nn.Identity()
        self.output_dim = dim or rnn_out
        self.bag: BagOfWords | None = None
        if bag_dim:
            if not 0 < bag_mix < 1:
                raise ValueError(f"encoder.bag_mix must be in (0, 1), got {bag_mix}")
            # bag_stemmer is applied by the training recipe, which knows the vocabulary (TwoTower.load_bag):
            # it decides which words share a signature; those word groups are saved with the weights.
            self.bag = BagOfWords(embedding.num_embeddings, bag_dim, train_vectors=bag_train_vectors)
            # Share of the bag in the score: score = (1 - mix) * cos(RNN parts) + mix * cos(bag parts); learned.
            self.bag_mix_logit = nn.Parameter(torch.logit(torch.tensor(float(bag_mix))))
            self.output_dim += bag_dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(ids))
        if not self.packed:
            return self._forward_masked(ids, lengths, x)
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
        return self._output(pooled, ids, lengths)

    def _forward_masked(self, ids: torch.Tensor, lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
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
        return self._output(pooled, ids, lengths)

    def _output(self, pooled: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = F.normalize(self.projection(self.dropout(pooled)), dim=-1)
        if self.bag is None:
            return out
        mix = torch.sigmoid(self.bag_mix_logit)
        return torch.cat([(1 - mix).sqrt() * out, mix.sqrt() * self.bag(ids, lengths)], dim=-1)  # unit length


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: integer arithmetic only, so every CPU gives the same bits."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        return x ^ (x >> np.uint64(31))


class BagOfWords(nn.Module):
    """A lexical path beside the RNN: the weighted sum of each word's signature, L2-normalised; a word
    (or, with groups, a stem) met c times in a text counts 1 + log(c) times.

    Signatures are random +-1/sqrt(dim) vectors, the same in every tower, so different words are nearly
    orthogonal and the cosine of two bags approximates the cosine of their weighted word counts: a
    random projection of log-TF-IDF. A word of the vocabulary that training never saw keeps its
    signature, so exact matches of rarer words (names, places) count, which the RNN over 50-d GloVe
    vectors blurs. Unknown words (UNK) and padding are left out. Words of one group
    (``share_signatures``, e.g. one stem) share a signature and count as one word. Word weights start at
    the training passages' IDF (``load_term_weights``) and are learned.

    Frozen signatures are not saved (2048 x 34k words would be 277 MB): they are a pure function of the
    saved word ``groups`` (bits of a SplitMix64 hash, the same on every CPU), drawn again when a
    checkpoint loads and checked against a saved CRC. With ``train_vectors`` they are learned and saved
    like any weight.
    """

    SEED = 20261129

    def __init__(self, vocab_size: int, dim: int, train_vectors: bool = False):
        super().__init__()
        self.dim, self.train_vectors = dim, train_vectors
        self.weights = nn.Embedding(vocab_size, 1, padding_idx=0)
        with torch.no_grad():
            self.weights.weight.fill_(1.0)
            self.weights.weight[:2] = 0.0  # PAD, UNK
        self.register_buffer("groups", torch.arange(vocab_size))
        self.register_buffer("checksum", torch.zeros((), dtype=torch.int64))  # an integer: .to(dtype) leaves it alone
        signatures, checksum = self._draw()
        if train_vectors:
            self.signatures = nn.Parameter(signatures)
        else:
            self.register_buffer("signatures", signatures, persistent=False)
        self.checksum.fill_(checksum)

    def _draw(self) -> tuple[torch.Tensor, int]:
        """(signatures [vocab, dim], CRC-32 of their sign bits) from ``groups``: bit j of a group's hash
        stream gives the sign of dimension j."""
        groups = self.groups.cpu().numpy().astype(np.uint64)
        words = (self.dim + 63) // 64  # 64-bit hashes per signature
        keys = groups[:, None] * np.uint64(words) + np.arange(words, dtype=np.uint64)[None, :]
        hashes = _splitmix64(keys ^ np.uint64(self.SEED)).astype("<u8")  # little-endian on every CPU
        bits = hashes.view(np.uint8).reshape(len(groups), -1)
        checksum = zlib.crc32(bits.tobytes())
        signs = np.unpackbits(bits, axis=1, bitorder="little")[:, : self.dim]
        scale = self.dim**-0.5
        signatures = torch.from_numpy(np.ascontiguousarray(signs)).float().mul_(2 * scale).sub_(scale)  # {0,1} -> -+scale
        signatures[:2] = 0.0  # PAD, UNK
        return signatures.to(self.groups.device), checksum

    def share_signatures(self, groups) -> None:
        """Words of one group (e.g. one stem: "run", "runs", "running") get one signature, so they match."""
        groups = torch.as_tensor(groups, dtype=torch.long)
        if groups.shape != self.groups.shape:
            raise ValueError(f"signature groups {tuple(groups.shape)} do not match the vocabulary {tuple(self.groups.shape)}")
        with torch.no_grad():
            self.groups.copy_(groups)
            signatures, checksum = self._draw()
            self.signatures.copy_(signatures)
            self.checksum.fill_(checksum)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        errors_before = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if self.train_vectors or prefix + "groups" not in state_dict or len(error_msgs) > errors_before:
            return  # trained signatures load as weights; a size mismatch is reported by torch as it is
        with torch.no_grad():
            signatures, checksum = self._draw()
            self.signatures.copy_(signatures)
        if checksum != int(self.checksum):  # the groups and the hash give other signatures than at training
            error_msgs.append(
                f"{prefix}signatures: the bag-of-words signatures drawn from the saved word groups do not match the "
                f"saved checksum ({checksum} vs {int(self.checksum)}): made by another version of BagOfWords"
            )

    def load_term_weights(self, weights) -> None:
        weights = torch.as_tensor(weights, dtype=self.weights.weight.dtype).view(-1, 1)
        if weights.shape != self.weights.weight.shape:
            raise ValueError(f"term weights {tuple(weights.shape)} do not match the vocabulary {tuple(self.weights.weight.shape)}")
        with torch.no_grad():
            self.weights.weight.copy_(weights)
            self.weights.weight[:2] = 0.0  # PAD, UNK

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        real = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
        real &= ids > 1  # neither PAD nor UNK: any two unknown words would otherwise "match"
        # A word (group) met c times counts 1 + log(c) times, not c (term frequency saturates, as in
        # BM25): each of its c tokens carries (1 + log c) / c.
        groups = self.groups[ids]
        counts = ((groups.unsqueeze(2) == groups.unsqueeze(1)) & real.unsqueeze(1)).sum(2).clamp(min=1).to(self.weights.weight.dtype)
        weights = self.weights(ids).squeeze(-1) * (1 + counts.log()) / counts * real
        # embedding_bag sums weighted rows without building the [batch, length, dim] tensor.
        bags = F.embedding_bag(ids, self.signatures, per_sample_weights=weights, mode="sum")
        return F.normalize(bags, dim=-1)


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

    def load_bag(self, term_weights, groups=None) -> None:
        """Start every bag-of-words path's word weights at ``term_weights`` (the IDF of each vocabulary
        word), with one signature per group of words if ``groups`` (word id -> group id) is given."""
        for encoder in {id(e): e for e in (self.query_encoder, self.passage_encoder)}.values():
            if getattr(encoder, "bag", None) is not None:
                if groups is not None:
                    encoder.bag.share_signatures(groups)
                encoder.bag.load_term_weights(term_weights)

    def encode_queries(self, ids, lengths):
        return self.query_encoder(ids, lengths)

    def encode_passages(self, ids, lengths):
        return self.passage_encoder(ids, lengths)
