"""Word-level tokenizer with an open vocabulary: no word is ever unknown.

Ids, in three ranges:

- ``[0, len(words))``: PAD, UNK and the training vocabulary (saved with the tokenizer);
- ``[len(words), vocab_size)``: the *extension*, every word of the pre-trained vectors that the training
  vocabulary lacks (e.g. the rest of GloVe's 400k words). Not saved: the list is derived from the vectors
  source again when a tokenizer loads (``two_tower.data.embeddings.restore_tokenizer``), checked by a CRC;
- ``[vocab_size, 2**31)``: any other word, at a position given by a stable 64-bit hash of its string
  (BLAKE2b, the same in every process and on every machine; never Python's ``hash()``), so two
  occurrences of ``xj-17b`` in a query and a passage get the same id. Two different unknown words share
  an id with probability about 1 / (2**31 - vocab_size) per pair.

UNK (id 1) only stands for an empty text now.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Iterable

from array import array

import numpy as np

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
ID_LIMIT = 2**31 - 1  # ids are int32 in the prepared splits


def stable_hash(text: str) -> int:
    """A 63-bit hash of ``text`` that is the same in every process, Python version and machine."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little") >> 1


def words_checksum(words: list[str]) -> int:
    return zlib.crc32("\n".join(words).encode("utf-8", "surrogatepass"))

# A word is a run of letters/digits, optionally with inner apostrophes or hyphens ("don't", "e-mail");
# anything else that is not white space is a punctuation token of its own. With ``split_hyphens`` a hyphen
# ends a word ("x-ray" gives "x", "ray"), as BM25 tokenizers do: worth +0.011 MRR@10 to an exact
# log-TF-IDF ranking of marco7k validation (experiments/semantic/README.md).
_WORD = r"[^\W_]+(?:['\-][^\W_]+)*"
_WORD_SPLIT_HYPHENS = r"[^\W_]+(?:'[^\W_]+)*"
_PATTERNS = {
    (keep_punctuation, split_hyphens): re.compile(rf"{word}|[^\w\s]" if keep_punctuation else word)
    for keep_punctuation in (False, True)
    for split_hyphens, word in ((False, _WORD), (True, _WORD_SPLIT_HYPHENS))
}


@functools.cache
def _bmp_marks() -> str:
    """The Basic Multilingual Plane's combining marks, escaped one by one for a regex class: sre matches such a class
    by a bitmap (0.29 s against 0.26 s without marks for marco7k's 12,499 non-ASCII training passages; a class of
    the same marks as ranges took 0.44 s, scanned range by range)."""
    return "".join(re.escape(chr(c)) for c in range(0x300, 0x10000) if unicodedata.category(chr(c))[0] == "M")


@functools.cache
def _astral_mark_ranges() -> str:
    """The combining marks above U+FFFF (Adlam, historic scripts) as ranges for a regex class (slow: see
    ``has_astral_mark``)."""
    ranges, start = [], None
    for c in range(0x10000, 0x110000):  # U+10FFFF is no mark: every range ends inside the loop
        if unicodedata.category(chr(c))[0] == "M":
            start = c if start is None else start
        elif start is not None:
            ranges.append(f"\\U{start:08x}-\\U{c - 1:08x}")
            start = None
    return "".join(ranges)


def combining_marks(astral: bool = False) -> str:
    """The body of a regex character class (no brackets) of Unicode's combining marks (categories Mn, Mc, Me, in
    this Python's Unicode data): the vowel signs and viramas of every Indic script, Hebrew points, Arabic harakat,
    and accents written apart from their letter. ``[^\\W_]`` leaves them out, so a word was cut at each one:
    "हिन्दी भाषा" gave "ह", "न", "द", "भ", "ष". ``astral`` adds the marks above U+FFFF, for the texts that have one."""
    return _bmp_marks() + (_astral_mark_ranges() if astral else "")


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def has_astral_mark(text: str) -> bool:
    """Whether ``text`` has a combining mark above U+FFFF (Adlam, historic scripts; not emoji, which are symbols):
    the class of such marks is a list of ranges, which sre scans slowly, so it is only tried on a text that has a
    character above U+FFFF at all."""
    return _ASTRAL.search(text) is not None and _astral_marks().search(text) is not None


