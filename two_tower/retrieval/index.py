"""An index folder: a FAISS index over passage vectors, the passages it holds, the query tower, a manifest.

```
INDEX/
  faiss.index         inner product over the passage vectors the model outputs (unit length); row i is passage i
  passages.arrow      id, text of every row, in index order (Arrow IPC, memory-mapped when loaded)
  query_encoder.pt    query tower + tokenizer of the model that encoded the passages
  term_statistics.npz document frequencies of the passages' terms (only for a model with a bag-of-words
                      path): the IDF the passages were encoded with and the queries are encoded with
  manifest.json       format, the config that built it, the source, the model identity, file hashes
```

The folder answers queries on its own (the query tower is copied in), and records which model made it
(``checkpoint.model_identity``), so a checkpoint that does not match is refused. It is written to a
hidden temporary folder beside the target and renamed into place: an interrupted build leaves no index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import numbers
import os
import pickle
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import torch

from two_tower.core import progress
from two_tower.core.atomic import atomic_folder, sweep_stale_temps
from two_tower.core.commands import command
from two_tower.core.checks import FLOAT32_MAX, whole_number
from two_tower.data.embeddings import provide_static_model
from two_tower.model.bag import TermStatistics
from two_tower.core.errors import ConfigError, EmbeddingsError, IndexFolderError
from two_tower.core.metrics import rank_dense_scored
from two_tower.retrieval.bm25 import SETTINGS_FILE, BM25Scorer
from two_tower.retrieval.query_encoder import QueryEncoder

log = logging.getLogger(__name__)

FORMAT = 4  # 4: vectors as the model outputs them; 3: open vocabulary + term_statistics.npz; 2: passages in Arrow IPC (1 had parquet)
# Formats this code reads: a format-3 folder L2-normalised its vectors (the same rankings, but for passages with
# no readable word under a bag path: a warning says so)
READ_FORMATS = (3, 4)
MANIFEST, FAISS_FILE, PASSAGES_FILE, QUERY_ENCODER_FILE = "manifest.json", "faiss.index", "passages.arrow", "query_encoder.pt"
STATISTICS_FILE = TermStatistics.FILE
BM25_FOLDER = "bm25"  # hybrid search's lexical part (bm25s files), when the folder was built with one
# The distilled static model (a model2vec folder) the query tower's vocabulary extension is derived from, when
# the model uses embeddings=distilled: the folder answers queries without the teacher, model2vec's distill
# extra or a cache, with the very vectors it was built with.
STATIC_MODEL_FOLDER = "static_model"


def unusable_kind(index: faiss.Index) -> str | None:
    """Why an index folder cannot use this FAISS index type, or None. IDMap: the folder numbers its passages
    itself (FAISS refuses ``add`` on it). Fast-scan codes (``...x4fs``): FAISS cannot give their vectors back
    once the index is written and read again (``reconstruct`` crashes the process), and hybrid search and
    feedback read them."""
    def parts(node, attrs):  # the index and those it wraps (OPQ/PCA pre-transforms, IDMap, Refine)
        node = faiss.downcast_index(node)
        yield node
        for attr in attrs:
            if hasattr(node, attr):
                yield from parts(getattr(node, attr), attrs)

    for node in parts(index, ("index", "base_index", "refine_index")):
        if type(node).__name__.startswith("IndexIDMap"):
            return f"{type(node).__name__} holds ids of its own; a folder numbers its passages itself: leave IDMap out"
    for node in parts(index, ("index", "refine_index")):  # where reconstruct reads the vectors from
        if "FastScan" in type(node).__name__:
            return f"{type(node).__name__} (fast-scan codes) cannot give its vectors back after it is written and read (FAISS crashes), which hybrid search and feedback need: use PQ without 'fs'"
    return None


def new_faiss(dim: int, factory: str) -> faiss.Index:
    """An empty ``faiss.index_factory`` index with the inner-product metric (ConfigError for a bad string or
    an index type a folder cannot use)."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ConfigError(f"index.factory={factory!r} is not a FAISS index factory string (e.g. Flat, HNSW32, IVF1024,Flat, OPQ64,IVF1024,PQ64): {err}") from err
    problem = unusable_kind(index)
    if problem:
        raise ConfigError(f"index.factory={factory!r}: {problem}")
    return index


def bytes_per_vector(dim: int, factory: str) -> int:
    """What one vector costs in the written index (codes; graph links and list ids not counted): 4*dim for
    Flat and HNSW, less for compressed codes (PQ, SQ). For the disk-space check before encoding."""
    try:
        return int(new_faiss(dim, factory).sa_code_size())
    except RuntimeError:  # HNSW and a few others do not say: they store the float vectors
        return 4 * dim


def training_rows(num_vectors: int, train_size: int, seed: int = 0) -> np.ndarray:
    """The rows (sorted) an index that needs training is trained on: all of them, or ``train_size`` drawn at random."""
    if num_vectors <= train_size:
        return np.arange(num_vectors)
    return np.sort(np.random.default_rng(seed).choice(num_vectors, train_size, replace=False))


# The training vectors a list FAISS's k-means asks for (39)
FAISS_POINTS_PER_CENTROID = faiss.ClusteringParameters().min_points_per_centroid


def check_trainable(index: faiss.Index, factory: str, train_size: int, num_vectors: int | None = None, bound: str | None = None) -> None:
    """Refuse an IVF ``index`` (empty, of ``factory``) with more lists than the vectors it would train on: at most
    ``train_size``, and the corpus's ``num_vectors`` when known (None: before the passages are read). ``bound``: the
    setting that brought the sample down to ``train_size`` (``index.train_mb=...``), named in place of index.train_size."""
    nlist = 0 if index.is_trained else getattr(faiss.try_extract_index_ivf(index), "nlist", 0)
    vectors = train_size if num_vectors is None else min(train_size, num_vectors)
    if vectors < nlist:
        raise ConfigError(f"index.factory={factory!r} has {nlist} lists but only {vectors} vectors to train on"
                          + (f" ({bound or f'index.train_size={train_size}'}" + (f" of {num_vectors:,} passages" if num_vectors is not None else "") + ": raise it, "
                             if vectors == train_size and (num_vectors is None or train_size < num_vectors) else " (the whole corpus: ")
                          + "or use fewer lists, or Flat)")


