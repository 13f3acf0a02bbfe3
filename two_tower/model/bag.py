"""The bag-of-words path beside the RNN, for an open vocabulary: word keys, corpus statistics, the bag.

Every word has a 63-bit *key*: the stable hash of its string (of its stem, with a stemmer) for words of
the vocabulary and its extension, and its hashed id for any other word (``two_tower.data.tokenizer``).
Identical strings get identical keys wherever they occur, so the rare words that decide a search (names,
codes, terms) match even when training never saw them.

A word's weight is the IDF of its key *over the corpus being ranked* (``TermStatistics``: the training
passages while training, the validation passages while validating, the indexed corpus in an index
folder, the evaluated split in ``evaluate.py``), as BM25 computes it, times a learned correction for the
words training saw (``exp(r[word])``, 0 at the start and for every other word). So a word that training
never saw still gets a principled weight, and search, evaluation and serving weigh words alike.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from two_tower.data.tokenizer import stable_hash

HASHED_KEY_TAG = np.int64(1 << 62)  # keys of hashed ids: the id with this bit set (vocabulary keys are hashes)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: integer arithmetic only, so every CPU gives the same bits."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        return x ^ (x >> np.uint64(31))


def signature_signs(keys: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """[len(keys), dim] uint8 in {0, 1}: bit j of a key's SplitMix64 stream is the sign of dimension j."""
    words = (dim + 63) // 64
    stream = keys.astype(np.uint64)[:, None] * np.uint64(words) + np.arange(words, dtype=np.uint64)[None, :]
    hashes = _splitmix64(stream ^ np.uint64(seed)).astype("<u8")  # little-endian on every CPU
    return np.unpackbits(hashes.view(np.uint8).reshape(len(keys), -1), axis=1, bitorder="little")[:, :dim]


def vocabulary_keys(words: list[str], stemmer: str | None = None) -> np.ndarray:
    """The key of each vocabulary word (ids 0 and 1, PAD and UNK, get 0: they are never counted)."""
    stems = words[2:]
    if stemmer:
        import Stemmer

        stems = Stemmer.Stemmer(stemmer).stemWords(stems)
    return np.array([0, 0, *(stable_hash(s) for s in stems)], dtype=np.int64)


@dataclass
class TermStatistics:
    """Document frequency of every key in a corpus of ``num_passages`` passages (keys sorted)."""

    keys: np.ndarray  # [K] int64, sorted, unique
    df: np.ndarray  # [K] int64
    num_passages: int

    FILE = "term_statistics.npz"

    def idf(self) -> np.ndarray:
        return np.log((self.num_passages + 1) / (self.df + 0.5)).astype(np.float32)

    def unseen_idf(self) -> float:
        """The IDF of a key in no passage (a query word the corpus lacks): the highest there is."""
        return float(np.log((self.num_passages + 1) / 0.5))

    @classmethod
    def from_keys(cls, token_keys: np.ndarray, row_of_token: np.ndarray, num_passages: int) -> "TermStatistics":
        """From the key and the passage row of every (real) token of a corpus."""
        pairs = np.unique(np.stack([row_of_token.astype(np.int64), token_keys.astype(np.int64)], 1), axis=0)
        keys, df = np.unique(pairs[:, 1], return_counts=True)
        return cls(keys, df.astype(np.int64), int(num_passages))

    @classmethod
    def merge(cls, parts: list["TermStatistics"]) -> "TermStatistics":
        """Statistics of the union of disjoint corpora (e.g. chunks of one corpus)."""
        keys = np.concatenate([p.keys for p in parts]) if parts else np.zeros(0, np.int64)
        df = np.concatenate([p.df for p in parts]) if parts else np.zeros(0, np.int64)
        unique, inverse = np.unique(keys, return_inverse=True)
        return cls(unique, np.bincount(inverse, weights=df, minlength=len(unique)).astype(np.int64), sum(p.num_passages for p in parts))

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, keys=self.keys, df=self.df, num_passages=np.int64(self.num_passages))

    @classmethod
    def load(cls, path: Path) -> "TermStatistics":
        with np.load(path) as data:
            return cls(data["keys"], data["df"], int(data["num_passages"]))


