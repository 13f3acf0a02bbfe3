"""Word-level tokenizer: lower-cased, punctuation split off (or dropped), a vocabulary with PAD and UNK."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

# A word is a run of letters/digits, optionally with inner apostrophes or hyphens ("don't", "e-mail");
# anything else that is not white space is a punctuation token of its own.
_WORD = r"[^\W_]+(?:['\-][^\W_]+)*"
_WORD_OR_PUNCT = re.compile(rf"{_WORD}|[^\w\s]")
_WORD_ONLY = re.compile(_WORD)


def split_words(text: str, keep_punctuation: bool = False) -> list[str]:
    pattern = _WORD_OR_PUNCT if keep_punctuation else _WORD_ONLY
    return pattern.findall(text.lower())


class Tokenizer:
    """Maps text to word ids. Built once from training text; saved inside checkpoints and indexes."""

    def __init__(
        self,
        words: list[str],
        max_query_len: int = 32,
        max_passage_len: int = 128,
        keep_punctuation: bool = False,
    ):
        if words[:2] != [PAD, UNK]:
            raise ValueError(f"vocabulary must start with {PAD!r}, {UNK!r}; got {words[:2]}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.max_query_len = max_query_len
        self.max_passage_len = max_passage_len
        self.keep_punctuation = keep_punctuation

    @classmethod
    def build(
        cls,
        train_texts: Iterable[str],
        min_freq: int = 2,
        pretrained_words: set[str] | None = None,
        other_texts: Iterable[str] = (),
        **settings,
    ) -> "Tokenizer":
        """Vocabulary: training words seen at least ``min_freq`` times, plus every word of the training
        or ``other_texts`` (e.g. an evaluation corpus) that has a pre-trained vector."""
        keep_punctuation = settings.get("keep_punctuation", False)
        counts = Counter(w for t in train_texts for w in split_words(t, keep_punctuation))
        vocab = {w for w, n in counts.items() if n >= min_freq}
        if pretrained_words:
            vocab |= {w for w in counts if w in pretrained_words}
            vocab |= {w for t in other_texts for w in split_words(t, keep_punctuation) if w in pretrained_words}
        # Most frequent first (ties alphabetical) so ids are stable and reproducible.
        ordered = sorted(vocab, key=lambda w: (-counts.get(w, 0), w))
        return cls([PAD, UNK, *ordered], **settings)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_len: int) -> list[int]:
        """Word ids of ``text``, truncated to ``max_len``; an all-unknown or empty text gives [UNK]."""
        ids = [self.index.get(w, UNK_ID) for w in split_words(text, self.keep_punctuation)[:max_len]]
        return ids or [UNK_ID]

    def encode_queries(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t, self.max_query_len) for t in texts]

    def encode_passages(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t, self.max_passage_len) for t in texts]

    def state_dict(self) -> dict:
        return {
            "words": self.words,
            "max_query_len": self.max_query_len,
            "max_passage_len": self.max_passage_len,
            "keep_punctuation": self.keep_punctuation,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "Tokenizer":
        return cls(**state)

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.state_dict()).encode()).hexdigest()[:16]


def oov_rate(texts: Iterable[str], known, keep_punctuation: bool = False) -> float:
    """Share of word occurrences in ``texts`` that are not in ``known`` (a set or dict of words)."""
    total = missing = 0
    for text in texts:
        for w in split_words(text, keep_punctuation):
            total += 1
            missing += w not in known
    return missing / max(total, 1)


def pad_batch(sequences: list[np.ndarray] | list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad with PAD_ID to the longest sequence; returns (ids [B, T] int64, lengths [B])."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    out = np.full((len(sequences), int(lengths.max(initial=1))), PAD_ID, dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out, lengths


def stem_groups(words: list[str], stemmer: str) -> np.ndarray:
    """Word id -> group id, one group per stem (PyStemmer's ``stemmer``, e.g. "english"); PAD and UNK
    keep groups of their own (0 and 1)."""
    import Stemmer

    stems = Stemmer.Stemmer(stemmer).stemWords(words[2:])
    index: dict[str, int] = {}
    return np.array([0, 1, *(2 + index.setdefault(stem, len(index)) for stem in stems)], dtype=np.int64)