_CLUSTERING_WARNING = re.compile(rb"^WARNING clustering (\d+) points to (\d+) centroids: please provide at least (\d+) training points\s*$")


def more_training_vectors(num_vectors: int, train_size: int, bound: str | None = None) -> str:
    """The advice, in a warning of too few training vectors, on how to get more: raise the setting that sized the sample
    (``bound``, e.g. ``index.train_mb``, where it brought the sample below ``index.train_size``); nothing where the sample
    is the whole corpus already (raising index.train_size, as the warnings said, changed nothing)."""
    return "" if num_vectors <= train_size else f"raise {bound or 'index.train_size'}, or "


@contextlib.contextmanager
def faiss_clustering_warnings_counted(factory: str, said_for_lists: int = 0, more: str = "raise index.train_size, or "):
    """FAISS's k-means writes one bare stderr line each time it clusters fewer than 39 vectors a centroid: once per
    PQ sub-quantizer and per OPQ iteration (408 lines for ``OPQ8,IVF16,PQ8`` on 2,000 vectors, a probe). Here the
    C library's stderr is read aside while the index trains; those lines become one warning, the rest is passed on.
    ``said_for_lists``: the IVF's list count when its own warning was already given (its one clustering not counted,
    though a PQ's codebooks of as many centroids are). ``more``: how to get more training vectors (``more_training_vectors``)."""
    with tempfile.TemporaryFile() as aside:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(aside.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            aside.seek(0)
            lines = [(line, _CLUSTERING_WARNING.match(line)) for line in aside.read().splitlines(keepends=True)]
            warned = [found for _, found in lines if found]
            # the IVF's one clustering, warned about already: that one line alone (IVF256,PQ4's four PQ codebooks of 256
            # centroids each were dropped with it as of the same count, and nothing said of the codes)
            ivf = next((i for i, found in enumerate(warned) if int(found[2]) == said_for_lists), None) if said_for_lists else None
            if ivf is not None:
                del warned[ivf]
            rest = b"".join(line for line, found in lines if not found)
            if rest:
                os.write(2, rest)
            if warned:
                points, centroids, wanted = (int(x) for x in warned[0].groups())
                log.warning("index.factory=%r: FAISS's k-means had fewer training vectors than it asks for in %d of its clusterings "
                            "(e.g. %d vectors for %d centroids, it asks for %d): the codes or lists may be poor; %suse a smaller factory",
                            factory, len(warned), points, centroids, wanted, more)


# Vectors added to a graph or quantized index between two moves of its progress bar (a chunk of index.add_chunk
# passages is added in pieces of this many; Flat adds each chunk at once).
ADD_PIECE = 20_000


def reserve_storage(index: faiss.Index, num_vectors: int) -> None:
    """Room for ``num_vectors`` in the flat code storage of an empty ``index`` (Flat, SQ, PQ; an HNSW's vectors, a
    Refine's, behind an OPQ or PCA transform) before they are added a chunk at a time. FAISS grows it as a std::vector,
    reallocated to twice its size when full: the old and the new copy were alive together at an add (index.py at 40,000
    x 8,448-d passages: the 1.1 GB index and its 1.3 GB copy made the build's peak). The codes and the file are the same."""
    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexFlatCodes):
        if node.ntotal == 0 and node.codes.is_owned:
            node.codes.resize(num_vectors * node.code_size)
            node.codes.resize(0)  # empty again; a std::vector keeps its capacity, which each add then fills
        return
    for attr in ("index", "storage", "base_index", "refine_index"):  # IndexPreTransform, IndexHNSW, IndexRefine
        inner = getattr(node, attr, None)
        if isinstance(inner, faiss.Index):
            reserve_storage(inner, num_vectors)