class BagOfWords(nn.Module):
    """A lexical path beside the RNN: the weighted sum of each word's signature, L2-normalised; a word
    (a key) met c times in a text counts 1 + log(c) times, weighted by its corpus IDF (module docstring).

    Signatures are random +-1/sqrt(dim) vectors drawn from the key (bits of a SplitMix64 hash, the same
    on every CPU), computed for the keys of each batch: nothing per word is stored, so the vocabulary
    can be open (a table for GloVe's 400k words at 2048 dims would take 3.3 GB). Different keys are
    nearly orthogonal, so the cosine of two bags approximates the cosine of their weighted key counts:
    a random projection of log-TF-IDF.

    Saved: the learned per-word corrections and a CRC of the vocabulary keys (checked when the
    vocabulary is attached again on load: another stemmer version would give other keys).
    """

    SEED = 20261129

    def __init__(self, num_words: int, dim: int, stemmer: str | None = None, passage_idf_power: float = 1.0):
        super().__init__()
        self.dim, self.stemmer, self.passage_idf_power = dim, stemmer, float(passage_idf_power)
        # exp(correction) multiplies the corpus IDF of each training-vocabulary word; other words: 1.
        self.corrections = nn.Embedding(num_words, 1, padding_idx=0)
        nn.init.zeros_(self.corrections.weight)
        self.register_buffer("keys", torch.zeros(0, dtype=torch.int64), persistent=False)
        self.register_buffer("keys_crc", torch.zeros((), dtype=torch.int64))  # an integer: .to(dtype) leaves it alone
        self.register_buffer("stat_keys", torch.zeros(0, dtype=torch.int64), persistent=False)
        self.register_buffer("stat_idf", torch.zeros(0), persistent=False)
        self.unseen_idf: float | None = None

    # ------------------------------------------------------------------ vocabulary and statistics
    def set_vocabulary(self, words: list[str]) -> None:
        """Keys of the vocabulary (training words, then the extension): ids below ``len(words)``."""
        keys = vocabulary_keys(words, self.stemmer)
        crc = zlib.crc32(keys.tobytes())
        if int(self.keys_crc) not in (0, crc):
            raise ValueError(
                f"the bag-of-words keys of this vocabulary (stemmer {self.stemmer!r}) have CRC {crc}, the checkpoint "
                f"was trained with {int(self.keys_crc)}: another stemmer version or vocabulary"
            )
        self.keys = torch.from_numpy(keys).to(self.keys_crc.device)
        self.keys_crc.fill_(crc)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        attached = len(self.keys) > 0 and int(self.keys_crc) != 0
        expected = int(self.keys_crc)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if attached and int(self.keys_crc) != expected:
            error_msgs.append(f"{prefix}keys: vocabulary keys CRC {expected} differ from the checkpoint's {int(self.keys_crc)}")

    def token_keys(self, ids: torch.Tensor) -> torch.Tensor:
        """Key of every token id (vocabulary: its word's key; hashed ids: the id, tagged)."""
        if not len(self.keys):
            raise RuntimeError("the bag-of-words path has no vocabulary: call set_vocabulary (two_tower.model.vocabulary.attach_vocabulary)")
        in_vocab = ids < len(self.keys)
        return torch.where(in_vocab, self.keys[ids.clamp(max=len(self.keys) - 1)], ids | int(HASHED_KEY_TAG))

    def corpus_statistics(self, values: np.ndarray, offsets: np.ndarray, chunk_tokens: int = 4_000_000) -> TermStatistics:
        """``TermStatistics`` of a tokenized corpus (a ragged array: ``values`` split at ``offsets``), in
        chunks of whole passages so memory stays bounded."""
        parts, start = [], 0
        n = len(offsets) - 1
        while start < n:
            end = int(np.searchsorted(offsets, offsets[start] + chunk_tokens, side="right")) - 1
            end = min(max(end, start + 1), n)
            tokens = torch.from_numpy(np.asarray(values[offsets[start] : offsets[end]], dtype=np.int64))
            rows = np.repeat(np.arange(start, end), np.diff(offsets[start : end + 1]))
            real = (tokens > 1).numpy()
            with torch.no_grad():
                keys = self.token_keys(tokens.to(self.keys.device)).cpu().numpy()
            parts.append(TermStatistics.from_keys(keys[real], rows[real], 0))
            start = end
        stats = TermStatistics.merge(parts)
        stats.num_passages = n
        return stats

    def set_statistics(self, stats: TermStatistics) -> None:
        device = self.keys_crc.device
        self.stat_keys = torch.from_numpy(stats.keys).to(device)
        self.stat_idf = torch.from_numpy(stats.idf()).to(device)
        self.unseen_idf = stats.unseen_idf()

    # ------------------------------------------------------------------ encoding
    def signatures(self, keys: torch.Tensor) -> torch.Tensor:
        """[len(keys), dim] +-1/sqrt(dim) signatures of unique keys."""
        signs = signature_signs(keys.cpu().numpy(), self.dim, self.SEED)
        scale = self.dim**-0.5
        return torch.from_numpy(signs).to(keys.device).float().mul_(2 * scale).sub_(scale)

    def idf(self, keys: torch.Tensor) -> torch.Tensor:
        if self.unseen_idf is None:
            raise RuntimeError("the bag-of-words path has no corpus statistics: call set_statistics with the corpus being ranked")
        if not len(self.stat_keys):
            return torch.full(keys.shape, self.unseen_idf, device=keys.device)
        at = torch.searchsorted(self.stat_keys, keys).clamp(max=len(self.stat_keys) - 1)
        return torch.where(self.stat_keys[at] == keys, self.stat_idf[at], torch.tensor(self.unseen_idf, device=keys.device))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, passages: bool = False) -> torch.Tensor:
        """[B, dim] unit bags; ``passages``: a passage's words weigh IDF ** ``passage_idf_power`` (a query's: IDF)."""
        real = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
        real &= ids > 1  # neither PAD nor UNK
        keys = self.token_keys(ids)
        # A key met c times counts 1 + log(c) times, not c (term frequency saturates, as in BM25): each
        # of its c tokens carries (1 + log c) / c.
        counts = ((keys.unsqueeze(2) == keys.unsqueeze(1)) & real.unsqueeze(1)).sum(2).clamp(min=1).to(self.corrections.weight.dtype)
        num_words = self.corrections.num_embeddings
        corrections = self.corrections(ids.clamp(max=num_words - 1)).squeeze(-1) * (ids < num_words)
        idf = self.idf(keys).to(counts.dtype)
        if passages and self.passage_idf_power != 1.0:
            idf = idf.pow(self.passage_idf_power)
        weights = idf * corrections.exp() * (1 + counts.log()) / counts * real
        unique, inverse = torch.unique(keys, return_inverse=True)
        # embedding_bag sums weighted rows without building the [batch, length, dim] tensor.
        bags = F.embedding_bag(inverse, self.signatures(unique).to(weights.dtype), per_sample_weights=weights, mode="sum")
        return F.normalize(bags, dim=-1)
