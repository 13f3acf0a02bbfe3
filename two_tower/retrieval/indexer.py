"""The ``index.py`` recipe: checkpoint + passages (a split or a file) -> encoded -> FAISS -> index folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from two_tower.data.prepared import Ragged
from two_tower.model.bag import TermStatistics
from two_tower.retrieval.checkpoint import encode_tokens, load_checkpoint, model_identity, progress_bar
from two_tower.retrieval.corpus import Passages, read_corpus_file, split_passages
from two_tower.core.atomic import check_writable
from two_tower.core.threads import set_threads
from two_tower.core.errors import ConfigError, IndexFolderError
from two_tower.retrieval.index import build_faiss, write_index_folder
from two_tower.retrieval.query_encoder import QueryEncoder

log = logging.getLogger(__name__)


def corpus_statistics(module, texts: list[str], chunk: int = 100_000) -> TermStatistics | None:
    """Term statistics of the corpus for the bag-of-words path (None without one), ``chunk`` passages at
    a time; the passages are tokenized again when encoded, so memory stays bounded."""
    if not module.towers.bags():
        return None
    parts = []
    with progress_bar(len(texts), "Counting terms") as bar:
        for start in range(0, len(texts), chunk):
            tokens = Ragged.from_lists(module.tokenizer.encode_passages(texts[start : start + chunk]))
            parts.append(module.towers.corpus_statistics(tokens))
            bar.update(len(tokens))
    return TermStatistics.merge(parts)


def encode_passages(module, texts: list[str], batch_size: int = 512, chunk: int = 100_000, statistics: TermStatistics | None = None) -> np.ndarray:
    """[len(texts), dim] float32 passage vectors, with the checkpoint's tokenizer and passage tower, its
    bag-of-words path (if any) weighing terms by ``statistics`` (default: those of ``texts``).

    Tokenized and encoded ``chunk`` passages at a time, so memory beyond the vectors stays bounded.
    """
    if module.towers.bags():
        module.towers.set_statistics(statistics or corpus_statistics(module, texts, chunk))
    dim = module.towers.passage_encoder.output_dim
    out = np.empty((len(texts), dim), dtype=np.float32)
    with progress_bar(len(texts), "Encoding passages") as bar:
        for start in range(0, len(texts), chunk):
            tokens = Ragged.from_lists(module.tokenizer.encode_passages(texts[start : start + chunk]))
            out[start : start + len(tokens)] = encode_tokens(module.encode_passages, tokens, dim, batch_size, progress=bar).numpy()
    return out


def load_passages(cfg: DictConfig) -> Passages:
    if cfg.corpus:
        return read_corpus_file(cfg.corpus, cfg.corpus_columns.id, cfg.corpus_columns.text)
    return split_passages(cfg.split, cfg.data.path, cfg.data.hub_name, cfg.data.hub_config)


def build_index(cfg: DictConfig) -> Path:
    """Build and write the index folder ``cfg.out``; returns its path."""
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise ConfigError("ckpt is not set: which trained checkpoint encodes the passages? index.py ckpt=PATH/TO/last.ckpt")
    set_threads(cfg.get("threads"))
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise IndexFolderError(f"out={cfg.out} already exists; pass overwrite=true or choose another out=")
    # Before any loading or encoding: the folder the index goes to must take files.
    check_writable(Path(cfg.out).expanduser().resolve().parent, f"out={cfg.out}", min_free_bytes=1 << 20)
    start = time.perf_counter()
    module = load_checkpoint(cfg.ckpt)
    passages = load_passages(cfg)
    # Vectors (float32) and texts dominate the folder's size; refuse now rather than after encoding.
    need = len(passages) * module.towers.passage_encoder.output_dim * 4 + sum(len(t) for t in passages.texts) * 2
    check_writable(Path(cfg.out).expanduser().resolve().parent, f"out={cfg.out}", min_free_bytes=need)
    log.info("Indexing %d passages from %s with %s", len(passages), passages.source, cfg.ckpt)
    loaded = time.perf_counter()
    statistics = corpus_statistics(module, passages.texts)
    vectors = encode_passages(module, passages.texts, cfg.batch_size, statistics=statistics)
    encoded = time.perf_counter()
    index = build_faiss(vectors, cfg.index.factory, cfg.index.train_size, cfg.index.search_params, cfg.seed)
    manifest = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "source": {**passages.source, "texts": passages.texts_hash()},
        "model": model_identity(module, cfg.ckpt),
        "seconds": {"load": round(loaded - start, 2), "encode": round(encoded - loaded, 2), "faiss": round(time.perf_counter() - encoded, 2)},
    }
    path = write_index_folder(cfg.out, index, passages.ids, passages.texts, QueryEncoder.from_module(module), manifest, overwrite=cfg.overwrite, statistics=statistics)
    log.info("Wrote %s (%d passages, %s) in %.1fs", path, len(passages), cfg.index.factory, time.perf_counter() - start)
    log.info('Search it: python search.py index=%s "how long is a marathon"', path)
    return path