def build_faiss_streamed(
    num_vectors: int,
    dim: int,
    vectors_of,
    chunks,
    factory: str = "Flat",
    train_size: int = 100_000,
    search_params: str | None = None,
    seed: int = 0,
    seconds: dict | None = None,
    normalize: bool = True,
    bound: str | None = None,
) -> faiss.Index:
    """A FAISS index built without holding all float vectors: ``vectors_of(rows)`` gives the vectors of
    the (sorted) ``training_rows`` (called only when the index needs training, e.g. IVF, PQ, OPQ), then
    ``chunks`` (an iterable of [n, dim] arrays, in row order, ``num_vectors`` rows in all) is added one
    chunk at a time. Vectors are L2-normalised here (in place when already contiguous float32), unless
    ``normalize`` is False: ``index.py`` stores a model's passage vectors as the model scores with them (unit
    length, except a passage with no readable word under a bag-of-words path, whose bag part is zero).

    Memory: the index itself (codes, given room for every vector before the first add: ``reserve_storage``) + one
    chunk (dropped before the next is asked for) + the training sample. For ``Flat`` and ``HNSW`` the index is the float vectors, so streaming saves only the copy. ``seconds`` (a dict), if given, gets
    the time spent producing vectors (``vectors``: encoding, for the indexer), training and adding. ``bound``: the
    setting that brought ``train_size`` below index.train_size (``index.train_mb``), named in a warning of too few
    training vectors as the one to raise.
    """
    seconds = {} if seconds is None else seconds
    seconds.update(vectors=0.0, train=0.0, add=0.0)
    index = new_faiss(dim, factory)
    if not index.is_trained:
        rows = training_rows(num_vectors, train_size, seed)
        check_trainable(index, factory, train_size, num_vectors)
        clock = time.perf_counter()
        sample = np.ascontiguousarray(vectors_of(rows), dtype=np.float32)
        seconds["vectors"] += time.perf_counter() - clock
        if normalize:
            faiss.normalize_L2(sample)
        nlist = getattr(faiss.try_extract_index_ivf(index), "nlist", 0)
        said_for_lists = nlist if len(sample) < FAISS_POINTS_PER_CENTROID * nlist else 0
        more = more_training_vectors(num_vectors, train_size, bound)
        if said_for_lists:  # FAISS's own word is a bare stderr line, counted below with the others
            log.warning("index.factory=%r: %d training vectors for %d lists; FAISS's k-means asks for %d a list (%d): the lists, "
                        "and so the search, may be poor; %suse fewer lists", factory, len(sample), nlist,
                        FAISS_POINTS_PER_CENTROID, FAISS_POINTS_PER_CENTROID * nlist, more)
        # FAISS's k-means shows no progress of its own: say it may take long
        log.info("Training %s on %d vectors (FAISS's k-means, no progress shown: minutes for large samples)", factory, len(sample))
        clock = time.perf_counter()
        try:
            with faiss_clustering_warnings_counted(factory, said_for_lists, more):
                index.train(sample)
        except RuntimeError as err:  # e.g. PQ's 2^nbits centroids need at least as many training vectors
            message = " ".join(str(err).rsplit("Error: ", 1)[-1].rsplit("failed: ", 1)[-1].split())  # FAISS's reason, without its C++ location
            raise ConfigError(f"index.factory={factory!r} cannot be trained on {len(rows)} vectors: {message[:300]}; use a smaller factory or Flat") from err
        seconds["train"] += time.perf_counter() - clock
        del sample
    reserve_storage(index, num_vectors)
    # A graph or quantized index spends real time adding (HNSW's graph: ~50 s for 200k passages), which came after the
    # encoding bar had reached 100%, with nothing shown: its own bar, moved every ADD_PIECE vectors. Flat adds at once.
    adding = None if isinstance(index, faiss.IndexFlat) else progress.bar(total=num_vectors, desc=f"Adding to {factory}", unit=" vectors", smoothing=0.1)
    chunks, clock = iter(chunks), time.perf_counter()
    try:
        for chunk in chunks:
            seconds["vectors"] += time.perf_counter() - clock
            clock = time.perf_counter()
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
            if not np.isfinite(chunk).all():
                bad = int(np.flatnonzero(~np.isfinite(chunk).all(1))[0]) + index.ntotal
                raise IndexFolderError(f"passage {bad}: its vector is not finite (NaN or inf): the model's output is broken; nothing was written")
            if normalize:
                faiss.normalize_L2(chunk)
            if adding is None:
                index.add(chunk)
            else:
                for start in range(0, len(chunk), ADD_PIECE):
                    index.add(chunk[start : start + ADD_PIECE])
                    adding.update(len(chunk[start : start + ADD_PIECE]))
            seconds["add"] += time.perf_counter() - clock
            del chunk  # the loop's name kept it alive while the next chunk was made: two chunks at once
            clock = time.perf_counter()
    finally:
        if adding is not None:
            adding.close()
    if index.ntotal != num_vectors:
        raise ValueError(f"the chunks held {index.ntotal} vectors, expected {num_vectors}")
    if search_params:
        set_search_params(index, search_params, f"index.search_params={search_params!r}", factory)
    return index


