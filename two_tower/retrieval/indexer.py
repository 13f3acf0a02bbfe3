"""The ``index.py`` recipe: checkpoint + passages (a split or a file) -> encoded -> FAISS -> index folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from two_tower.core.commands import argument, command
from two_tower.data.prepared import Ragged
from two_tower.data.tokenizer import WindowCount
from two_tower.model.bag import TermStatistics
from two_tower.retrieval.bm25 import BM25Scorer
from two_tower.retrieval.checkpoint import encode_tokens, load_checkpoint, model_identity, progress_bar
from two_tower.retrieval.corpus import Passages, check_columns, read_corpus_file, split_passages
from two_tower.core import run_record
from two_tower.core.atomic import check_writable
from two_tower.core.checks import check_config
from two_tower.core.threads import kept, set_threads
from two_tower.core.errors import ConfigError, CorpusError
from two_tower.retrieval.index import check_trainable, build_faiss_streamed, bytes_per_vector, check_replaceable, new_faiss, set_search_params, valid_hybrid_weights, WEIGHT_SUM_RULE, write_index_folder
from two_tower.retrieval.query_encoder import QueryEncoder
from two_tower.retrieval.smoothing import NeighbourSmoothing, prepare_reconstruct

log = logging.getLogger(__name__)


# Above this many passages a Flat index's exact neighbour search for smoothing is worth a warning
EXACT_NEIGHBOURS_WARN = 200_000


def passages_within(count: int, megabytes: float | None, dim: int) -> int:
    """``count`` passages, or fewer where their float32 vectors (``dim`` x 4 bytes each) would pass ``megabytes`` (at
    least one; None: no bound in bytes): a build's chunk (``index.add_chunk``, ``index.add_chunk_mb``) and the sample an
    index trains on (``index.train_size``, ``index.train_mb``), each held whole at its time. A count alone made a bag
    path's 100,000 passages x 8,448 dims 3.4 GB, a chunk as a sample."""
    if megabytes is None:
        return count
    return max(1, min(count, int(megabytes * (1 << 20)) // (4 * dim)))


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


def encoded_chunks(module, texts: list[str], batch_size: int = 512, chunk: int = 100_000, statistics: TermStatistics | None = None, desc: str = "Encoding passages",
                   window: WindowCount | None = None):
    """[n, dim] float32 passage vectors of ``texts``, ``chunk`` passages at a time (a generator), with the
    checkpoint's tokenizer and passage tower, its bag-of-words path (if any) weighing terms by
    ``statistics`` (default: those of ``texts``). Only one chunk's tokens and vectors are alive at once.
    ``window``: counts the passages that fill the tokenizer's window."""
    if module.towers.bags():
        module.towers.set_statistics(statistics or corpus_statistics(module, texts, chunk))
    dim = module.towers.passage_encoder.output_dim
    with progress_bar(len(texts), desc) as bar:
        for start in range(0, len(texts), chunk):
            tokens = Ragged.from_lists(module.tokenizer.encode_passages(texts[start : start + chunk]))
            if window is not None:
                window.add(tokens.lengths)
            yield encode_tokens(module.encode_passages, tokens, dim, batch_size, progress=bar).numpy()


def encode_passages(module, texts: list[str], batch_size: int = 512, chunk: int = 100_000, statistics: TermStatistics | None = None) -> np.ndarray:
    """[len(texts), dim] float32 passage vectors (``encoded_chunks`` gathered in one array)."""
    out = np.empty((len(texts), module.towers.passage_encoder.output_dim), dtype=np.float32)
    start = 0
    for vectors in encoded_chunks(module, texts, batch_size, chunk, statistics):
        out[start : start + len(vectors)] = vectors
        start += len(vectors)
        del vectors  # before the next chunk is encoded (the loop's name kept it alive meanwhile)
    return out


def load_passages(cfg: DictConfig) -> Passages:
    if cfg.corpus and cfg.data.path:
        raise ConfigError(f"corpus={cfg.corpus} and data.path={cfg.data.path}: give the passages one way, a file (corpus=) or a split's folder (data.path=)")
    if cfg.corpus:
        return read_corpus_file(cfg.corpus, cfg.corpus_columns.id, cfg.corpus_columns.text)
    return split_passages(cfg.split, cfg.data.path, cfg.data.hub_name, cfg.data.hub_config)


def lexical_index(cfg: DictConfig, texts: list[str], seconds: dict, source: str = "the passages") -> tuple[BM25Scorer | None, list[float] | None]:
    """The BM25 index and fusion weights of hybrid search (``cfg.hybrid``), or (None, None) for a dense-only folder.
    ``source``: the passages' origin, for an error (``corpus=FILE``)."""
    hybrid = cfg.get("hybrid")
    if hybrid is None:
        return None, None
    if not isinstance(hybrid.enabled, bool):
        raise ConfigError(f"hybrid.enabled={hybrid.enabled!r}: must be true or false")
    if not hybrid.enabled:
        return None, None
    weights = list(hybrid.weights) if OmegaConf.is_list(hybrid.weights) else hybrid.weights
    if not valid_hybrid_weights(weights):
        raise ConfigError(f"hybrid.weights={weights!r}: must be two finite numbers >= 0 (dense, bm25), not both 0, {WEIGHT_SUM_RULE}")
    start = time.perf_counter()
    lexical = BM25Scorer.from_config({k: v for k, v in hybrid.bm25.items() if k != "_target_"}, "hybrid.bm25")
    log.info("Indexing %d passages for BM25 (hybrid search)", len(texts))
    try:
        lexical.index(texts, show_progress=True)
    except CorpusError as err:  # it named neither the passages nor a setting that builds the folder
        raise CorpusError(f"{source}: {err}: hybrid.enabled=false builds a dense-only folder"
                          + (", hybrid.bm25.stopwords=null indexes stopwords too" if lexical.stopwords else "")) from err
    seconds["bm25"] = round(time.perf_counter() - start, 2)
    return lexical, weights


def run_folder() -> str | None:
    """This index.py run's Hydra folder (its log, its config record), None outside a Hydra run: replacing
    an index folder must not delete it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None, throw_on_missing=False)  # unset under the compose API


def static_model_of(encoder: QueryEncoder) -> dict | None:
    """The distilled model the query tower's vocabulary extension is derived from (``embeddings=distilled``),
    which the index folder carries; None for other word vectors (GloVe ships in a package)."""
    from two_tower.data.embeddings import DistilledEmbeddings

    source = encoder.tokenizer.extension_source
    if not source or not str(source.get("_target_", "")).endswith(DistilledEmbeddings.__name__):
        return None
    embeddings = DistilledEmbeddings(teacher=source["teacher"], dim=source["dim"])
    return {"teacher": embeddings.teacher, "dim": embeddings.dim, "folder": embeddings.model_folder()}


def source_words(source: dict) -> str:
    """Where the passages come from, for the log line (it printed the source's dict)."""
    if source.get("kind") == "split":
        return f"the {source['split']} split of {source['path']}"
    return f"the BEIR corpus of {source['path']}" if source.get("kind") == "beir" else str(source.get("path", source))


def build_index(cfg: DictConfig) -> Path:
    """Build and write the index folder ``cfg.out``; returns its path. ``threads`` applies to this call only."""
    with kept():
        return _build_index(cfg)


def _build_index(cfg: DictConfig) -> Path:
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise ConfigError(f"ckpt is not set: which trained checkpoint encodes the passages? {command('index')} ckpt=PATH/TO/last.ckpt")
    set_threads(cfg.get("threads"))
    check_config(cfg, ["batch_size", "index.add_chunk", "index.add_chunk_mb", "index.train_size", "index.train_mb", "seed", "overwrite"])
    smoothing = NeighbourSmoothing.from_config(cfg.get("smooth"))
    if cfg.corpus:  # before the checkpoint loads
        check_columns(cfg.corpus_columns.id, cfg.corpus_columns.text)
    check_replaceable(cfg.out, cfg.overwrite, keep=[p for p in (cfg.corpus, cfg.ckpt, cfg.get("data", {}).get("path"), run_folder()) if p])
    # Before any loading or encoding: the folder the index goes to must take files.
    check_writable(Path(cfg.out).expanduser().resolve().parent, f"out={cfg.out}", min_free_bytes=1 << 20)
    start = time.perf_counter()
    module = load_checkpoint(cfg.ckpt)
    dim = module.towers.passage_encoder.output_dim
    # The factory and its settings on an empty index of it, before the passages are read (a probe waited 30 s for
    # the corpus and its BM25 index to hear that IVF300000 cannot train on index.train_size=100000 vectors).
    empty = new_faiss(dim, cfg.index.factory)
    train_mb = cfg.index.get("train_mb")
    train_size = passages_within(cfg.index.train_size, train_mb, dim)
    bound = f"index.train_mb={train_mb} holds {train_size:,} {dim:,}-d vectors of index.train_size={cfg.index.train_size}" if train_size < cfg.index.train_size else None
    check_trainable(empty, cfg.index.factory, train_size, bound=bound)
    if cfg.index.search_params:  # smoothing searches with them too
        set_search_params(empty, cfg.index.search_params, f"index.search_params={cfg.index.search_params!r}", cfg.index.factory)
    passages = load_passages(cfg)
    check_trainable(empty, cfg.index.factory, train_size, len(passages), bound=bound)  # before BM25 and encoding
    if not empty.is_trained and train_size < min(cfg.index.train_size, len(passages)):
        log.info("Encoding %d sampled passages to train %s, not %d (index.train_size=%d of %d passages): index.train_mb=%s holds %d "
                 "%d-d float vectors (%d bytes a passage); raise index.train_mb, or set it to null, to train on more", train_size,
                 cfg.index.factory, min(cfg.index.train_size, len(passages)), cfg.index.train_size, len(passages), train_mb, train_size, dim, 4 * dim)
    # Vectors (float32) and texts dominate the folder's size; refuse now rather than after encoding.
    need = len(passages) * bytes_per_vector(dim, cfg.index.factory) + sum(len(t) for t in passages.texts) * 2
    check_writable(Path(cfg.out).expanduser().resolve().parent, f"out={cfg.out}", min_free_bytes=need)
    log.info("Indexing %d passages from %s with %s", len(passages), source_words(passages.source), cfg.ckpt)
    run_record.work_started()  # a refusal from here on keeps the run folder's log of what ran
    loaded = time.perf_counter()
    lexical, weights = lexical_index(cfg, passages.texts, bm25_seconds := {}, f"corpus={cfg.corpus}" if cfg.corpus else source_words(passages.source))
    texts, chunk = passages.texts, passages_within(cfg.index.add_chunk, cfg.index.get("add_chunk_mb"), dim)
    if chunk < min(cfg.index.add_chunk, len(texts)):
        log.info("Encoding %d passages at a time (index.add_chunk_mb=%s of %d-d float vectors, %d bytes a passage)", chunk, cfg.index.add_chunk_mb, dim, 4 * dim)
    statistics = corpus_statistics(module, texts, chunk)
    # Streamed: the index trains on the vectors of a sample (if it needs training), then each chunk of
    # passages is encoded and added; the float vectors of the whole corpus never exist at once.
    index = build_faiss_streamed(
        len(texts),
        dim,
        lambda rows: encode_passages(module, [texts[r] for r in rows], cfg.batch_size, chunk, statistics),
        encoded_chunks(module, texts, cfg.batch_size, chunk, statistics, window=(window := WindowCount.of_passages(module.tokenizer))),
        cfg.index.factory,
        train_size,
        cfg.index.search_params,
        cfg.seed,
        seconds := {},
        normalize=False,  # the vectors the model scores with, as evaluate.py and validation rank them
        bound="index.train_mb" if bound else None,
    )
    window.log(log, "passages")
    if smoothing is not None:
        # the stored vectors moved towards their neighbours: a second index of the same factory from the first
        log.info("Smoothing every passage towards its %d nearest (weight %s)", smoothing.neighbours, smoothing.weight)
        if len(texts) > EXACT_NEIGHBOURS_WARN and index.__class__.__name__ in ("IndexFlat", "IndexFlatIP"):
            log.warning("Finding exact neighbours of %d passages in a Flat index takes time growing with the square of the corpus "
                        "(hours at millions): an HNSW or IVF index (index.factory) finds approximate ones far faster", len(texts))
        raw, clock = index, time.perf_counter()
        prepare_reconstruct(raw)
        index = build_faiss_streamed(
            len(texts), dim, lambda rows: smoothing.vectors(raw, rows), smoothing.chunks(raw, chunk), cfg.index.factory, train_size, cfg.index.search_params, cfg.seed,
            normalize=False, bound="index.train_mb" if bound else None,
        )
        del raw
        seconds["smooth"] = time.perf_counter() - clock
    manifest = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "source": {**passages.source, "texts": passages.texts_hash()},
        "model": model_identity(module, cfg.ckpt),
        "passage_window": {"tokens": window.max_len, "passages_filling_it": window.full},
        "seconds": {"load": round(loaded - start, 2), "encode": round(seconds["vectors"], 2), "faiss_train": round(seconds["train"], 2), "faiss_add": round(seconds["add"], 2), **({"smooth": round(seconds["smooth"], 2)} if "smooth" in seconds else {}), **bm25_seconds},
    }
    encoder = QueryEncoder.from_module(module)
    path = write_index_folder(cfg.out, index, passages.ids, passages.texts, encoder, manifest, overwrite=cfg.overwrite, statistics=statistics,
                              lexical=lexical, hybrid_weights=weights, static_model=static_model_of(encoder))
    log.info("Wrote %s (%d passages, %s) in %.1fs", path, len(passages), cfg.index.factory, time.perf_counter() - start)
    # a command line to paste: a folder whose name has a space or a comma was named unquoted, and the line failed
    log.info('Search it: %s %s "your query"; serve it: %s %s', command("search"), argument("index", path), command("serve"), argument("index", path))
    return path