@functools.cache
def _astral_marks() -> re.Pattern:
    return re.compile(f"[{_astral_mark_ranges()}]")


@functools.cache
def _unicode_pattern(keep_punctuation: bool, split_hyphens: bool, astral: bool) -> re.Pattern:
    """``_PATTERNS``' rule with combining marks inside words: a word is letters and digits, each run of marks
    followed by more of them ("हिन्दी"), with inner apostrophes (and hyphens unless ``split_hyphens``)."""
    run = rf"[^\W_]+(?:[{combining_marks(astral)}]+[^\W_]*)*"
    word = rf"{run}(?:'{run})*" if split_hyphens else rf"{run}(?:['\-]{run})*"
    return re.compile(rf"{word}|[^\w\s]" if keep_punctuation else word)


def split_words(text: str, keep_punctuation: bool = False, split_hyphens: bool = False, unicode_words: bool = False) -> list[str]:
    """The words of ``text``, lower-cased. ``unicode_words`` (tokenizers built since 2026-12-07): a text is first
    put in Unicode's composed form (NFC: "café" typed as e + a combining accent is the same word as with "é"), and
    combining marks stay inside their word (``combining_marks``). ASCII text splits the same either way."""
    if unicode_words and not text.isascii():
        text = unicodedata.normalize("NFC", text.lower())
        if _mark_or_astral().search(text):  # most non-ASCII text (curly quotes, accented letters) has no mark left
            return _unicode_pattern(keep_punctuation, split_hyphens, has_astral_mark(text)).findall(text)
        return _PATTERNS[keep_punctuation, split_hyphens].findall(text)
    return _PATTERNS[keep_punctuation, split_hyphens].findall(text.lower())


@functools.cache
def _mark_or_astral() -> re.Pattern:
    """A combining mark of the Basic Multilingual Plane, or any character above U+FFFF: one scan of a text."""
    return re.compile(f"[{combining_marks()}\U00010000-\U0010ffff]")