def build_faiss(vectors: np.ndarray, factory: str = "Flat", train_size: int = 100_000, search_params: str | None = None, seed: int = 0, normalize: bool = True) -> faiss.Index:
    """A FAISS index from ``faiss.index_factory`` (e.g. ``Flat``, ``HNSW32``, ``IVF1024,Flat``) with
    inner-product metric, holding ``vectors`` in row order (L2-normalised here, in place when they are
    already a contiguous float32 array, to save a copy).

    Indexes that need training (IVF, PQ) are trained on a random sample of ``train_size`` vectors.
    ``search_params`` (e.g. ``efSearch=64``, ``nprobe=16``) are set on the index and saved with it.
    (``build_faiss_streamed`` with the vectors in memory: the same index.)
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # normalised in place as the one chunk
    return build_faiss_streamed(len(vectors), vectors.shape[1], lambda rows: vectors[rows], [vectors], factory, train_size, search_params, seed, normalize=normalize)


def search_param_items(params: str | None) -> list[tuple[str, str]]:
    """``nprobe=32,max_codes=100`` as [(name, value), ...], stripped, in order (FAISS's ``ParameterSpace`` text)."""
    items = []
    for text in str(params or "").split(","):
        name, _, value = text.partition("=")
        if name.strip():
            items.append((name.strip(), value.strip()))
    return items


def saved_search_params(manifest: dict) -> str | None:
    """The search parameters a folder was built with (``index.search_params`` of its manifest's config), or None."""
    return ((manifest.get("config") or {}).get("index") or {}).get("search_params")


def effective_search_params(saved: str | None, override: str | None) -> str | None:
    """The search parameters a loaded folder searches with: its saved ones (set again at load), then ``override``'s,
    which change only the ones they name (``nprobe=4,max_codes=100`` then ``nprobe=8``: ``nprobe=8,max_codes=100``)."""
    params = dict(search_param_items(saved)) | dict(search_param_items(override))
    return ",".join(f"{name}={value}" for name, value in params.items()) or None


# The largest nprobe / efSearch / k_factor_rf FAISS keeps as given (a C int).
MAX_SEARCH_PARAM = 2**31 - 1


def set_search_params(index: faiss.Index, params: str, setting: str, kind: str) -> None:
    """Search-time parameters by FAISS's ``ParameterSpace`` names, comma-separated: ``nprobe=32`` (IVF),
    ``efSearch=256`` (HNSW), ``k_factor_rf=4`` (a ``Refine(...)`` index re-ranks k*4 candidates on its finer codes).
    Those three must be from 1 to 2^31 - 1 (whole numbers but k_factor_rf): FAISS takes ``nprobe=0`` and every
    search then stops in its C++ check (a folder saved so could not be searched at all), and it keeps them as C ints,
    so 2^31 wrapped to 0 (the same) and ``efSearch=4294967297`` to 1 (searches returned 1 hit of 5, not the best: a
    probe). ``setting``: how the user gave them (``index.search_params='nprobe=0'``); ``kind``: the index's factory or
    type, for the message. Only text is taken: FAISS read a number (``search_params=256``, Hydra's int for an
    unquoted value) as a combination number of an empty ``ParameterSpace`` and set nothing, silently (a folder built
    so could then not be loaded: its manifest's 256 read back as text)."""
    if not isinstance(params, str):
        raise ConfigError(f"{setting}: must be text naming each parameter, e.g. 'efSearch=256' (HNSW) or 'nprobe=32' (IVF), "
                          f"not {type(params).__name__}")
    for name, value in search_param_items(params):
        if name in ("nprobe", "efSearch", "k_factor_rf"):
            try:
                number = float(value) if name == "k_factor_rf" else int(value)
            except ValueError:
                number = None
            if number is None or not 1 <= number <= MAX_SEARCH_PARAM:
                kind_of = "a number" if name == "k_factor_rf" else "a whole number"
                raise ConfigError(f"{setting}: {name}={value} must be {kind_of} from 1 to {MAX_SEARCH_PARAM}")
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except RuntimeError as err:
        # FAISS's text names its C++ source line; what the user needs is the parameter it could not set
        text = " ".join(str(err).split())
        found = re.search(r"could not set parameter (\S+)", text)
        # "Error in void faiss::...<lambda(...)> at /project/faiss/AutoTune.cpp:444: Error: 'ret == 2' failed: could
        # not interpret parameters nprobe=abc": the words after FAISS's source location and failed check
        said = re.sub(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?", "", text)
        detail = f"it has no parameter {found.group(1)}" if found else said[-200:]
        raise ConfigError(f"{setting} does not apply to this {kind} index ({detail}; HNSW takes efSearch, IVF nprobe, Refine k_factor_rf)") from err


def write_passages(path: Path, ids: list[str], texts: list[str]) -> None:
    """One Arrow record batch with 64-bit offsets (corpora over 2 GB of text fit), uncompressed, so
    loading is a memory map (no decoding: a 1M-passage index opens in well under a second) and
    ``take`` of k rows costs O(k) (on a chunked table it costs O(corpus))."""
    table = pa.table({"id": pa.array(ids, pa.large_string()), "text": pa.array(texts, pa.large_string())})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(len(ids), 1))


# What reading a folder's file raises when the file cannot be opened (permissions, an I/O error) or is
# damaged in a way its hash cannot tell (the manifest rewritten with it): Arrow, torch.load's zip reader, pickle.
UNREADABLE = (OSError, pa.ArrowException, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


@contextlib.contextmanager
def reading(folder: Path, what: str | Path | None = None):
    """Errors reading an index folder's files inside the block are one IndexFolderError line naming the file
    (``what``, else the error's own file name): an unreadable folder (e.g. files of another user, mode 600,
    in a container that runs as uid 10001) or a damaged file is refused, not a traceback."""
    try:
        yield
    except IndexFolderError:
        raise
    except UNREADABLE as err:
        name = what or getattr(err, "filename", None) or folder
        if isinstance(err, PermissionError):
            raise IndexFolderError(f"index={folder}: cannot read {name} (permission denied): the folder and its files must be readable by this user (uid {os.getuid() if hasattr(os, 'getuid') else '?'})") from err
        if str(name).endswith(".pt"):  # torch.load's own text advises weights_only=False for a foreign file
            from two_tower.retrieval.checkpoint import load_problem

            detail = load_problem(name, err)
        else:
            text = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())[:200]
            detail = f"{type(err).__name__}: {text}"
        raise IndexFolderError(f"index={folder}: cannot read {name} ({detail}); rebuild the folder with {command('index')}") from err


def distilled_extension(path: Path) -> bool:
    """Whether the query tower saved at ``path`` extends its vocabulary with embeddings=distilled's vectors."""
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)["tokenizer"]["extension"]["source"]
        return str(source.get("_target_", "")).endswith(".DistilledEmbeddings")
    except Exception:  # noqa: BLE001 (not readable as such: the caller's error stands)
        return False


def read_passages(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def file_hash(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_replaceable(path: str | Path, overwrite: bool, keep: list[str | Path] = ()) -> None:
    """Whether an index folder may be written at ``path``: nothing there, or (with ``overwrite``) an index
    folder (one with a manifest), never another file or folder; and nothing of ``keep`` (e.g. the corpus
    being indexed) lies inside what would be replaced. An IndexFolderError line otherwise."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        return
    # Said first, with or without overwrite: "pass overwrite=true" to a file or a folder of other things was
    # advice the next run refused
    if not (path.is_dir() and (path / MANIFEST).is_file()):
        what = f"a folder with no {MANIFEST}" if path.is_dir() else "a file"
        raise IndexFolderError(f"out={path} is {what}, not an index folder; overwrite=true replaces index folders only, choose another out=")
    if not overwrite:
        raise IndexFolderError(f"out={path}: an index folder already exists there; pass overwrite=true to replace it, or choose another out=")
    for kept in keep:  # only what is there (a corpus named inside out= but absent is the corpus reader's "no such file")
        if path in Path(kept).expanduser().resolve().parents and os.path.lexists(Path(kept).expanduser()):
            raise IndexFolderError(f"out={path} holds {kept}, which replacing it would delete; choose another out=")
    foreign = foreign_entries(path)
    if foreign:  # an index folder built inside it (out=INDEX/sub), notes put there: they went with the old folder
        raise IndexFolderError(f"out={path} holds {foreign[:3]}, which are not the index folder's own (its {MANIFEST} does not name them) "
                               "and replacing it would delete; move them away or choose another out=")


def foreign_entries(path: Path) -> list[str]:
    """What index folder ``path`` holds that its manifest does not name (its files and the folders above them; hidden
    names, a desktop's .DS_Store, are not counted), as paths inside it; none where the manifest cannot be read."""
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
        owned = {MANIFEST, *files} | {parent.as_posix() for name in files for parent in Path(name).parents if parent != Path(".")}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    found = (p.relative_to(path) for p in path.rglob("*"))
    return sorted(name.as_posix() for name in found if not any(part.startswith(".") for part in name.parts)
                  and name.as_posix() not in owned and name.parent.as_posix() in owned | {"."})


def write_index_folder(
    path: str | Path,
    index: faiss.Index,
    ids: list[str],
    texts: list[str],
    query_encoder: QueryEncoder,
    manifest: dict,
    overwrite: bool = False,
    statistics: TermStatistics | None = None,
    lexical: BM25Scorer | None = None,
    hybrid_weights: list[float] | None = None,
    static_model: dict | None = None,
) -> Path:
    """Write the folder atomically (``two_tower.core.atomic.atomic_folder``): everything goes to a temporary
    folder beside it first, then one rename under a lock on the parent folder, so two writers of the same
    ``path`` cannot both succeed without ``overwrite``.

    ``manifest`` (config, source, model identity) is completed with the format, sizes and file hashes.
    An existing folder is replaced only with ``overwrite``. With ``lexical`` (a BM25 index of ``texts``)
    and ``hybrid_weights`` (dense, bm25), ``Searcher`` ranks by their weighted fusion. ``static_model``
    (``{"teacher", "dim", "folder"}``): the distilled model the query tower's vocabulary extension comes from,
    copied into the folder (``STATIC_MODEL_FOLDER``).
    """
    path = Path(path).expanduser().resolve()
    if not len(ids) == len(texts) == index.ntotal:
        raise ValueError(f"{len(ids)} ids, {len(texts)} texts and {index.ntotal} vectors: they must match row for row")
    check_replaceable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path.parent)
    try:
        with atomic_folder(path, replace=overwrite) as tmp:
            faiss.write_index(index, str(tmp / FAISS_FILE))
            write_passages(tmp / PASSAGES_FILE, ids, texts)
            query_encoder.save(tmp / QUERY_ENCODER_FILE)
            files = [FAISS_FILE, PASSAGES_FILE, QUERY_ENCODER_FILE]
            if statistics is not None:
                statistics.save(tmp / STATISTICS_FILE)
                files.append(STATISTICS_FILE)
            if static_model is not None:
                (tmp / STATIC_MODEL_FOLDER).mkdir()
                for source in sorted(Path(static_model["folder"]).iterdir()):
                    if source.is_file() and not source.name.startswith("."):
                        shutil.copyfile(source, tmp / STATIC_MODEL_FOLDER / source.name)
                        files.append(f"{STATIC_MODEL_FOLDER}/{source.name}")
                manifest = {**manifest, "static_model": {"teacher": static_model["teacher"], "dim": int(static_model["dim"])}}
            if lexical is not None:
                files += [f"{BM25_FOLDER}/{name}" for name in lexical.save(tmp / BM25_FOLDER)]
                manifest = {**manifest, "hybrid": {"weights": [float(w) for w in hybrid_weights], "bm25": lexical.settings}}
            manifest = {
                "format": FORMAT,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **manifest,
                "passages": len(ids),
                "faiss": {"type": type(faiss.downcast_index(index)).__name__, "metric": "inner_product", "ntotal": int(index.ntotal), "dim": int(index.d)},
                "files": {name: file_hash(tmp / name) for name in files},
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    except FileExistsError as err:  # another writer finished the same out= first (the commit is locked)
        if err.filename != str(path):
            raise
        raise IndexFolderError(f"{path} was written by another process meanwhile; pass overwrite=true or choose another out=") from err
    return path


class _Owned:
    """An array's memory with the object that owns it: ``np.asarray(_Owned(view, owner))`` keeps ``owner``
    alive as long as the array (a bare ``faiss.rev_swig_ptr`` view does not)."""

    def __init__(self, array: np.ndarray, owner):
        self.__array_interface__, self.owner = array.__array_interface__, owner


@dataclass
class SearchHits:
    """Top-k of a batch of queries: rows into the index, best first; -1 / -inf where fewer than k."""

    rows: np.ndarray  # [Q, k] int64
    scores: np.ndarray  # [Q, k] float32


class PassageIndex:
    """A loaded index folder: search vectors, look passages up by row."""

    def __init__(self, path: Path, index: faiss.Index, passages: pa.Table, manifest: dict):
        self.path, self.index, self.passages, self.manifest = path, index, passages, manifest
        self._vectors_lock, self._vectors_ready, self._flat = threading.Lock(), False, None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @classmethod
    def load(cls, path: str | Path, expect_model: dict | None = None, verify_files: bool = True) -> "PassageIndex":
        """Open an index folder. ``expect_model`` (a ``model_identity``) must match the one that built it;
        ``verify_files`` re-hashes every file against the manifest (about 0.5 s per GB), so a corrupted
        part is refused instead of giving wrong answers or a crash deep inside FAISS."""
        if not isinstance(path, (str, os.PathLike)):  # Path(None) said "expected str, bytes or os.PathLike object", naming nothing
            raise IndexFolderError(f"index={path!r:.60}: give the index folder's path (a str or pathlib.Path), not {type(path).__name__}")
        path = Path(path).expanduser()
        with reading(path):
            manifest = read_manifest(path)
        if expect_model is not None:
            check_model(path, manifest["model"], expect_model, expect_model.get("checkpoint", "the checkpoint"))
        if verify_files:
            for name, digest in manifest["files"].items():
                with reading(path, path / name):
                    actual = file_hash(path / name)
                if actual != digest:
                    raise IndexFolderError(f"{path / name} does not match the hash in {path / MANIFEST}; the folder was modified, rebuild it")
        try:
            index = faiss.read_index(str(path / FAISS_FILE))
        except RuntimeError as err:
            raise IndexFolderError(f"{path / FAISS_FILE}: not a readable FAISS index ({err}); rebuild the folder") from err
        # The index's saved search parameters again: FAISS's file keeps nprobe and efSearch but not max_codes or
        # polysemous ht, which a loaded folder dropped while its manifest still named them (a probe)
        built = saved_search_params(manifest)
        if built:
            try:
                set_search_params(index, str(built), f"index.search_params={built!r}", (manifest.get("faiss") or {}).get("type", "FAISS"))
            except ConfigError as err:
                raise IndexFolderError(f"index={path}: {MANIFEST}: {err}; rebuild the folder") from err
        with reading(path, path / PASSAGES_FILE):
            passages = read_passages(path / PASSAGES_FILE)
        if index.ntotal != len(passages) or index.ntotal != manifest["passages"] or index.d != manifest["model"]["dim"]:
            raise IndexFolderError(
                f"{path}: inconsistent folder: faiss.index holds {index.ntotal} vectors of dim {index.d}, {PASSAGES_FILE} "
                f"{len(passages)} rows, manifest {manifest['passages']} passages of dim {manifest['model']['dim']}; rebuild it"
            )
        if manifest["format"] == 3 and STATISTICS_FILE in manifest["files"]:
            log.warning("%s: built before index folders kept the model's vectors as it outputs them: a passage with no "
                        "readable word ranks higher here than evaluate.py ranks it; rebuild it with %s for the same ranking", path, command("index"))
        return cls(path, index, passages, manifest)

    def load_query_encoder(self) -> QueryEncoder:
        static = self.manifest.get("static_model")
        if static:  # the vocabulary's extension is derived from the folder's own copy of the distilled model
            provide_static_model(static["teacher"], static["dim"], self.path / STATIC_MODEL_FOLDER)
        with reading(self.path, self.path / QUERY_ENCODER_FILE):
            try:
                encoder = QueryEncoder.load(self.path / QUERY_ENCODER_FILE)
            except EmbeddingsError as err:
                if not static and distilled_extension(self.path / QUERY_ENCODER_FILE):
                    # A folder built before 50f6ffa: its queries' word vectors need the distilled model, which it does not
                    # carry, so this machine distils it from the teacher again, and failed (no teacher, no model2vec):
                    # 'embeddings.teacher=...: could not distil it' named a setting search and serve do not have.
                    raise IndexFolderError(
                        f"index={self.path}: built before index folders carried the distilled model its queries' word vectors "
                        f"come from ({STATIC_MODEL_FOLDER}/), and it cannot be distilled again here ({err}): rebuild the folder "
                        f"with {command('index')} (the new one carries it), or install its teacher") from err
                raise
        actual = {"tokenizer": encoder.tokenizer.fingerprint(), "dim": encoder.dim, "query_tower": encoder.weights_hash()}
        check_model(self.path, {k: self.model.get(k) for k in actual}, actual, self.path / QUERY_ENCODER_FILE)
        encoder.set_statistics(self.statistics_for(encoder))
        return encoder

    def statistics_for(self, encoder: QueryEncoder) -> TermStatistics | None:
        """``statistics()``, which a query tower with a bag-of-words path needs: a folder without them is one line
        (it was an AttributeError deep in the bag path)."""
        statistics = self.statistics()
        if statistics is None and getattr(encoder.encoder, "bag", None) is not None:
            raise IndexFolderError(f"index={self.path}: the model has a bag-of-words path and the folder no {STATISTICS_FILE} "
                                   f"(its IDF over the corpus); rebuild the folder with {command('index')}")
        return statistics

    @property
    def hybrid_weights(self) -> list[float] | None:
        """(dense, bm25) weights of the folder's hybrid search; None: a dense-only folder."""
        return (self.manifest.get("hybrid") or {}).get("weights")

    def lexical(self) -> BM25Scorer:
        """The folder's BM25 index (folders built with ``hybrid.enabled``)."""
        if self.hybrid_weights is None:
            raise IndexFolderError(f"{self.path} was built without a BM25 index (dense only); rebuild it with {command('index')} hybrid.enabled=true")
        with reading(self.path, self.path / BM25_FOLDER):
            lexical = BM25Scorer.load(self.path / BM25_FOLDER)
        if lexical.num_passages != len(self):  # another folder's bm25/ (hashes rewritten): a traceback at the first search
            raise IndexFolderError(f"index={self.path}: {BM25_FOLDER}/ indexes {lexical.num_passages} passages and {FAISS_FILE} {len(self)}: "
                                   f"the folder was modified, rebuild it with {command('index')}")
        return lexical

    def statistics(self) -> TermStatistics | None:
        """The term statistics the passages were encoded with (None: the model has no bag-of-words path)."""
        path = self.path / STATISTICS_FILE
        if STATISTICS_FILE not in self.manifest["files"]:
            return None
        with reading(self.path, path):
            statistics = TermStatistics.load(path)
        if statistics.num_passages != len(self):  # another folder's (hashes rewritten): its IDF weighed every query, silently
            raise IndexFolderError(f"index={self.path}: {STATISTICS_FILE} counts {statistics.num_passages} passages and {FAISS_FILE} holds {len(self)}: "
                                   f"the folder was modified, rebuild it with {command('index')}")
        return statistics

    def set_search_params(self, params: str) -> None:
        """Override the saved search-time parameters, e.g. ``efSearch=128`` or ``nprobe=32``."""
        set_search_params(self.index, params, f"search_params={params!r}", self.manifest.get("faiss", {}).get("type", "FAISS"))

    def search(self, vectors: np.ndarray, k: int) -> SearchHits:
        """Top-``k`` rows by inner product with ``vectors`` as given (the query tower's output: what evaluate.py
        scores with); among equal scores the lower row comes first."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        k = check_k(k)
        if not np.isfinite(vectors).all():
            raise ConfigError(f"query {int(np.flatnonzero(~np.isfinite(vectors).all(1))[0]) + 1} of {len(vectors)}: its vector is not finite (NaN or inf): the query tower's output is broken")
        k = min(k, len(self))
        stored = self.flat_tensor()
        if stored is not None:
            # A plain Flat index is ranked by metrics.rank_dense, the exact ranker validation uses (torch
            # matrix products in passage blocks; ties to the lower row, also at the cut-off): 0.12-0.25x
            # FAISS's flat search time for batches of 256 queries, 0.44-1.36x for one query (slower only
            # for narrow vectors), at 5k-1M passages (experiments/retrieval/flat_search_bench.py).
            rows, scores = rank_dense_scored(torch.from_numpy(vectors), stored, k)
            return SearchHits(rows.numpy().astype(np.int64), scores.numpy())
        scores, rows = self.index.search(vectors, k)
        # FAISS pads a short list (an IVF's probed lists held fewer than k) with -3.4e38, not the -inf SearchHits says
        scores[rows < 0] = -np.inf
        # FAISS orders exact ties arbitrarily; put them in row order like metrics.rank_by_scores does.
        # (Which of several tied passages makes it into the top k at the cut-off is still FAISS's choice.)
        order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -scores), axis=-1)
        return SearchHits(np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1))

    def flat_vectors(self) -> np.ndarray | None:
        """A read-only view (no copy) of a plain ``Flat`` inner-product index's stored vectors [passages, dim],
        which keeps the FAISS index alive; None for other index types (subclasses such as Panorama store
        their vectors in another layout)."""
        flat = faiss.downcast_index(self.index)
        if type(flat) not in (faiss.IndexFlat, faiss.IndexFlatIP) or flat.metric_type != faiss.METRIC_INNER_PRODUCT or len(self) == 0:
            return None
        raw = faiss.rev_swig_ptr(flat.get_xb(), len(self) * self.index.d).reshape(len(self), self.index.d)
        view = np.asarray(_Owned(raw, self.index))
        view.flags.writeable = False
        return view

    def flat_tensor(self) -> torch.Tensor | None:
        """``flat_vectors`` as a torch tensor (no copy), made once (under the lock: ``warnings.catch_warnings``
        is not thread-safe, so it is entered once, not in every search); None for other index types."""
        if self._flat is None:
            with self._vectors_lock:
                if self._flat is None:
                    view = self.flat_vectors()
                    with warnings.catch_warnings():  # torch warns that the view is read-only; nothing writes to it
                        warnings.simplefilter("ignore", UserWarning)
                        self._flat = (torch.from_numpy(view),) if view is not None else (None,)
        return self._flat[0]

    def prepare_vectors(self) -> None:
        """Make ``vectors`` usable: IVF indexes get FAISS's direct map (one int64 per passage), once, under
        a lock (building it while another thread reads it fails). IndexFolderError if this index type
        cannot give its vectors back."""
        if self._vectors_ready:  # the common case, on every vectors() call: no lock
            return
        with self._vectors_lock:
            if self._vectors_ready:
                return
            problem = unusable_kind(self.index)  # a folder written before index.py refused these
            if problem:
                raise IndexFolderError(f"{self.path}: {problem}")
            problem = enable_reconstruct(self.index, self.manifest.get("faiss", {}).get("type"))
            if problem:
                raise IndexFolderError(f"{self.path}: {problem}; pseudo-relevance feedback needs Flat, HNSW, IVF, SQ or PQ")
            self._vectors_ready = True

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of ``rows`` [...] as float32 [..., dim]: exact (as the model output them) for Flat, HNSW
        and IVF-Flat, the decoded approximation for compressed codes (SQ, PQ: norms near 1)."""
        self.prepare_vectors()
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise ConfigError(f"rows outside the index's 0..{len(self) - 1}")
        return self.index.reconstruct_batch(np.ascontiguousarray(rows.ravel())).reshape(*rows.shape, self.index.d)

    def lookup(self, rows: np.ndarray) -> tuple[list[str], list[str]]:
        """(ids, texts) of the given rows."""
        taken = self.passages.take(pa.array(np.asarray(rows, dtype=np.int64)))
        return taken.column("id").to_pylist(), taken.column("text").to_pylist()


def enable_reconstruct(index: faiss.Index, kind: str | None = None) -> str | None:
    """Let ``index`` give its stored vectors back (an IVF index gets FAISS's direct map, one int64 a vector);
    None, or what is wrong where its type cannot (``kind``: the type named in the message)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    try:
        index.reconstruct_batch(np.zeros(min(1, index.ntotal), dtype=np.int64))
    except RuntimeError as err:
        kind = kind or type(faiss.downcast_index(index)).__name__
        return f"a {kind} index cannot give its stored vectors back ({' '.join(str(err).split())[:200]})"
    return None


def check_k(k) -> int:
    """How many passages a search returns, as an int, or one ConfigError line."""
    return whole_number("k", k)


def normalised(vectors: np.ndarray) -> np.ndarray:
    """An L2-normalised float32 copy of ``vectors`` [n, d], as the index stores passages (zero rows stay zero)."""
    vectors = np.array(vectors, dtype=np.float32, order="C")
    faiss.normalize_L2(vectors)
    return vectors


def read_manifest(path: Path) -> dict:
    if path.is_file():
        raise IndexFolderError(f"index={path}: a file; give the index folder (the one holding {MANIFEST})")
    if not path.is_dir():
        raise IndexFolderError(f"index={path}: no such folder")
    if not (path / MANIFEST).is_file():
        raise IndexFolderError(f"index={path}: not an index folder (no {MANIFEST}); build one with {command('index')}")
    try:
        manifest = json.loads((path / MANIFEST).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise IndexFolderError(f"index={path}: {MANIFEST} is not valid JSON ({err}); rebuild the folder with {command('index')}") from err
    if not isinstance(manifest, dict):
        raise IndexFolderError(f"index={path}: {MANIFEST} is not a JSON object; rebuild the folder with {command('index')}")
    if manifest.get("format") not in READ_FORMATS:
        raise IndexFolderError(f"index={path}: format {manifest.get('format')!r}, this code reads formats {', '.join(map(str, READ_FORMATS))}; rebuild it")
    absent = [key for key in ("files", "model", "passages") if key not in manifest]
    if absent or not isinstance(manifest["files"], dict) or not isinstance(manifest["model"], dict):
        raise IndexFolderError(f"index={path}: {MANIFEST} lacks {absent or 'a valid files/model entry'}; rebuild the folder with {command('index')}")
    # Edited by hand, these were KeyErrors and tracebacks in the load (a probe)
    whole = lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 0  # noqa: E731
    if not whole(manifest["passages"]) or not whole(manifest["model"].get("dim")):
        raise IndexFolderError(f"index={path}: {MANIFEST}: passages={manifest['passages']!r} and model.dim={manifest['model'].get('dim')!r} "
                               f"must be whole numbers; rebuild the folder with {command('index')}")
    # A part the load reads that is not a JSON object (edited by hand: "faiss": null, "config": {"index": "Flat"}) was an
    # AttributeError and a traceback in the load or the first search (a probe)
    config = manifest.get("config", {})
    for key, value in (("faiss", manifest.get("faiss", {})), ("config", config), ("config.index", config.get("index", {}) if isinstance(config, dict) else {})):
        if not isinstance(value, dict):
            raise IndexFolderError(f"index={path}: {MANIFEST}: {key}={json.dumps(value)[:80]} must be a JSON object; rebuild the folder with {command('index')}")
    static = manifest.get("static_model")
    if static is not None and not (isinstance(static, dict) and isinstance(static.get("teacher"), str) and whole(static.get("dim"))):
        raise IndexFolderError(f"index={path}: {MANIFEST}: static_model={static!r} must name its teacher and dim; rebuild the folder with {command('index')}")
    # Every file of the folder must be named (with its hash) in the manifest: an entry removed from
    # `files` would otherwise switch that file's check off (or, for the term statistics, the file itself).
    # Names of files inside the folder only: "/etc/hostname" or "../x" (with its hash) made a load read and hash a file
    # elsewhere, however large, and load; "" named the folder itself
    outside = [name for name in manifest["files"] if not name or Path(name).is_absolute() or ".." in Path(name).parts]
    if outside:
        raise IndexFolderError(f"index={path}: {MANIFEST} names files outside the folder ({outside[:3]}); the folder was modified, rebuild it")
    required = {FAISS_FILE, PASSAGES_FILE, QUERY_ENCODER_FILE} | ({f"{BM25_FOLDER}/{SETTINGS_FILE}"} if "hybrid" in manifest else set())
    unnamed = sorted(required - set(manifest["files"]))
    # The files a load could read (the folder's own and its BM25 folder's); others (.DS_Store, an NFS
    # .nfs* file, a folder somebody put inside) are not read and do not make the folder unloadable.
    readable = [p for p in (*path.iterdir(), *(path / BM25_FOLDER).rglob("*"), *(path / STATIC_MODEL_FOLDER).rglob("*")) if p.is_file() and not p.name.startswith(".")]
    present = (p.relative_to(path).as_posix() for p in readable)
    unnamed += sorted(name for name in present if name != MANIFEST and name not in manifest["files"] and name not in unnamed)
    if unnamed:
        raise IndexFolderError(f"index={path}: {MANIFEST} does not name {unnamed} in its files (with their hashes); the folder was modified, rebuild it")
    missing = [name for name in manifest["files"] if not (path / name).is_file()]
    if missing:
        raise IndexFolderError(f"index={path}: missing {missing}; rebuild it")
    if "hybrid" not in manifest and any(name.startswith(f"{BM25_FOLDER}/") for name in manifest["files"]):
        # the key removed, the folder searched densely without a word (a probe); BM25 folders came with the key
        raise IndexFolderError(f"index={path}: {MANIFEST} names a BM25 index ({BM25_FOLDER}/) and no hybrid weights; the folder was modified, rebuild it")
    if "hybrid" in manifest:
        weights = (manifest["hybrid"] or {}).get("weights") if isinstance(manifest["hybrid"], dict) else None
        if not valid_hybrid_weights(weights):
            raise IndexFolderError(f"index={path}: {MANIFEST}: hybrid.weights={weights!r}: must be two finite numbers >= 0, not both 0, {WEIGHT_SUM_RULE}; rebuild the folder")
    return manifest


# The sum of fusion weights float32 scores hold: (1e-50, 1e-50) fused every passage to 0 and (7e38, 3e38) to inf,
# so a search ranked the corpus by row, silently (a probe); their ratio alone decides a ranking.
WEIGHT_SUM_RANGE = (float(np.finfo(np.float32).tiny), FLOAT32_MAX)
WEIGHT_SUM_RULE = f"their sum from {WEIGHT_SUM_RANGE[0]:.2g} to {WEIGHT_SUM_RANGE[1]:.2g}, as float32 scores hold"


def valid_hybrid_weights(weights) -> bool:
    """(dense, bm25) fusion weights: two finite numbers >= 0, not both 0, their sum in ``WEIGHT_SUM_RANGE``
    (index.py's hybrid.weights, a manifest's)."""
    return (isinstance(weights, list) and len(weights) == 2
            and all(isinstance(w, numbers.Real) and not isinstance(w, (bool, np.bool_)) and math.isfinite(w) and w >= 0 for w in weights)
            and WEIGHT_SUM_RANGE[0] <= sum(weights) <= WEIGHT_SUM_RANGE[1])


# Recorded for information only: the same model may be loaded from a moved or copied file.
NOT_COMPARED = {"checkpoint"}


def identity_differences(recorded: dict, actual: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two ``model_identity`` dicts (empty = same model);
    nested settings are compared key by key (``encoder.cell: 'gru' vs 'rnn'``)."""
    out = []
    for key in sorted((recorded.keys() | actual.keys()) - NOT_COMPARED):
        a, b = recorded.get(key), actual.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} vs {b!r}")
    return out


def check_model(path: Path, recorded: dict, actual: dict, actual_name) -> None:
    differences = identity_differences(recorded, actual)
    if differences:
        raise IndexFolderError(
            f"index={path} was built by a different model than {actual_name} (index vs given): " + "; ".join(differences)
        )