class Tokenizer:
    """Maps text to word ids (see the module docstring for the three id ranges). Built once from training
    text; saved inside checkpoints and index folders (the extension is named there, not listed)."""

    def __init__(
        self,
        words: list[str],
        max_query_len: int = 32,
        max_passage_len: int = 128,
        keep_punctuation: bool = False,
        split_hyphens: bool = False,
        extension_words: list[str] | None = None,
        extension_source: dict | None = None,
        unicode_words: bool = False,
    ):
        if words[:2] != [PAD, UNK]:
            raise ValueError(f"vocabulary must start with {PAD!r}, {UNK!r}; got {words[:2]}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.extension_words = [w for w in (extension_words or ()) if w not in self.index]
        self.extension_source = extension_source
        for offset, w in enumerate(self.extension_words, start=len(self.words)):
            self.index.setdefault(w, offset)
        self.vocab_size = len(self.words) + len(self.extension_words)
        if self.vocab_size >= ID_LIMIT // 2:
            raise ValueError(f"vocabulary of {self.vocab_size} words leaves too little room for hashed ids")
        self._hashed: dict[str, int] = {}
        self.max_query_len = max_query_len
        self.max_passage_len = max_passage_len
        self.keep_punctuation = keep_punctuation
        self.split_hyphens = split_hyphens
        self.unicode_words = unicode_words  # False for tokenizers saved before it (they split as they did)

    @classmethod
    def build(
        cls,
        train_texts: Iterable[str],
        min_freq: int = 2,
        pretrained_words: set[str] | None = None,
        **settings,
    ) -> "Tokenizer":
        """Vocabulary: training words seen at least ``min_freq`` times, plus every training word that has a
        pre-trained vector. Nothing of validation or evaluation text: what the model can represent at
        test time never depends on having seen the test text (the extension and hashed ids cover it)."""
        settings.setdefault("unicode_words", True)
        rule = (settings.get("keep_punctuation", False), settings.get("split_hyphens", False), settings["unicode_words"])
        counts = Counter(w for t in train_texts for w in split_words(t, *rule))
        vocab = {w for w, n in counts.items() if n >= min_freq}
        if pretrained_words:
            vocab |= {w for w in counts if w in pretrained_words}
        # Most frequent first (ties alphabetical) so ids are stable and reproducible.
        ordered = sorted(vocab, key=lambda w: (-counts.get(w, 0), w))
        return cls([PAD, UNK, *ordered], **settings)

    def hashed_id(self, word: str) -> int:
        """The id of a word outside the vocabulary: ``vocab_size`` + its stable hash modulo the room left."""
        found = self._hashed.get(word)
        if found is None:
            found = self.vocab_size + stable_hash(word) % (ID_LIMIT - self.vocab_size)
            if len(self._hashed) < 1_000_000:
                self._hashed[word] = found
        return found

    def __len__(self) -> int:
        """The saved vocabulary (PAD, UNK, training words): the rows a checkpoint stores."""
        return len(self.words)

    def split(self, text: str) -> list[str]:
        """The words of ``text`` under this tokenizer's rule (punctuation, hyphens), untruncated."""
        return split_words(text, self.keep_punctuation, self.split_hyphens, self.unicode_words)

    def encode(self, text: str, max_len: int) -> list[int]:
        """Word ids of ``text``, truncated to ``max_len``; an empty text (no word) gives [UNK]."""
        index, hashed = self.index, self.hashed_id
        ids = [index.get(w) or hashed(w) for w in self.split(text)[:max_len]]
        return ids or [UNK_ID]

    def word_of(self, token_id: int) -> str | None:
        """The word of a vocabulary or extension id (None for a hashed id)."""
        if token_id < len(self.words):
            return self.words[token_id]
        if token_id < self.vocab_size:
            return self.extension_words[token_id - len(self.words)]
        return None

    def encode_ragged(self, texts: list[str], max_len: int, workers: int = 1, desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every text's ids as one ragged array: (int32 values, int64 offsets); text i is
        ``values[offsets[i]:offsets[i + 1]]``. No Python list per text survives a chunk.

        ``workers`` > 1: chunks are encoded in that many worker processes (spawned: each holds a copy
        of the tokenizer, never of the caller's memory). ``desc``: a progress bar with that label.
        """
        from two_tower.core import progress

        chunks = [texts[i : i + _ENCODE_CHUNK] for i in range(0, len(texts), _ENCODE_CHUNK)]
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        with progress.bar(total=len(texts), desc=desc, unit="text", disable=desc is None, mininterval=2.0) as bar:
            if workers > 1 and len(chunks) > 1:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_set_worker_tokenizer, initargs=(self,)) as pool:
                    for chunk, part in zip(chunks, pool.map(_encode_in_worker, chunks, [max_len] * len(chunks))):
                        parts.append(part)
                        bar.update(len(chunk))
            else:
                for chunk in chunks:
                    parts.append(self._encode_chunk(chunk, max_len))
                    bar.update(len(chunk))
        lengths = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int32)
        return values, offsets

    def _encode_chunk(self, texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        values, lengths = array("i"), array("q")
        for text in texts:
            ids = self.encode(text, max_len)
            values.extend(ids)
            lengths.append(len(ids))
        return np.frombuffer(values, dtype=np.int32).copy(), np.frombuffer(lengths, dtype=np.int64).copy()

    def encode_queries(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t, self.max_query_len) for t in texts]

    def encode_passages(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t, self.max_passage_len) for t in texts]

    def id_ranges(self, *arrays: np.ndarray) -> dict[str, float]:
        """Shares of real tokens (not PAD/UNK) in the training vocabulary, in the extension (a pre-trained
        vector, no training occurrence) and hashed (neither): how open the vocabulary had to be. Over all
        the given id arrays, counted in blocks (no int64 copy of a corpus' tokens)."""
        real = in_words = hashed = 0
        for ids in arrays:
            ids = np.asarray(ids)
            for begin in range(0, len(ids), 1 << 22):
                block = ids[begin : begin + (1 << 22)]
                is_real = block > 1
                real += int(np.count_nonzero(is_real))
                in_words += int(np.count_nonzero(is_real & (block < len(self.words))))
                hashed += int(np.count_nonzero(block >= self.vocab_size))
        total = max(real, 1)
        return {"training vocabulary": in_words / total, "extension": (real - in_words - hashed) / total, "hashed": hashed / total}

    def state_dict(self) -> dict:
        """Everything but the extension's words, which are named by their source, count and CRC."""
        extension = None
        if self.extension_source is not None:
            extension = {"source": self.extension_source, "count": len(self.extension_words), "crc": words_checksum(self.extension_words)}
        return {
            "format": 2,
            "words": self.words,
            "max_query_len": self.max_query_len,
            "max_passage_len": self.max_passage_len,
            "keep_punctuation": self.keep_punctuation,
            **({"split_hyphens": True} if self.split_hyphens else {}),  # absent = False: fingerprints of older tokenizers hold
            **({"unicode_words": True} if self.unicode_words else {}),  # the same
            "extension": extension,
        }

    @classmethod
    def from_state_dict(cls, state: dict, extension_words: list[str] | None = None) -> "Tokenizer":
        """A saved tokenizer; ``extension_words`` (the source's words) are needed when it has an extension
        (``two_tower.data.embeddings.restore_tokenizer`` finds them)."""
        state = dict(state)
        if state.pop("format", 1) != 2:
            raise ValueError("a closed-vocabulary tokenizer (saved before open vocabularies, format 1); retrain the model")
        extension = state.pop("extension", None)
        if extension is None:
            return cls(**state)
        if extension_words is None:
            raise ValueError(f"the tokenizer extends its vocabulary with {extension['source']}, whose words were not given")
        tokenizer = cls(**state, extension_words=extension_words, extension_source=extension["source"])
        if len(tokenizer.extension_words) != extension["count"] or words_checksum(tokenizer.extension_words) != extension["crc"]:
            raise ValueError(
                f"the vocabulary extension from {extension['source']} has {len(tokenizer.extension_words)} words "
                f"(CRC {words_checksum(tokenizer.extension_words)}), the saved tokenizer expects {extension['count']} (CRC {extension['crc']}): "
                "the vectors source changed since training"
            )
        return tokenizer

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.state_dict()).encode()).hexdigest()[:16]


_ENCODE_CHUNK = 20_000  # texts encoded at a time (one task of a worker process)
_worker_tokenizer: Tokenizer | None = None


def _set_worker_tokenizer(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    return _worker_tokenizer._encode_chunk(texts, max_len)


class WindowCount:
    """How many texts fill a tokenizer window of ``max_len`` tokens: those have ``max_len`` or more, and a
    tower reads only their first ``max_len`` (``Tokenizer.encode`` cuts the rest). Fed the token lengths
    of encoded texts, chunk by chunk; ``note`` says it in a line for the log."""

    # At or above this share of texts the note is a warning: a corpus of long documents (Cranfield: 63%), not
    # MS MARCO's few long passages (3.5% of marco7k's), which would warn on every in-domain run.
    WARN_SHARE = 0.1

    def __init__(self, max_len: int, setting: str):
        self.max_len, self.setting = max_len, setting
        self.texts = self.full = 0

    @classmethod
    def of_passages(cls, tokenizer: "Tokenizer") -> "WindowCount":
        return cls(tokenizer.max_passage_len, "data.tokenizer.max_passage_len")

    @classmethod
    def of_queries(cls, tokenizer: "Tokenizer") -> "WindowCount":
        return cls(tokenizer.max_query_len, "data.tokenizer.max_query_len")

    def add(self, lengths: np.ndarray) -> None:
        self.texts += len(lengths)
        self.full += int(np.count_nonzero(np.asarray(lengths) >= self.max_len))

    def note(self, what: str) -> str | None:
        """E.g. "904 of 1400 passages (64.6%) fill the model's window of 128 tokens ...", or None if none do."""
        if not self.full:
            return None
        return (f"{self.full} of {self.texts} {what} ({self.full / max(self.texts, 1):.1%}) fill the model's window of "
                f"{self.max_len} tokens ({self.setting}, fixed when it was trained): words past the first {self.max_len} are not read")

    def log(self, logger, what: str) -> None:
        note = self.note(what)
        if note:
            (logger.warning if self.full >= self.WARN_SHARE * self.texts else logger.info)(note)


def oov_rate(texts: Iterable[str], known, split: Callable[[str], list[str]] = split_words) -> float:
    """Share of word occurrences in ``texts`` that are not in ``known`` (a set or dict of words); ``split``:
    a text's words (e.g. ``Tokenizer.split``)."""
    total = missing = 0
    for text in texts:
        for w in split(text):
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
