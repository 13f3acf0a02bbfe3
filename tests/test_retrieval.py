"""Index, search and evaluate on synthetic data: the shared tiny checkpoint (conftest tiny_run) serves every test."""

from __future__ import annotations

import json
import logging
import math
import shutil
import re
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from tests.conftest import CONF, ROOT, TINY_RUN
from two_tower.data import msmarco
from two_tower.data.prepared import PreparedSplit, Ragged
from two_tower.data.tokenizer import PAD, UNK, Tokenizer
from two_tower.retrieval import index as index_module
from two_tower.retrieval.bm25 import BM25Retriever
from two_tower.retrieval.corpus import read_corpus_file
from two_tower.retrieval.dense import DenseRetriever
from two_tower.core.errors import CheckpointError, ConfigError, CorpusError, EmptyQueryError, IndexFolderError
from two_tower.core import per_query
from two_tower.retrieval.evaluate import evaluate, evaluate_split
from two_tower.retrieval.hybrid import ReciprocalRankFusion, WeightedScoreFusion
from two_tower.retrieval.index import PassageIndex, build_faiss
from two_tower.retrieval.indexer import build_index
from two_tower.retrieval.retriever import SplitRetriever
from two_tower.retrieval.search import Searcher
from two_tower.cli.search import main as search_main


def compose_retrieval(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name, overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_run):
    """The shared tiny checkpoint (with the stemmed bag-of-words path, so index, search and evaluate redraw
    its signatures on load), its logged validation metrics, its validation split as a jsonl shard folder,
    and an index of that split."""
    root = tmp_path_factory.mktemp("retrieval")
    assert "encoder.bag_dim=16" in TINY_RUN and "encoder.bag_stemmer=english" in TINY_RUN
    ckpt, data, index = tiny_run["ckpt"], tiny_run["data"], root / "index"
    build_index(compose_retrieval("index", [f"ckpt={ckpt}", f"data.path={data}", f"out={index}"]))
    return {"root": root, "ckpt": ckpt, "metrics": tiny_run["metrics"], "data": data, "index": index}


def validation_split(data: Path) -> PreparedSplit:
    rows, _ = msmarco.validate_rows(msmarco.load_split("validation", str(data)), "validation", for_training=False)
    return PreparedSplit.from_rows(rows, Tokenizer([PAD, UNK]))


# ----------------------------------------------------------------------------------------- index + search


def test_round_trip_finds_each_passage_by_its_own_text(trained):
    searcher = Searcher.load(trained["index"])
    split = validation_split(trained["data"])
    assert len(searcher.index) == split.num_passages
    assert searcher.index.passages.column("text").num_chunks == 1  # lookups cost O(k), not O(corpus)
    # Shared towers: a passage that fits in max_query_len, searched as a query, is its own nearest vector.
    limit = searcher.encoder.tokenizer.max_query_len
    short = [i for i, t in enumerate(split.passage_texts) if len(searcher.encoder.tokenizer.encode(t, 1000)) <= limit][:20]
    assert len(short) >= 5
    results = searcher.search([split.passage_texts[i] for i in short], k=3)
    for i, hits in zip(short, results):
        assert len(hits) == 3
        assert hits[0].id == str(i) and hits[0].text == split.passage_texts[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].score >= hits[1].score >= hits[2].score


def test_hits_on_one_passage_share_its_text(trained):
    """A batch's hits on the same passage hold one copy of its id and text (10,000 queries at k=100 held a
    million texts: 1.6 GB); every hit still has its own passage's id and text, in the same order and scores."""
    searcher = Searcher.load(trained["index"])
    split = validation_split(trained["data"])
    queries = [split.query_texts[r] for r in split.evaluated_queries()[:12]]
    results = searcher.search(queries, k=len(searcher.index))  # every passage, for every query
    one_by_one = [searcher.search([q], k=len(searcher.index))[0] for q in queries[:3]]
    for hits, alone in zip(results, one_by_one):
        assert [(h.id, h.text) for h in hits] == [(h.id, h.text) for h in alone]
    first = {}
    for hits in results:
        assert len(hits) == len(searcher.index)
        for hit in hits:
            assert hit.text == split.passage_texts[int(hit.id)]
            assert first.setdefault(hit.id, hit).text is hit.text and first[hit.id].id is hit.id

def test_search_matches_brute_force_over_the_checkpoint_vectors(trained):
    searcher = Searcher.load(trained["index"], hybrid=False)
    dense = DenseRetriever(str(trained["ckpt"]))
    split = validation_split(trained["data"])
    dense.prepare(split)
    rows = split.evaluated_queries()[:25]
    results = searcher.search([split.query_texts[r] for r in rows], k=10)
    brute = dense.rankings(rows, 10)
    for hits, ids, scores in zip(results, brute.ranked.tolist(), brute.scores.tolist()):
        assert [h.id for h in hits] == [str(i) for i in ids]
        assert [h.score for h in hits] == pytest.approx(scores, abs=1e-5)


def test_encoder_gives_the_vectors_evaluate_and_validation_rank_by(trained, tmp_path):
    """The Python encoding API: passage and query vectors equal evaluate.py's dense retriever's (which reproduces
    the logged validation), and their inner products rank as validation ranks; the corpus's statistics are
    counted once and can be saved and given back; misuse is one error naming it."""
    from two_tower.core.metrics import mean_metrics, rank_dense, split_per_query
    from two_tower.model.bag import TermStatistics
    from two_tower.retrieval.encoder import Encoder

    split = validation_split(trained["data"])
    rows = split.evaluated_queries()
    encoder = Encoder.load(trained["ckpt"])
    assert encoder.needs_corpus  # the shared tiny model has a bag-of-words path
    with pytest.raises(ConfigError, match=r"call fit_corpus\(passages\) with the whole corpus first"):
        encoder.encode_queries(["a query"])
    statistics = encoder.fit_corpus(split.passage_texts)
    passages = encoder.encode_passages(split.passage_texts)
    queries = encoder.encode_queries([split.query_texts[r] for r in rows])
    assert passages.dtype == np.float32 and passages.shape == (split.num_passages, encoder.dim) and queries.shape == (len(rows), encoder.dim)
    dense = DenseRetriever(str(trained["ckpt"]))
    dense.prepare(split)
    np.testing.assert_allclose(passages, dense.passages.numpy(), atol=1e-6)
    np.testing.assert_allclose(queries, dense.queries[rows].numpy(), atol=1e-6)
    ranked = rank_dense(torch.from_numpy(queries), torch.from_numpy(passages), 100)
    _, values = split_per_query(ranked, None, split.relevance(rows))
    assert mean_metrics(values)["mrr@10"] == pytest.approx(trained["metrics"]["val/mrr@10"], abs=1e-6)
    # passages encoded in two calls share the corpus's weights: the same vectors as one call
    half = split.num_passages // 2
    parts = np.concatenate([encoder.encode_passages(split.passage_texts[:half]), encoder.encode_passages(split.passage_texts[half:])])
    np.testing.assert_allclose(parts, passages, atol=1e-6)
    # statistics saved and given back: the same vectors without counting the corpus again
    statistics.save(tmp_path / "stats.npz")
    again = Encoder.load(trained["ckpt"], statistics=TermStatistics.load(tmp_path / "stats.npz"))
    np.testing.assert_allclose(again.encode_queries([split.query_texts[r] for r in rows]), queries, atol=1e-6)
    with pytest.raises(ConfigError, match="give a list of query texts, not one string"):
        encoder.encode_queries("one query")
    with pytest.raises(ConfigError, match=r"passage 2 of 2 is not text \(int: 7\)"):
        encoder.encode_passages(["a passage", 7])
    with pytest.raises(EmptyQueryError, match=r"query 2 of 2 has no searchable word \('\?\?'\)"):
        encoder.encode_queries(["a query", "??"])
    # a lone surrogate (bytes that were not UTF-8): search.py refused it, the Python API searched (a helper's probe)
    with pytest.raises(EmptyQueryError, match=r"query 2 of 2 is not text that UTF-8 can hold \('\\udcff' at 4"):
        encoder.encode_queries(["a query", "mara\udcffthon"])


def test_encoder_reads_any_iterable_of_texts_once_and_refuses_an_empty_corpus(trained):
    """A generator of texts is read once: fit_corpus checked it and then read it again, empty, and counted a corpus
    of 0 passages (every word weighed alike from then on, silently); encode_passages failed on len() with a
    traceback. A corpus of no passages, or a non-iterable, is one error."""
    from two_tower.retrieval.encoder import Encoder

    texts = validation_split(trained["data"]).passage_texts
    encoder = Encoder.load(trained["ckpt"])
    statistics = encoder.fit_corpus(text for text in texts)
    assert statistics.num_passages == len(texts)
    listed = Encoder.load(trained["ckpt"])
    listed.fit_corpus(texts)
    np.testing.assert_allclose(encoder.encode_passages(text for text in texts[:7]), listed.encode_passages(texts[:7]), atol=1e-6)
    np.testing.assert_allclose(encoder.encode_queries(iter(texts[:3])), listed.encode_queries(texts[:3]), atol=1e-6)
    with pytest.raises(ConfigError, match=r"fit_corpus\(\) was given no passages"):
        encoder.fit_corpus(iter([]))
    with pytest.raises(ConfigError, match=r"give a list of query texts, not int \(5\)"):
        encoder.encode_queries(5)


def test_encoder_statistics_given_as_their_file_or_refused_in_one_line(trained, tmp_path):
    """use_statistics (and Encoder.load's statistics=) read "an index folder's term_statistics.npz", as its docstring
    says, from its path; a path was an AttributeError traceback ('PosixPath' object has no attribute 'keys'), as was
    anything else not TermStatistics."""
    from two_tower.model.bag import TermStatistics
    from two_tower.retrieval.encoder import Encoder

    texts = validation_split(trained["data"]).query_texts
    encoder = Encoder.load(trained["ckpt"])
    # statistics given as their file (an index folder's term_statistics.npz), or as something else: one error each
    from_file = Encoder.load(trained["ckpt"], statistics=trained["index"] / "term_statistics.npz")
    loaded = Encoder.load(trained["ckpt"], statistics=TermStatistics.load(trained["index"] / "term_statistics.npz"))
    np.testing.assert_array_equal(from_file.encode_queries(texts[:3]), loaded.encode_queries(texts[:3]))
    (tmp_path / "not_statistics.npz").write_text("hello")
    for given, message in ((trained["index"], r"statistics=.*index: a folder; give the file \(an index folder's is .*term_statistics\.npz\)"),
                           (tmp_path / "none.npz", r"statistics=.*none\.npz: no such file"),
                           (tmp_path / "not_statistics.npz", r"statistics=.*not_statistics\.npz: not a term statistics file \("),
                           ({"keys": []}, r"statistics: give TermStatistics \(what fit_corpus returns\) or the path of their file, not dict")):
        with pytest.raises(ConfigError, match=message):
            encoder.use_statistics(given)


def test_encoder_of_a_model_without_a_bag_refuses_statistics(trained):
    """Statistics given to a model without a bag-of-words path were accepted and never read (a probe)."""
    from two_tower.model.bag import TermStatistics
    from two_tower.model.module import TwoTowerModule
    from two_tower.retrieval.checkpoint import load_checkpoint
    from two_tower.retrieval.encoder import Encoder

    tokenizer = load_checkpoint(trained["ckpt"]).tokenizer
    module = TwoTowerModule(len(tokenizer), 8, {"_target_": "two_tower.model.encoders.RNNEncoder", "cell": "gru", "hidden_size": 8, "dim": 8},
                            {"_target_": "two_tower.model.losses.InfoNCELoss"}, {"_target_": "torch.optim.Adam", "_partial_": True})
    module.attach_tokenizer(tokenizer)
    module.eval()
    assert not Encoder(module).needs_corpus and Encoder(module).encode_queries(["a query"]).shape == (1, 8)
    with pytest.raises(ConfigError, match="statistics: this model has no bag-of-words path"):
        Encoder(module, statistics=TermStatistics.load(trained["index"] / "term_statistics.npz"))


def test_encoder_refuses_the_queries_searcher_refuses_in_its_words(trained):
    """One rule for a query with nothing to search (QueryEncoder's, which Searcher and serve apply): the Encoder had its
    own copy, which named an empty query as having "no searchable word" and "query 1 of 1" where Searcher says it is
    empty and "the query"."""
    from two_tower.retrieval.encoder import Encoder

    encoder = Encoder.load(trained["ckpt"])
    encoder.fit_corpus(validation_split(trained["data"]).passage_texts)
    searcher = Searcher.load(trained["index"])
    for queries in ([""], ["   "], ["??"], ["a query", ""], ["a query", "\u200b"]):
        with pytest.raises(EmptyQueryError) as by_searcher:
            searcher.search(queries)
        with pytest.raises(EmptyQueryError) as by_encoder:
            encoder.encode_queries(queries)
        assert str(by_encoder.value) == str(by_searcher.value)


def test_encoders_sharing_a_module_keep_their_own_corpus_statistics(trained):
    """fit_corpus set the module's statistics: of two encoders of one module (one model, two corpora), the second's
    fit_corpus changed the first's vectors, silently, as it changed a module used elsewhere (a training module, a
    DenseRetriever's). Each encoder weighs words by its own corpus; the module's statistics stay as they were."""
    from two_tower.retrieval.checkpoint import load_checkpoint
    from two_tower.retrieval.encoder import Encoder

    split = validation_split(trained["data"])
    first, second = split.passage_texts[: split.num_passages // 2], split.passage_texts[split.num_passages // 2 :]
    queries = split.query_texts[:8]
    alone = Encoder.load(trained["ckpt"])
    alone.fit_corpus(first)
    expected = alone.encode_queries(queries), alone.encode_passages(first[:20])

    module = load_checkpoint(trained["ckpt"])
    own = module.towers.corpus_statistics(Ragged.from_lists(module.tokenizer.encode_passages(second)))
    module.towers.set_statistics(own)  # the module's own weights, e.g. the corpus its user ranks
    before = [tensor.clone() for tensor, _, _ in module.towers.statistics_state()]
    a, b = Encoder(module), Encoder(module)
    a.fit_corpus(first)
    b.fit_corpus(second)
    np.testing.assert_allclose(a.encode_queries(queries), expected[0], atol=1e-6)
    np.testing.assert_allclose(a.encode_passages(first[:20]), expected[1], atol=1e-6)
    assert np.abs(b.encode_queries(queries) - expected[0]).max() > 1e-3  # the other corpus's weights: other vectors
    assert all(torch.equal(x, y) for x, (y, _, _) in zip(before, module.towers.statistics_state()))
    # a module in training mode (with dropout): the same vectors, and it stays in training mode
    for tower in (module.towers.query_encoder, module.towers.passage_encoder):
        tower.dropout.p = 0.5
    module.train()
    np.testing.assert_allclose(a.encode_queries(queries), expected[0], atol=1e-6)
    assert module.training and all(part.training for part in module.modules())


def test_encoder_says_how_many_texts_fill_the_towers_window_as_index_and_evaluate_do(trained, caplog):
    """A tower reads a text's first max_passage_len (max_query_len) words: index.py and evaluate.py log how many texts
    that cuts, the Encoder cut them silently."""
    import logging

    from two_tower.retrieval.encoder import Encoder

    encoder = Encoder.load(trained["ckpt"])
    tokenizer = encoder.module.tokenizer
    long = " ".join(["alpha", "beta"] * tokenizer.max_passage_len)
    passages = [long, "a short passage", "another short one"]
    encoder.fit_corpus(passages)
    with caplog.at_level(logging.INFO, logger="two_tower"):
        encoder.encode_passages(passages)
        encoder.encode_queries(["a short query", " ".join(["gamma"] * tokenizer.max_query_len)])
    notes = [(r.levelname, r.getMessage()) for r in caplog.records if "fill the model's window" in r.getMessage()]
    assert notes == [
        ("WARNING", f"1 of 3 passages (33.3%) fill the model's window of {tokenizer.max_passage_len} tokens (data.tokenizer.max_passage_len, "
                    f"fixed when it was trained): words past the first {tokenizer.max_passage_len} are not read"),
        ("WARNING", f"1 of 2 queries (50.0%) fill the model's window of {tokenizer.max_query_len} tokens (data.tokenizer.max_query_len, "
                    f"fixed when it was trained): words past the first {tokenizer.max_query_len} are not read"),
    ]


def test_flat_search_is_exact_including_tie_order():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors[300] = vectors[100]  # an exact tie: the lower row must come first
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    queries[0] = vectors[100] * 3
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = PassageIndex(Path("."), build_faiss(vectors, "Flat"), None, {})
    hits = index.search(queries, k=20)
    scores = queries @ vectors.T
    for q in range(len(queries)):
        want = sorted(range(len(vectors)), key=lambda p: (-scores[q, p], p))[:20]
        assert hits.rows[q].tolist() == want
        assert hits.scores[q] == pytest.approx(scores[q, want], abs=1e-5)
    assert hits.rows[0, :2].tolist() == [100, 300]
    # Non-finite vectors are refused, not ranked (a NaN passage would come first for every query).
    broken = vectors.copy()
    broken[7] = np.nan
    with pytest.raises(IndexFolderError, match="passage 7: its vector is not finite"):
        build_faiss(broken, "Flat")
    with pytest.raises(ConfigError, match="query 2 of 2: its vector is not finite"):
        index.search(np.stack([queries[0], broken[7]]), k=3)
    # Concurrent searches leave the process's warning filters alone (catch_warnings is not thread-safe).
    from concurrent.futures import ThreadPoolExecutor
    import warnings

    filters = list(warnings.filters)
    fresh = PassageIndex(Path("."), build_faiss(vectors, "Flat"), None, {})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda q: fresh.search(queries[q % 30 : q % 30 + 1], k=5), range(200)))
    assert warnings.filters == filters
    # A tie exactly at the cut-off: of two equal passages competing for the last place, the lower row.
    cut = np.argsort(-scores[1])[9]  # query 1's 10th passage
    vectors[450] = vectors[cut]
    index = PassageIndex(Path("."), build_faiss(vectors, "Flat"), None, {})
    top = index.search(queries[1:2], k=10).rows[0].tolist()
    assert top[-1] == min(cut, 450) and max(cut, 450) not in top


@pytest.mark.parametrize("factory, params", [("HNSW32", "efSearch=64"), ("IVF4,Flat", "nprobe=4")])
def test_approximate_factories_build_and_find_the_nearest(factory, params):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(400, 16)).astype(np.float32)
    index = build_faiss(vectors, factory, train_size=200, search_params=params)
    scores, rows = index.search(vectors[:10] / np.linalg.norm(vectors[:10], axis=1, keepdims=True), 1)
    assert rows[:, 0].tolist() == list(range(10))  # each vector's nearest is itself
    with pytest.raises(ValueError, match=re.escape("has 4 lists but only 3 vectors to train on (the whole corpus: or use fewer lists, or Flat)")):
        build_faiss(vectors[:3], "IVF4,Flat")
    with pytest.raises(ValueError, match=re.escape("only 3 vectors to train on (index.train_size=3 of 400 passages: raise it, or use fewer lists")):
        build_faiss(vectors, "IVF4,Flat", train_size=3)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (the structure IVF and PQ are meant for)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = (centres[rng.integers(clusters, size=n)] + 0.4 * rng.normal(size=(n, dim))).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "IVF8,PQ4x4", "OPQ4,IVF8,PQ4x4,Refine(SQfp16)"])
def test_streamed_build_is_the_in_memory_build(factory):
    """Trained on the vectors of the sampled rows only, then added in uneven chunks: the same index, byte
    for byte. (Not HNSW: its graph depends on the order of insertion batches and threads.)"""
    vectors = clustered(700, 16, 12, seed=2)
    asked = []

    def vectors_of(rows):
        asked.append(rows.copy())
        return vectors[rows].copy()

    streamed = index_module.build_faiss_streamed(
        len(vectors), 16, vectors_of, (vectors[i : i + 97].copy() for i in range(0, len(vectors), 97)), factory, train_size=300, seed=5
    )
    in_memory = build_faiss(vectors.copy(), factory, train_size=300, seed=5)
    assert np.array_equal(faiss.serialize_index(streamed), faiss.serialize_index(in_memory))
    if factory == "Flat":  # needs no training: no sample is encoded
        assert asked == []
    else:
        assert len(asked) == 1 and asked[0].tolist() == index_module.training_rows(700, 300, 5).tolist()
    with pytest.raises(ValueError, match="expected 700"):
        index_module.build_faiss_streamed(700, 16, vectors_of, [vectors[:100]], factory, train_size=300)


def flat_storages(index):
    """The flat code storages of a FAISS index and those it wraps (as ``index.reserve_storage`` walks them)."""
    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexFlatCodes):
        return [node]
    return [s for attr in ("index", "storage", "base_index", "refine_index") if isinstance(getattr(node, attr, None), faiss.Index)
            for s in flat_storages(getattr(node, attr))]


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_streamed_build_holds_one_chunk_at_a_time(factory, monkeypatch):
    """The loops that take encoded chunks kept the one just taken alive (their loop variable) while the next was
    encoded: index.py at 40,000 x 8,448-d held 512 MB of chunk vectors where index.add_chunk_mb said 256 (memray at the
    peak), and encode_passages (the training sample) one chunk more than its output. Each chunk is gone before the next."""
    import types
    import weakref

    from two_tower.retrieval import indexer

    vectors = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    alive = []

    def chunks(*args, **kwargs):
        for start in range(0, len(vectors), 100):
            chunk = vectors[start : start + 100].copy()
            taken = weakref.ref(chunk)
            yield chunk
            del chunk
            alive.append(taken() is not None)  # as the next chunk is asked for

    index_module.build_faiss_streamed(len(vectors), 16, lambda rows: vectors[rows].copy(), chunks(), factory, train_size=300)
    assert alive == [False] * 5, alive
    alive.clear()
    monkeypatch.setattr(indexer, "encoded_chunks", chunks)
    module = types.SimpleNamespace(towers=types.SimpleNamespace(passage_encoder=types.SimpleNamespace(output_dim=16)))
    assert np.array_equal(indexer.encode_passages(module, ["text"] * len(vectors)), vectors)
    assert alive == [False] * 5, alive


@pytest.mark.parametrize("factory", ["Flat", "SQ8", "PQ4x4", "HNSW32", "PCA8,Flat", "OPQ4,IVF8,PQ4x4,Refine(Flat)"])
def test_streamed_build_never_copies_the_index_to_grow_it(factory, monkeypatch):
    """FAISS grows a flat code storage as a std::vector, reallocated to twice its size when full: at the add of a chunk
    the old and the new copy were alive together (index.py's peak at 40,000 x 8,448-d passages in 256 MB chunks: 4.63 GB,
    4.25 GB with room given first). Given room for every vector first, the storage stays where it is from the first
    chunk to the last; the same index, byte for byte."""
    vectors = clustered(700, 16, 12, seed=2)
    made, seen = [], []
    new_faiss = index_module.new_faiss
    monkeypatch.setattr(index_module, "new_faiss", lambda *a: made.append(new_faiss(*a)) or made[-1])

    def chunks():
        for start in range(0, len(vectors), 50):
            yield vectors[start : start + 50].copy()
            seen.append([int(storage.codes.data()) for storage in flat_storages(made[0])])

    built = index_module.build_faiss_streamed(len(vectors), 16, lambda rows: vectors[rows].copy(), chunks(), factory, train_size=300, seed=5)
    assert len(seen) == 14 and seen[0] and all(places == seen[0] for places in seen), factory
    if factory != "HNSW32":  # a graph depends on its insertion batches and threads
        monkeypatch.setattr(index_module, "reserve_storage", lambda *a: None)
        grown = index_module.build_faiss_streamed(len(vectors), 16, lambda rows: vectors[rows].copy(), chunks(), factory, train_size=300, seed=5)
        assert np.array_equal(faiss.serialize_index(built), faiss.serialize_index(grown))


def test_adding_to_a_graph_or_quantized_index_shows_its_own_progress(monkeypatch):
    """The last chunk's add to an HNSW index (~50 s at 200k passages) ran after the encoding bar had reached 100%, with
    nothing shown. A non-Flat index now has an "Adding to FACTORY" bar, moved every ADD_PIECE vectors; for IVF the
    pieces build the same index byte for byte (HNSW's graph depends on its insertion batches: another graph of the
    same quality); Flat, which adds at once, has none."""
    from two_tower.core import progress

    drawn = []

    class RecordingBar:
        def __init__(self, total=None, desc=None, **kwargs):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    def recording_bar(*args, **kwargs):
        drawn.append(RecordingBar(**kwargs))
        return drawn[-1]

    monkeypatch.setattr(progress, "bar", recording_bar)
    vectors = clustered(700, 16, 12, seed=2)
    chunks = lambda: (vectors[i : i + 97].copy() for i in range(0, len(vectors), 97))  # noqa: E731
    whole = index_module.build_faiss_streamed(len(vectors), 16, lambda rows: vectors[rows].copy(), chunks(), "IVF8,Flat", train_size=300, seed=5)
    monkeypatch.setattr(index_module, "ADD_PIECE", 30)
    drawn.clear()
    pieces = index_module.build_faiss_streamed(len(vectors), 16, lambda rows: vectors[rows].copy(), chunks(), "IVF8,Flat", train_size=300, seed=5)
    assert np.array_equal(faiss.serialize_index(pieces), faiss.serialize_index(whole))
    assert len(drawn) == 1 and drawn[0].desc == "Adding to IVF8,Flat" and drawn[0].n == drawn[0].total == 700 and drawn[0].closed
    drawn.clear()
    index_module.build_faiss_streamed(len(vectors), 16, None, chunks(), "HNSW8", seed=5)
    assert len(drawn) == 1 and drawn[0].n == 700 and drawn[0].closed
    drawn.clear()
    index_module.build_faiss_streamed(len(vectors), 16, None, chunks(), "Flat")
    assert drawn == []


def test_compressed_index_recall_against_exact_search():
    """IVF + PQ + re-ranking on a clustered set: recall@10 of the exact top 10 (brute force) by nprobe;
    with every list probed and enough candidates re-ranked on full vectors the top 10 is the exact one."""
    vectors = clustered(3000, 32, 30, seed=3)
    queries = clustered(60, 32, 30, seed=4)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    index = PassageIndex(Path("."), build_faiss(vectors.copy(), "IVF16,PQ8x4,Refine(Flat)", train_size=2000), None, {"faiss": {"type": "IndexRefineFlat"}})

    def recall(params: str) -> float:
        index.set_search_params(params)
        rows = index.search(queries, 10).rows
        return np.mean([len(set(r) & set(e)) / 10 for r, e in zip(rows.tolist(), exact.tolist())])

    assert faiss.extract_index_ivf(index.index).nprobe == 1
    low, high = recall("nprobe=1,k_factor_rf=1"), recall("nprobe=16,k_factor_rf=300")
    assert faiss.extract_index_ivf(index.index).nprobe == 16
    assert high == 1.0
    assert low < recall("nprobe=4,k_factor_rf=8") <= high  # more lists and re-ranking: more of the exact top 10
    with pytest.raises(ConfigError, match="efSearch"):
        index.set_search_params("efSearch=64")
    # FAISS took nprobe=0 (or -3) and every search then ended in its C++ check: a folder saved so was unsearchable
    # and kept 2^31 as 0 (the same) or 2^32 + 1 as 1 (silently 1 hit of k on HNSW): C ints
    whole, number = "a whole number from 1 to 2147483647", "a number from 1 to 2147483647"
    for params, words in (("nprobe=0", f"nprobe=0 must be {whole}"), ("nprobe=-3", f"nprobe=-3 must be {whole}"),
                          ("nprobe=abc", f"nprobe=abc must be {whole}"), ("nprobe=4,k_factor_rf=0.5", f"k_factor_rf=0.5 must be {number}"),
                          ("nprobe=2147483648", f"nprobe=2147483648 must be {whole}"), ("efSearch=4294967297", f"efSearch=4294967297 must be {whole}"),
                          ("k_factor_rf=inf", f"k_factor_rf=inf must be {number}"), ("k_factor_rf=nan", f"k_factor_rf=nan must be {number}"),
                          ("k_factor_rf=1e30", f"k_factor_rf=1e30 must be {number}")):
        with pytest.raises(ConfigError, match=re.escape(f"search_params={params!r}: {words}")):
            index.set_search_params(params)
    assert faiss.extract_index_ivf(index.index).nprobe == 4  # as the last accepted setting left it


def test_a_loaded_folder_searches_with_every_saved_search_parameter(trained, tmp_path, caplog):
    """FAISS's file keeps nprobe but not max_codes: a folder built with index.search_params='nprobe=2,max_codes=50'
    loaded with max_codes=0 (no limit) while its manifest named 50, and ranked otherwise than asked (a probe)."""
    out = tmp_path / "ivf"
    build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={out}",
                                            "index.factory='IVF4,Flat'", "index.search_params='nprobe=2,max_codes=50'"]))
    ivf = faiss.extract_index_ivf(Searcher.load(out).index.index)
    assert (ivf.nprobe, ivf.max_codes) == (2, 50)
    ivf = faiss.extract_index_ivf(Searcher.load(out, search_params="nprobe=3").index.index)  # an override changes what it names
    assert (ivf.nprobe, ivf.max_codes) == (3, 50)
    from two_tower.retrieval.index import effective_search_params  # what serve's /health reports (it said "nprobe=3")

    assert effective_search_params("nprobe=2,max_codes=50", "nprobe=3") == "nprobe=3,max_codes=50"
    assert effective_search_params(None, "efSearch=64") == "efSearch=64" and effective_search_params(None, None) is None
    # a search that visits part of the corpus returns fewer than k hits: said once (it was silent; a probe)
    searcher = Searcher.load(out, search_params="nprobe=1,max_codes=0", hybrid=False)
    everything = len(searcher.index)
    with caplog.at_level("WARNING", logger="two_tower.retrieval.search"):
        first, again = searcher.search(["apple", "river"], k=everything), searcher.search(["apple"], k=everything)
    assert all(len(hits) < everything for hits in first + again)
    said = [r.getMessage() for r in caplog.records if "fewer than" in r.getMessage()]
    assert said == [f"2 of 2 queries got fewer than k={everything} hits: this IndexIVFFlat index visits only part of the corpus a "
                    "search (raise nprobe or efSearch with search_params)"], said
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["index"]["search_params"] = "nprobe=0"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFolderError, match=re.escape(f"index={out}: manifest.json: index.search_params='nprobe=0': nprobe=0 must be a whole number")):
        Searcher.load(out)


def test_too_few_training_vectors_for_the_lists_is_one_warning(caplog, capfd):
    """FAISS trains 16 lists on 300 vectors, saying so only in bare stderr lines (hundreds of them with OPQ): the
    build says it once, with what to change (a probe), and FAISS's own lines are not written."""
    vectors = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    capfd.readouterr()
    with caplog.at_level("WARNING", logger="two_tower.retrieval.index"):
        index = build_faiss(vectors, "IVF16,Flat")
    assert index.ntotal == 300 and "WARNING clustering" not in capfd.readouterr().err
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == ["index.factory='IVF16,Flat': 300 training vectors for 16 lists; FAISS's k-means asks for 39 a list (624): the lists, "
                    "and so the search, may be poor; use fewer lists"], said  # the whole corpus: no more vectors to raise it to
    caplog.clear()
    # PQ's codebooks (256 centroids each) under OPQ's iterations: 400-odd FAISS lines became one warning, counted
    with caplog.at_level("WARNING", logger="two_tower.retrieval.index"):
        build_faiss(np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32), "OPQ2,IVF4,PQ2x4")  # small codes: fast (OPQ trains its own 8-bit PQ)
    assert "WARNING clustering" not in capfd.readouterr().err
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and re.fullmatch(
        r"index.factory='OPQ2,IVF4,PQ2x4': FAISS's k-means had fewer training vectors than it asks for in (\d+) of its clusterings \(e.g. "
        r"300 vectors for 256 centroids, it asks for 9984\): the codes or lists may be poor; use a smaller factory",
        said[0]) and int(re.search(r"in (\d+) of", said[0])[1]) > 4, said
    caplog.clear()
    with caplog.at_level("WARNING", logger="two_tower.retrieval.index"):
        build_faiss(vectors, "IVF4,Flat")  # 300 >= 4 x 39: nothing to say
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_too_few_training_vectors_names_the_setting_that_sized_the_sample(caplog, capfd):
    """The warnings of too few training vectors said "raise index.train_size" also where that changes nothing: the sample
    was the whole corpus, or index.train_mb had capped it (index.py ... index.train_mb=0.25 on Cranfield: 512 vectors for
    IVF16, "raise index.train_size"). They name the setting to raise, or none."""
    vectors = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    for bound, factory, advice in [
        (None, "IVF16,Flat", "raise index.train_size, or use fewer lists"),
        ("index.train_mb", "IVF16,Flat", "raise index.train_mb, or use fewer lists"),
        ("index.train_mb", "IVF16,PQ2x4", "raise index.train_mb, or use a smaller factory"),
    ]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="two_tower.retrieval.index"):
            index_module.build_faiss_streamed(len(vectors), 8, lambda rows: vectors[rows], [vectors], factory, train_size=100, bound=bound)
        capfd.readouterr()
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert said and said[-1].endswith(advice) and said[0].startswith(f"index.factory={factory!r}: 100 training vectors"), said
        assert all("index.train_size" not in s for s in said) if bound else True, said


def test_pq_codebooks_of_as_many_centroids_as_the_lists_are_still_counted(caplog, capfd):
    """The IVF's own clustering (warned about as lists) was left out of the count by its number of centroids, and with it
    every PQ codebook of as many: IVF256,PQ4 on 2,000 vectors said the lists were poor and nothing of its four codebooks
    (FAISS wrote five lines; a review)."""
    capfd.readouterr()
    with caplog.at_level("WARNING", logger="two_tower.retrieval.index"):
        build_faiss(np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32), "IVF16,PQ2x4")  # 4-bit codes: 16 centroids, as the lists
    assert "WARNING clustering" not in capfd.readouterr().err
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 2 and said[0].startswith("index.factory='IVF16,PQ2x4': 300 training vectors for 16 lists;"), said
    assert said[1] == ("index.factory='IVF16,PQ2x4': FAISS's k-means had fewer training vectors than it asks for in 2 of its clusterings "
                       "(e.g. 300 vectors for 16 centroids, it asks for 624): the codes or lists may be poor; use a smaller factory"), said


def test_compressed_index_folder_round_trips(trained, tmp_path):
    """A folder of an IVF-PQ index (streamed build) loads, and with every list probed and all candidates
    re-ranked answers exactly as the Flat folder of the same passages."""
    out = tmp_path / "ivfpq"
    cfg = compose_retrieval(
        "index",
        [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={out}", "index.factory='IVF4,PQ8x4,Refine(Flat)'", "index.add_chunk=50"],
    )
    build_index(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["index"]["factory"] == "IVF4,PQ8x4,Refine(Flat)"
    assert set(manifest["seconds"]) == {"load", "encode", "faiss_train", "faiss_add", "bm25"}
    flat = Searcher.load(trained["index"])
    approximate = Searcher.load(out, search_params=f"nprobe=4,k_factor_rf={len(flat.index)}")
    assert len(approximate.index) == len(flat.index)
    queries = validation_split(trained["data"]).query_texts[:20]
    for want, got in zip(flat.search(queries, 5), approximate.search(queries, 5)):
        assert [h.id for h in got] == [h.id for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
    assert Searcher.load(out).index.index.ntotal == len(flat.index)  # and with its saved defaults
    assert approximate.index.flat_vectors() is None  # so its hybrid search went through candidates
    # Only plain Flat storage is read as a matrix; the view is read-only and keeps the FAISS index alive.
    import gc

    vectors = clustered(300, 16, 4, seed=7)
    for factory in ("FlatIPPanorama4", "IDMap,Flat", "HNSW32"):
        try:
            other = build_faiss(vectors, factory)
        except Exception:  # a FAISS without this index type
            continue
        assert PassageIndex(Path("."), other, None, {}).flat_vectors() is None, factory
    view = PassageIndex(Path("."), build_faiss(vectors, "Flat"), None, {}).flat_vectors()
    gc.collect()
    _ = [np.full(300 * 16, 7.0, dtype=np.float32) for _ in range(20)]  # would reuse freed memory
    assert view == pytest.approx(vectors, abs=1e-6) and not view.flags.writeable
    with pytest.raises(ConfigError, match="needs a Flat index"):
        approximate.hybrid_search(queries[:1], np.ones((1, approximate.index.index.d), dtype=np.float32), 5, exhaustive=True)


def test_interrupted_write_leaves_no_index_folder(trained, tmp_path, monkeypatch):
    out = tmp_path / "indexes" / "broken"

    def fail(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(index_module.QueryEncoder, "save", fail)  # fails after faiss.index and passages.arrow
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={out}"])
    with pytest.raises(KeyboardInterrupt):
        build_index(cfg)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # nor its temporary folder


def test_existing_index_is_kept_unless_overwrite(trained, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(trained["index"], out)
    before = (out / "manifest.json").read_text()
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={out}"])
    with pytest.raises(IndexFolderError, match="already exists"):
        build_index(cfg)
    assert (out / "manifest.json").read_text() == before
    with open_dict(cfg):
        cfg.overwrite, cfg.index.factory = True, "HNSW32"
    build_index(cfg)
    assert json.loads((out / "manifest.json").read_text())["faiss"]["type"] == "IndexHNSWFlat"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_overwrite_replaces_index_folders_only(trained, tmp_path, monkeypatch):
    """overwrite=true replaces an index folder; a plain file, a folder without a manifest, or a folder holding
    the corpus being indexed is refused in one line and left as it was, and the line does not tell to pass
    overwrite=true when that would be refused too."""
    corpus = tmp_path / "mine" / "corpus.tsv"
    corpus.parent.mkdir()
    corpus.write_text("1\tapple river\n2\tbanana hill\n")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    plain = tmp_path / "plain.tsv"
    plain.write_text("keep me too")
    for out, words in ((notes, "a folder with no manifest.json, not an index folder"), (plain, "a file, not an index folder"), (corpus.parent, "not an index folder")):
        for overwrite in ("false", "true"):  # without overwrite it said "pass overwrite=true", which the next run refused
            cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"corpus={corpus}", f"out={out}", f"overwrite={overwrite}"])
            with pytest.raises(IndexFolderError, match=words) as refused:
                build_index(cfg)
            assert "choose another out=" in str(refused.value) and "pass overwrite" not in str(refused.value)
    assert (notes / "notes.txt").read_text() == "keep me" and plain.read_text() == "keep me too" and corpus.exists()
    # an index folder that holds the corpus: replacing it would delete the corpus
    inside = tmp_path / "index"
    shutil.copytree(trained["index"], inside)
    shutil.copy(corpus, inside / "corpus.tsv")
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"corpus={inside / 'corpus.tsv'}", f"out={inside}", "overwrite=true"])
    with pytest.raises(IndexFolderError, match="which replacing it would delete"):
        build_index(cfg)
    assert (inside / "corpus.tsv").exists()
    # a corpus named inside out= that is not there is said to be missing (it was said to be held there, to be moved away);
    # the folder holding only its own files (corpus.tsv, not its manifest's, is refused first since 2c5b9d3, rightly)
    (inside / "corpus.tsv").unlink()
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"corpus={inside / 'typo.tsv'}", f"out={inside}", "overwrite=true"])
    with pytest.raises(CorpusError, match=r"typo\.tsv: no such file"):
        build_index(cfg)
    # nor this run's own Hydra folder (hydra.run.dir inside out=: its log went with the old index)
    from two_tower.retrieval import indexer

    run = inside / "run"
    run.mkdir()
    monkeypatch.setattr(indexer, "run_folder", lambda: str(run))
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"corpus={corpus}", f"out={inside}", "overwrite=true"])
    with pytest.raises(IndexFolderError, match=f"holds {run}, which replacing it would delete"):
        build_index(cfg)
    assert run.is_dir()


def test_overwrite_refuses_an_index_folder_holding_things_of_its_own(trained, tmp_path):
    """overwrite=true deleted whatever the old index folder held besides its own files: an index folder built inside it
    (out=INDEX/sub), notes put there. Refused naming them, before any work; hidden files (.DS_Store) do not count."""
    from two_tower.retrieval.index import check_replaceable

    folder = tmp_path / "index"
    shutil.copytree(trained["index"], folder)
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "bm25" / ".nfs000123").write_bytes(b"x")
    check_replaceable(folder, True)  # its own files and hidden ones: replaceable
    shutil.copytree(trained["index"], folder / "sub")
    (folder / "notes.txt").write_text("keep me")
    (folder / "bm25" / "mine.txt").write_text("keep me")
    cfg = compose_retrieval("index", [f"ckpt={tmp_path / 'none.ckpt'}", f"corpus={tmp_path / 'c.tsv'}", f"out={folder}", "overwrite=true"])
    with pytest.raises(IndexFolderError, match=re.escape("holds ['bm25/mine.txt', 'notes.txt', 'sub'], which are not the index folder's own")):
        build_index(cfg)
    assert (folder / "notes.txt").read_text() == "keep me" and (folder / "sub" / "manifest.json").is_file()


def test_build_chunks_are_bounded_in_bytes_with_the_same_index(trained, tmp_path, monkeypatch):
    """index.add_chunk counted passages only: a bag path's 100,000 passages x 8,448 dims were a 3.4 GB chunk.
    index.add_chunk_mb bounds a chunk's float vectors too; the index built is the same, byte for byte."""
    from two_tower.retrieval import indexer

    assert indexer.passages_within(100_000, 256, 8448) == 7943 and indexer.passages_within(100_000, 256, 256) == 100_000
    assert indexer.passages_within(100_000, None, 8448) == 100_000 and indexer.passages_within(100_000, 1e-9, 8448) == 1
    sizes, encoded_chunks = [], indexer.encoded_chunks

    def counted(*args, **kwargs):
        for vectors in encoded_chunks(*args, **kwargs):
            sizes.append(len(vectors))
            yield vectors

    monkeypatch.setattr(indexer, "encoded_chunks", counted)
    dim = Searcher.load(trained["index"]).index.index.d
    out = tmp_path / "index"
    build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={out}", f"index.add_chunk_mb={7 * 4 * dim / (1 << 20)}"]))
    passages = len(Searcher.load(trained["index"]).index)
    assert sizes == [7] * (passages // 7) + ([passages % 7] if passages % 7 else []), sizes
    for name in ("faiss.index", "passages.arrow", "term_statistics.npz"):
        assert (out / name).read_bytes() == (trained["index"] / name).read_bytes(), name


def test_training_sample_is_bounded_in_bytes(trained, tmp_path, monkeypatch, caplog):
    """index.train_size counted passages only: an IVF/PQ/SQ build encoded and held 100,000 x 8,448-d training vectors
    (3.4 GB) whatever index.add_chunk_mb said. index.train_mb caps the sample's rows, says so in one line, and refuses an
    IVF of more lists than the capped sample before encoding; a cap that does not bind gives the same index."""
    from two_tower.retrieval import indexer

    assert indexer.passages_within(100_000, 2048, 8448) == 63_550 and indexer.passages_within(100_000, 2048, 2176) == 100_000
    assert indexer.passages_within(100_000, None, 8448) == 100_000 and indexer.passages_within(100_000, 1e-9, 8448) == 1
    sampled, encode_passages = [], indexer.encode_passages
    monkeypatch.setattr(indexer, "encode_passages", lambda module, texts, *a, **k: sampled.append(len(texts)) or encode_passages(module, texts, *a, **k))
    dim, passages = Searcher.load(trained["index"]).index.index.d, len(Searcher.load(trained["index"]).index)
    assert passages > 60, passages
    base = [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", "index.factory='IVF4,Flat'", "hybrid.enabled=false"]
    caplog.set_level(logging.INFO, logger=indexer.__name__)
    build_index(compose_retrieval("index", [*base, f"out={tmp_path / 'capped'}", f"index.train_mb={50 * 4 * dim / (1 << 20)}"]))
    assert sampled == [50], sampled
    said = [r.getMessage() for r in caplog.records if "sampled passages" in r.getMessage()]
    assert said == [f"Encoding 50 sampled passages to train IVF4,Flat, not {passages} (index.train_size=100000 of {passages} passages): "
                    f"index.train_mb={50 * 4 * dim / (1 << 20)} holds 50 {dim}-d float vectors ({4 * dim} bytes a passage); raise "
                    "index.train_mb, or set it to null, to train on more"], said
    caplog.clear()
    for name, mb in (("loose", 2048), ("null", "null")):  # the default does not bind for a narrow model: as with no cap
        build_index(compose_retrieval("index", [*base, f"out={tmp_path / name}", f"index.train_mb={mb}"]))
    assert sampled == [50, passages, passages] and not [r for r in caplog.records if "sampled passages" in r.getMessage()]
    assert (tmp_path / "loose" / "faiss.index").read_bytes() == (tmp_path / "null" / "faiss.index").read_bytes()
    assert (tmp_path / "capped" / "faiss.index").read_bytes() != (tmp_path / "null" / "faiss.index").read_bytes()
    cfg = compose_retrieval("index", [*base, f"out={tmp_path / 'refused'}", "index.factory='IVF8,Flat'", f"index.train_mb={5 * 4 * dim / (1 << 20)}"])
    with pytest.raises(ConfigError, match=re.escape(f"has 8 lists but only 5 vectors to train on (index.train_mb={5 * 4 * dim / (1 << 20)} holds 5 {dim}-d "
                                                    "vectors of index.train_size=100000: raise it, or use fewer lists, or Flat)")):
        build_index(cfg)
    assert sampled == [50, passages, passages] and not (tmp_path / "refused").exists()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("batch_size=-1", "batch_size=-1: must be a positive integer"),
        ("batch_size=0", "batch_size=0: must be a positive integer"),
        ("index.add_chunk=0", "index.add_chunk=0: must be a positive integer"),
        ("index.add_chunk_mb=0", "index.add_chunk_mb=0: must be a positive number of megabytes or null"),
        ("index.add_chunk_mb=inf", "index.add_chunk_mb=inf: must be a positive number of megabytes or null"),
        ("index.train_size=-5", "index.train_size=-5: must be a positive integer"),
        ("index.train_mb=0", "index.train_mb=0: must be a positive number of megabytes or null"),
        ("threads=abc", "threads='abc': must be a positive integer or null"),
        ("threads=-1", "threads=-1: must be a positive integer or null"),
        ("threads=0", "threads=0: must be a positive integer or null"),  # was taken as torch's default here, refused by train and serve
        ("overwrite=no", "overwrite='no': must be true or false"),  # a string, truthy: an existing folder was replaced
    ],
)
def test_index_settings_are_checked_before_encoding(trained, tmp_path, setting, message):
    """A batch size below 1 once wrote a folder of zero vectors (exit 0); other values gave tracebacks."""
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'index'}", setting])
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_index(cfg)
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("factory, words", [
    ("IDMap,Flat", "IndexIDMap holds ids of its own"),
    ("PCA16,IDMap,Flat", "IndexIDMap holds ids of its own"),  # wrapped: the review's finding
    ("IVF4,PQ16x4fs", "IndexIVFPQFastScan (fast-scan codes) cannot give its vectors back"),
    ("OPQ8,IVF4,PQ8x4fs", "IndexIVFPQFastScan (fast-scan codes) cannot give its vectors back"),
])
def test_index_types_a_folder_cannot_use_are_refused_before_encoding(trained, tmp_path, monkeypatch, factory, words):
    """IDMap failed with a traceback after encoding; fast-scan codes were written, then crashed search.py (SIGSEGV)."""
    from two_tower.retrieval import indexer

    monkeypatch.setattr(indexer, "build_faiss_streamed", lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoded first")))
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'index'}", f"index.factory='{factory}'"])
    with pytest.raises(ConfigError, match=re.escape(f"index.factory='{factory}': {words}")):
        build_index(cfg)
    assert not (tmp_path / "index").exists()


def test_a_factory_that_cannot_train_on_the_corpus_is_one_error(trained, tmp_path):
    corpus = tmp_path / "small.tsv"
    corpus.write_text("1\tapple river\n2\tbanana hill\n3\tcherry lake\n")
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"corpus={corpus}", f"out={tmp_path / 'index'}", "index.factory=PQ4"])
    with pytest.raises(ConfigError, match=r"index.factory='PQ4' cannot be trained on 3 vectors: Number of training points \(3\)"):
        build_index(cfg)
    assert not (tmp_path / "index").exists()


def test_an_ivf_with_more_lists_than_training_vectors_is_refused_before_the_passages_are_read(trained, tmp_path, monkeypatch):
    """A probe waited for a 200k-passage corpus to load and its BM25 index to build (30 s) to hear that IVF300000 cannot
    train on index.train_size=100000 vectors; more lists than the corpus has passages is refused before BM25."""
    from two_tower.retrieval import indexer

    monkeypatch.setattr(indexer, "lexical_index", lambda *a, **k: (_ for _ in ()).throw(AssertionError("BM25 built first")))
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", "corpus=/nonexistent/never-read.tsv", f"out={tmp_path / 'index'}",
                                      "index.factory='IVF300,Flat'", "index.train_size=200"])
    with pytest.raises(ConfigError, match=re.escape("index.factory='IVF300,Flat' has 300 lists but only 200 vectors to train on (index.train_size=200: raise it, ")):
        build_index(cfg)
    corpus = tmp_path / "small.tsv"
    corpus.write_text("".join(f"{i}\tpassage number {i}\n" for i in range(50)))
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"corpus={corpus}", f"out={tmp_path / 'index'}", "index.factory='IVF64,Flat'"])
    with pytest.raises(ConfigError, match=re.escape("has 64 lists but only 50 vectors to train on (the whole corpus: or use fewer lists, or Flat)")):
        build_index(cfg)
    assert not (tmp_path / "index").exists()


def test_index_takes_passages_one_way(trained, tmp_path):
    corpus = tmp_path / "c.tsv"
    corpus.write_text("1\tapple river\n")
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"corpus={corpus}", f"data.path={trained['data']}", f"out={tmp_path / 'index'}"])
    with pytest.raises(ConfigError, match="give the passages one way"):
        build_index(cfg)


def test_index_of_stopwords_only_is_one_error(trained, tmp_path):
    corpus = tmp_path / "stop.tsv"
    corpus.write_text("1\tthe\n2\tan a\n")
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"corpus={corpus}", f"out={tmp_path / 'index'}"])
    with pytest.raises(CorpusError, match="none of the 2 passages has a word it indexes") as refused:
        build_index(cfg)
    assert not (tmp_path / "index").exists()
    # it named neither the file nor a setting that builds the folder
    assert str(refused.value).startswith(f"corpus={corpus}: ") and "hybrid.enabled=false" in str(refused.value) and "hybrid.bm25.stopwords=null" in str(refused.value)


def test_evaluate_checks_retriever_settings_in_one_line(trained, tmp_path, monkeypatch):
    """Every retriever's settings before any is built (the dense one loads its checkpoint), each named as given:
    the feedback, smoothing and MaxSim settings too (an unknown key was Hydra's multi-line TypeError, exit 1)."""
    from two_tower.retrieval import dense
    from two_tower.retrieval.evaluate import build_retrievers

    monkeypatch.setattr(dense, "load_checkpoint", lambda path: pytest.fail("loaded the checkpoint before checking the settings"))
    for settings, message in (
        (["retriever.dense.batch_size=-1"], "retriever.dense.batch_size=-1: must be a positive integer"),
        (["retriever.bm25.stemmer=klingon"], "retriever.bm25: "),
        (["+retriever.dense_smoothed.x=1"], "retriever.dense_smoothed.x: unknown setting; retriever.dense_smoothed has neighbours, weight"),
        (["retriever.dense_smoothed.neighbours=0"], "retriever.dense_smoothed.neighbours=0: must be a whole number from 1 to 1000"),
        (["+retriever.dense_prf.x=1"], "retriever.dense_prf.x: unknown setting; retriever.dense_prf has depth, alpha, beta"),
        (["retriever.dense_prf.alpha=0", "retriever.dense_prf.beta=0"], "retriever.dense_prf.alpha and retriever.dense_prf.beta are both 0"),
        (["retriever.dense_maxsim.weight=2"], "retriever.dense_maxsim.weight=2: must be a number from 0"),
    ):
        cfg = compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'eval'}",
                                             "retriever=[dense,bm25,smoothed,dense_prf,maxsim]", *settings])
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_retrievers(cfg)


def test_evaluate_refuses_a_save_runs_that_is_not_a_boolean(trained, tmp_path):
    """save_runs=no is the string 'no', truthy: the runs were written anyway."""
    from two_tower.retrieval.evaluate import evaluate

    cfg = compose_retrieval("evaluate", [f"data.path={trained['data']}", f"out={tmp_path / 'eval'}", "retriever=[bm25]", "save_runs=no"])
    with pytest.raises(ConfigError, match=re.escape("save_runs='no': must be true or false")):
        evaluate(cfg)
    assert not (tmp_path / "eval").exists()


def test_index_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    state = torch.load(trained["ckpt"], weights_only=False)
    Searcher.load(trained["index"], checkpoint=trained["ckpt"])  # the model that built it: accepted

    # Another tokenizer setting (another vocabulary is refused earlier: its bag keys do not match the CRC).
    retokenized = {**state, "tokenizer": {**state["tokenizer"], "max_query_len": state["tokenizer"]["max_query_len"] + 1}}
    torch.save(retokenized, tmp_path / "tokenizer.ckpt")
    with pytest.raises(IndexFolderError, match="tokenizer"):
        Searcher.load(trained["index"], checkpoint=tmp_path / "tokenizer.ckpt")

    retrained = {**state, "state_dict": {k: v + 0.01 if "projection.bias" in k else v for k, v in state["state_dict"].items()}}
    torch.save(retrained, tmp_path / "retrained.ckpt")
    with pytest.raises(IndexFolderError, match="passage_tower") as err:
        Searcher.load(trained["index"], checkpoint=tmp_path / "retrained.ckpt")
    assert "tokenizer" not in str(err.value)

    manifest = json.loads((trained["index"] / "manifest.json").read_text())
    other = {**manifest["model"], "dim": 64, "encoder": {**manifest["model"]["encoder"], "cell": "lstm"}}
    with pytest.raises(IndexFolderError, match="dim: 48 vs 64; encoder.cell: 'gru' vs 'lstm'$"):
        PassageIndex.load(trained["index"], expect_model=other)


def test_a_modified_index_folder_is_refused(trained, tmp_path):
    broken = tmp_path / "index"
    shutil.copytree(trained["index"], broken)
    (broken / "faiss.index").unlink()
    with pytest.raises(IndexFolderError, match="missing"):
        Searcher.load(broken)
    with pytest.raises(IndexFolderError, match="not an index folder"):
        Searcher.load(tmp_path)


@pytest.mark.parametrize("name", ["passages.arrow", "query_encoder.pt", "term_statistics.npz", "bm25/params.index.json"])
def test_a_damaged_file_with_a_matching_manifest_is_one_line(trained, tmp_path, capsys, name):
    """A file damaged and its hash rewritten with it (the hash cannot tell): one IndexFolderError line naming
    the file, from Searcher.load and from search.py, not an Arrow/torch/json traceback."""
    import json

    from two_tower.retrieval.index import file_hash

    broken = tmp_path / "index"
    shutil.copytree(trained["index"], broken)
    if not (broken / name).is_file():
        pytest.skip(f"{name} is not in this folder")
    data = (broken / name).read_bytes()
    # half the file; a .pt file overwritten with other bytes (torch's error then advised weights_only=False)
    (broken / name).write_bytes(b"garbage, not a torch file" if name.endswith(".pt") else data[: len(data) // 2])
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["files"][name] = file_hash(broken / name)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFolderError, match=f"index={re.escape(str(broken))}: cannot read {re.escape(str(broken / name.split('/')[0]))}"):
        Searcher.load(broken).search(["apple river"], k=3)
    assert search_main([f"index={broken}", "apple river"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: index=") and err.count("\n") == 1 and "rebuild the folder" in err
    assert "weights_only" not in err  # torch's advice to unpickle a foreign file is not passed on


@pytest.mark.parametrize("damage, message", [
    (lambda bm25: (bm25 / "settings.json").write_text("[1]"), r"cannot read .*bm25 \(ValueError: .*settings.json is not a JSON object of BM25 settings"),
    (lambda bm25: (bm25 / "params.index.json").write_text("{}"), r"bm25/ indexes None passages and faiss.index \d+"),
    (lambda bm25: (bm25 / "settings.json").write_text('{"bogus": 1}'), r"cannot read .*bm25 \(ValueError: .*not a BM25 index this code wrote"),
])
def test_a_bm25_part_that_does_not_fit_its_folder_is_one_line(trained, tmp_path, capsys, damage, message):
    """A bm25/ rewritten with hashes to match (a settings.json that is not an object of the settings, a params file of no
    passage count) or another folder's bm25/ is one IndexFolderError line at load: they were an AttributeError, a
    TypeError, and (another corpus's) a torch size error or an IndexError at the first search."""
    import json

    from two_tower.retrieval.index import file_hash

    def rehashed(folder):
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"] = {name: file_hash(folder / name) for name in manifest["files"]}
        (folder / "manifest.json").write_text(json.dumps(manifest))

    broken = tmp_path / "index"
    shutil.copytree(trained["index"], broken)
    damage(broken / "bm25")
    rehashed(broken)
    with pytest.raises(IndexFolderError, match=message):
        Searcher.load(broken).search(["apple river"], k=3)
    # another corpus's BM25 index (two passages)
    other = tmp_path / "other"
    shutil.copytree(trained["index"], other)
    shutil.rmtree(other / "bm25")
    from two_tower.retrieval.bm25 import BM25Scorer

    BM25Scorer(stemmer="english").index(["apple river", "a pear tree"]).save(other / "bm25")
    rehashed(other)
    with pytest.raises(IndexFolderError, match=r"bm25/ indexes 2 passages and faiss.index \d+"):
        Searcher.load(other).search(["apple river"], k=3)
    assert search_main([f"index={other}", "apple river"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_evaluate_out_an_index_folder_is_refused_before_any_work(trained, tmp_path, monkeypatch):
    """evaluate.py out=<an index folder> wrote metrics.json, metrics.md and per_query/ into it, and search.py and serve.py
    then refused the folder (its manifest does not name them): refused before any work, the folder left as it was."""
    from two_tower.retrieval import evaluate as evaluate_module

    folder = tmp_path / "index"
    shutil.copytree(trained["index"], folder)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setattr(evaluate_module, "build_retrievers", lambda cfg: pytest.fail("worked before checking out="))
    with pytest.raises(ConfigError, match=f"out={re.escape(str(folder))} is an index folder"):
        evaluate(compose_retrieval("evaluate", [f"data.path={_small_beir(tmp_path / 'beir')}", "split=test", "retriever=[bm25]", f"out={folder}"]))
    assert sorted(p.name for p in folder.iterdir()) == before
    Searcher.load(folder)


def test_term_statistics_of_another_corpus_are_refused(trained, tmp_path):
    """A term_statistics.npz of another corpus (another folder's, hashes rewritten to match) weighed every query by
    its IDF, silently (other scores, another order); its passage count must be the folder's."""
    from two_tower.model.bag import TermStatistics
    from two_tower.retrieval.index import file_hash

    folder = tmp_path / "index"
    shutil.copytree(trained["index"], folder)
    if not (folder / "term_statistics.npz").is_file():
        pytest.skip("the model has no bag-of-words path")
    TermStatistics.load(folder / "term_statistics.npz")  # readable as such
    TermStatistics(np.array([1, 2], dtype=np.int64), np.array([1, 2], dtype=np.int64), 2).save(folder / "term_statistics.npz")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["term_statistics.npz"] = file_hash(folder / "term_statistics.npz")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for checkpoint in (None, trained["ckpt"]):
        with pytest.raises(IndexFolderError, match=r"term_statistics.npz counts 2 passages and faiss.index holds \d+"):
            Searcher.load(folder, checkpoint=checkpoint)


def test_a_folder_replaced_while_it_loads_is_loaded_again_whole(trained, tmp_path, monkeypatch):
    """index.py overwrite=true exchanges a folder whole, but a load reads its manifest, then its files: replaced between
    them, the load gave the old manifest with the new passages (their hashes checked before: a folder of two, silently)
    or a hash error telling to rebuild a sound folder. The load now starts again when the folder it read is no longer
    there, and gives the new one whole."""
    from two_tower.retrieval import index as index_module
    from two_tower.retrieval.index import file_hash, read_passages, write_passages

    folder, new = tmp_path / "index", tmp_path / "new"
    shutil.copytree(trained["index"], folder)
    shutil.copytree(trained["index"], new)
    table = read_passages(new / "passages.arrow")
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    write_passages(new / "passages.arrow", ids, [f"edited {t}" for t in texts])  # as many passages, other texts
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["files"]["passages.arrow"] = file_hash(new / "passages.arrow")
    (new / "manifest.json").write_text(json.dumps(manifest))

    def replaced_meanwhile(path):
        if not replaced_meanwhile.done:  # the manifest and hashes read from the old folder: index.py replaces it now
            replaced_meanwhile.done = True
            folder.rename(tmp_path / "old")
            new.rename(folder)
        return read_passages(path)

    replaced_meanwhile.done = False
    monkeypatch.setattr(index_module, "read_passages", replaced_meanwhile)
    searcher = Searcher.load(folder)
    assert replaced_meanwhile.done
    assert searcher.index.manifest["files"]["passages.arrow"] == file_hash(folder / "passages.arrow")  # the manifest of the passages read
    assert searcher.index.lookup(np.array([0]))[1][0] == f"edited {texts[0]}"


def test_an_index_folder_this_user_cannot_read_is_one_line(trained, monkeypatch):
    """Files of another user (mode 600; the container runs as uid 10001): one line naming the file (a
    PermissionError is simulated: the tests may run as root, whom modes do not stop)."""
    from two_tower.retrieval import index as index_module

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(index_module, "file_hash", denied)
    with pytest.raises(IndexFolderError, match=r"index=.*: cannot read .*faiss.index \(permission denied\): the folder and its files must be readable by this user \(uid"):
        Searcher.load(trained["index"])


def test_empty_query_is_a_clear_error(trained, capsys):
    searcher = Searcher.load(trained["index"])
    with pytest.raises(EmptyQueryError, match="query 2 of 2 is empty"):
        searcher.search(["apple river", "   "], k=3)
    with pytest.raises(IndexFolderError, match=r"faiss.index: a file; give the index folder \(the one holding manifest.json\)"):
        Searcher.load(trained["index"] / "faiss.index")
    with pytest.raises(EmptyQueryError, match=r"query 1 of 2 is not text \(bytes: b'apple'\); give a string"):
        searcher.search([b"apple", "river"], k=3)
    # numpy's whole numbers are whole numbers; any iterable of queries is a list of them
    as_list = [[h.id for h in q] for q in searcher.search(["apple river", "banana"], k=3)]
    assert [[h.id for h in q] for q in searcher.search((q for q in ["apple river", "banana"]), k=np.int64(3))] == as_list
    assert search_main([f"index={trained['index']}", "   "]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "empty" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["bogus=1"], "error: bogus: unknown setting; the settings are index"),
        (["+bogus=1"], "error: bogus: unknown setting"),  # Hydra would add it and the command ignore it
        (["~k"], "error: ~k: settings cannot be removed"),
        (["k.x=1"], "error: k.x: unknown setting"),
        (["batch_size=0"], "error: batch_size=0: must be a positive integer"),
        (["max_chars=abc"], "error: max_chars='abc': must be an integer >= 0"),
        (["threads=abc"], "error: threads='abc': must be a positive integer or null"),
        (["prf=bogus"], "error: In 'search': Could not find 'prf/bogus' Available options in 'prf': rocchio"),  # was Hydra's report over 8 lines
        (["prf=null"], "error: prf=null: prf is a config group; give one of its options: rocchio; prf is off unless an option is selected"),  # was Hydra's NoneType line
        (["search_params='efSearch=64'"], "error: search_params='efSearch=64' does not apply to this IndexFlat index (it has no parameter efSearch;"),  # was FAISS's C++ source line
        (["--cfg", "job"], "error: --cfg: not an option of python search.py (it takes --interactive and --help"),  # was searched for, "--cfg job apple"
        (["--interactiv"], "error: --interactiv: not an option of python search.py"),
    ],
)
def test_search_command_settings_errors_are_one_line(trained, capsys, args, message):
    assert search_main([f"index={trained['index']}", "apple", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_search_command_prints_ranked_hits(trained, capsys):
    assert search_main([f"index={trained['index']}", "apple", "river", "k=2", "max_chars=0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query: apple river" and len(lines) == 3
    assert lines[1].split()[0] == "1" and lines[2].split()[0] == "2"


def test_index_names_its_corpus_and_commands_for_its_folder_that_run_as_printed(trained, tmp_path, caplog, capsys):
    """index.py's last line named the folder unquoted: for a folder whose name has a space or a comma, the search
    command it printed failed when pasted (a space split it, a comma made it a Hydra list); it now also names the
    serve command. Its first line printed the source's dict ({'kind': 'split', ...})."""
    import logging
    import shlex

    from two_tower.cli.common import compose as compose_command
    from two_tower.core.commands import argument

    out = tmp_path / "my indexes, v2"
    with caplog.at_level(logging.INFO, logger="two_tower.retrieval.indexer"):
        # out= as a user types it: argument() quotes it for Hydra (and the shell, undone here as a shell would)
        build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", shlex.split(argument("out", out))[0]]))
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Indexing ") and f" passages from the validation split of {Path(trained['data']).resolve()} with " in m for m in said), said
    line = next(m for m in said if m.startswith("Search it: "))
    search_line, serve_line = line.removeprefix("Search it: ").split("; serve it: ")
    search_args, serve_args = shlex.split(search_line), shlex.split(serve_line)
    assert search_args[:2] == ["python", "search.py"] and serve_args[:2] == ["python", "serve.py"]
    capsys.readouterr()
    assert search_main(search_args[2:]) == 0
    assert capsys.readouterr().out.startswith("query: your query\n  1  ")
    assert compose_command("serve", serve_args[2:]).index == str(out)


@pytest.mark.parametrize("folder", ["/data/my indexes", "/data/a,b", "/x/it's", '/x/say "hi"', "/x/back\\slash", "/x/end\\",
                                    '/x/bq\\"', "/x/a=b[1]{c}", "/x/$HOME", "/x/${oc.env:HOME}", "/x/a\\${threads}", "/x/${"])
def test_a_printed_argument_is_read_back_as_the_folder_it_names(folder):
    """index.py prints its folder as index=... for a command line to paste (core.commands.argument): after the shell
    and Hydra it must name that folder. A name holding ${ was an interpolation: "/x/${oc.env:HOME}" was read as /x//root."""
    import shlex

    from two_tower.cli.common import compose as compose_command
    from two_tower.core.commands import argument

    args = shlex.split(argument("index", folder))
    assert len(args) == 1 and compose_command("search", args).index == folder, args


def test_search_command_prints_each_hit_on_one_line_with_no_control_character():
    """A passage's newline printed raw made a line that read as one more hit, a carriage return wrote over its own
    hit's rank and score in a terminal, an escape sequence (in a text or an id) was run by the terminal, and a
    bidirectional override laid the rest of its line out right to left (the hit read as another text). Right-to-left
    letters are kept."""
    from two_tower.cli.search import format_results
    from two_tower.retrieval.search import Hit

    hits = [Hit("p1", 0.9, "first line\n  1  0.9999  [forged]  text"), Hit("p\x1b[2J", 0.8, "hidden\r  9  0.1  [spoof]"),
            Hit("p3", 0.7, "\x1b[31mred\x1b[0m \x1b]0;title\x07 tab\there \x85 \u2028 \x9b1m"),
            Hit("p4\u202e", 0.6, "\u05e9\u05dc\u05d5\u05dd \u2067isolate\u2069 \u202aembedded\u202c")]
    lines = format_results("q\x1b[1m\rx", hits, 0).splitlines()
    assert lines == [
        "query: q\\x1b[1m x",
        "  1  0.9000  [p1]  first line   1  0.9999  [forged]  text",
        "  2  0.8000  [p\\x1b[2J]  hidden   9  0.1  [spoof]",
        "  3  0.7000  [p3]  \\x1b[31mred\\x1b[0m \\x1b]0;title\\x07 tab here     \\x9b1m",
        "  4  0.6000  [p4\\u202e]  \u05e9\u05dc\u05d5\u05dd \\u2067isolate\\u2069 \\u202aembedded\\u202c",
    ]


def test_search_command_escapes_every_bidirectional_control_and_keeps_right_to_left_letters():
    """One rule for Unicode's bidirectional controls (the property Bidi_Control): the embeddings, overrides and isolates
    were escaped, the marks (U+200E, U+200F, U+061C), invisible too, printed raw, and "10 - 20" between two U+200F is
    laid out "20 - 10" by the bidirectional algorithm. Every one is escaped now; letters, whatever their direction,
    and other format characters are printed as they are."""
    import sys
    import unicodedata

    from two_tower.cli.search import format_results
    from two_tower.retrieval.search import Hit

    bidi_control = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"  # Unicode's PropList.txt
    explicit = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}  # Python's Unicode data: all in the list
    assert {c for c in map(chr, range(sys.maxunicode + 1)) if unicodedata.bidirectional(c) in explicit} <= set(bidi_control)
    kept = "\u05e9\u05dc\u05d5\u05dd \u0633\u0644\u0627\u0645 \u0710 \u200b\u200d\u00ad"  # Hebrew, Arabic, Syriac letters; ZWSP, ZWJ, soft hyphen
    for char in bidi_control:
        lines = format_results("q" + char, [Hit("p" + char, 0.5, f"range {char}10 - 20{char} km {kept}")], 0).splitlines()
        shown = f"\\u{ord(char):04x}"
        assert lines == [f"query: q{shown}", f"  1  0.5000  [p{shown}]  range {shown}10 - 20{shown} km {kept}"], ascii(lines)


def _read_pty_until(master: int, token: bytes, timeout: float = 120) -> bytes:
    """What a pseudo-terminal's ``master`` side reads until ``token`` (or the process ended, or ``timeout`` passed)."""
    import os
    import select
    import time

    seen, end = b"", time.monotonic() + timeout
    while token not in seen and time.monotonic() < end:
        if select.select([master], [], [], 0.5)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:  # the process ended
                break
    return seen


@pytest.mark.skipif(not hasattr(__import__("os"), "openpty"), reason="needs a pseudo-terminal")
def test_interactive_search_on_a_terminal_edits_lines_and_recalls_queries(trained):
    """--interactive on a terminal read with input() but without readline loaded: an arrow key went into the query
    as an escape sequence ("river\x1b[D...apple " was searched) and Up searched "\x1b[A", not the query before."""
    import os
    import pty
    import subprocess
    import sys

    pytest.importorskip("readline", reason="this Python was built without readline (search.py then reads plain lines)")
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "INPUTRC": os.devnull}  # readline's default key bindings
    process = subprocess.Popen([sys.executable, "search.py", f"index={trained['index']}", "-i", "k=1", "max_chars=40"],
                               stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, close_fds=True)
    os.close(slave)

    try:
        assert _read_pty_until(master, b"query> ").endswith(b"query> ")
        os.write(master, b"river" + b"\x1b[D" * 5 + b"apple \r")  # typed "river", moved back to its start, typed "apple "
        assert b"query: apple river\r\n" in _read_pty_until(master, b"query> ")
        os.write(master, b"\x1b[A\r")  # Up: the query before
        assert b"query: apple river\r\n" in _read_pty_until(master, b"query> ")
        os.write(master, b"\r")  # an empty line ends it
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


@pytest.mark.skipif(not hasattr(__import__("os"), "openpty"), reason="needs a pseudo-terminal")
def test_interactive_search_typed_with_stdout_redirected_refuses_a_keys_escape_sequence(trained):
    """With stdout redirected (search.py -i format=jsonl > results.jsonl) a terminal's line is read without line editing
    (Python's needs stdout on the terminal too): an arrow key went into the query as an escape sequence and
    "river\x1b[D\x1b[D apple" was searched, silently. It is one error line; the next query is searched."""
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "search.py", f"index={trained['index']}", "-i", "k=1", "format=jsonl"],
                               stdin=slave, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env={**os.environ, "TERM": "xterm"}, close_fds=True)
    os.close(slave)

    try:
        assert _read_pty_until(master, b"query> ").endswith(b"query> ")
        os.write(master, b"river\x1b[D\x1b[D apple\r")
        assert b"error: the line holds a key's escape sequence" in _read_pty_until(master, b"query> ")
        os.write(master, b"apple river\r\r")  # searched; an empty line ends it
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        assert [json.loads(line)["query"] for line in out.decode().splitlines()] == ["apple river"], out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


def test_search_command_notes_a_query_longer_than_the_query_window(trained, capsys, monkeypatch):
    """The query tower reads a query's first max_query_len words: a longer query was cut silently (a probe: 40 x a word
    and 150 more scored exactly as the 40 alone). A note on stderr names it; stdout keeps the results only."""
    import io

    window = Searcher.load(trained["index"]).encoder.tokenizer.max_query_len
    long = " ".join(["apple"] * (window + 8))
    assert search_main([f"index={trained['index']}", long, "k=2"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("query: apple apple") and err == (f"note: the query has {window + 8} words; the query tower reads its first {window} "
                                                             "(data.tokenizer.max_query_len, fixed when the model was trained)\n")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(f"apple river\n{long}\n".encode()), encoding="utf-8"))
    assert search_main([f"index={trained['index']}", "k=2", "format=jsonl"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and err.startswith(f"note: line 2 has {window + 8} words;") and err.count("\n") == 1
    assert search_main([f"index={trained['index']}", "apple river", "k=2"]) == 0 and capsys.readouterr().err == ""
    # the text output's query line is cut as the passages are (max_chars), not echoed whole
    assert search_main([f"index={trained['index']}", long, "k=1", "max_chars=20"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "query: apple apple apple..."


def test_search_command_writes_json_lines_for_scripts(trained, capsys, monkeypatch):
    """format=jsonl: one JSON object a query, the server's answer shape, whole texts; the same hits as the API."""
    import io

    index = f"index={trained['index']}"
    expected = Searcher.load(trained["index"]).search(["apple river", "banana"], 3)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"apple river\n\nbanana\n"), encoding="utf-8"))
    assert search_main([index, "k=3", "format=jsonl", "max_chars=5"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["query"] for a in answers] == ["apple river", "banana"] and all(a["k"] == 3 for a in answers)
    assert [[(h["id"], h["score"], h["text"]) for h in a["hits"]] for a in answers] == [[(h.id, h.score, h.text) for h in hits] for hits in expected]
    assert search_main([index, "format=xml", "apple"]) == 2 and capsys.readouterr().err == "error: format='xml': must be one of text, jsonl\n"


def test_search_command_output_interactive_input_and_stdin_edge_cases(trained, tmp_path, capsys, monkeypatch):
    """--interactive prompts on stderr (stdout holds results only: format=jsonl stays JSON lines) and names a line
    that is not UTF-8 instead of searching its replacement characters; max_chars below 4 cuts without "..."; a
    closed stdin with no query is the usage error; a reader that closes the pipe stops it quietly (141, no
    traceback), a full disk is one error line (1)."""
    import io
    import subprocess
    import sys

    index = f"index={trained['index']}"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"apple\ncaf\xe9 river\nbanana\n"), encoding="utf-8", errors="surrogateescape"))
    assert search_main([index, "--interactive", "format=jsonl", "k=2"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["query"] for line in out.splitlines()] == ["apple", "banana"]
    assert "error: the query is not UTF-8 text\n" in err and err.count("query> ") == 4
    assert search_main([index, "apple", "k=1", "max_chars=2", "hybrid=false"]) == 0
    hit = Searcher.load(trained["index"], hybrid=False).search(["apple"], 1)[0][0]
    assert capsys.readouterr().out.splitlines()[1].endswith(f"[{hit.id}]  {hit.text[:2]}")
    monkeypatch.setattr("sys.stdin", None)
    assert search_main([index]) == 2 and capsys.readouterr().err.startswith("error: no query given\n")

    command = [sys.executable, "-m", "two_tower.cli.search", index, "format=jsonl", "threads=1"]
    reader = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdin.write(b"apple river\n" * 5000)
    reader.stdin.close()
    assert json.loads(reader.stdout.readline())["query"] == "apple river"
    reader.stdout.close()  # as | head -1 does
    assert reader.wait(timeout=300) == 141 and reader.stderr.read() == b""
    with open("/dev/full", "w") as full:
        done = subprocess.run([*command[:-2], "apple"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr == "error: cannot write the results to stdout (No space left on device); they are incomplete\n"


def test_k_is_checked_for_an_empty_list_of_queries_too(trained):
    """search([], k=0) returned [] where search(["apple"], k=0) is a ConfigError (a probe)."""
    searcher = Searcher.load(trained["index"])
    for k in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match=re.escape(f"k={k!r}: must be a whole number >= 1")):
            searcher.search([], k=k)
    assert searcher.search([], k=3) == []


def test_a_rerank_with_k_beyond_the_corpus_returns_the_corpus(trained, tmp_path, monkeypatch):
    """k is cut to the corpus's size before the MaxSim rerank sizes its arrays by it (k=10**12 asked for 7 TB)."""
    from tests.test_maxsim import static_model_over
    from two_tower.retrieval import maxsim as ms

    monkeypatch.setenv("TWO_TOWER_CACHE", str(tmp_path))
    split = validation_split(trained["data"])
    static_model_over(sorted({w for t in split.passage_texts for w in t.lower().split()}), dim=8)
    try:
        searcher = Searcher.load(trained["index"], rerank=ms.MaxSimRerank(teacher="tiny", dim=8))
        assert len(searcher.search(["apple river"], k=10**12)[0]) == len(searcher.index)
    finally:
        ms.static_tokens.cache_clear()


def test_search_command_reads_free_text_queries_as_queries(trained, capsys, monkeypatch):
    """query=... is taken as typed (Hydra's lexer refused an apostrophe, a comma made it a sweep); an
    argument with white space whose key is not a setting is a query ("E=mc2 apple"), a setting's value may
    hold white space ("hybrid=[0.5, 0.5]"), a typo without white space is still an error; a query or stdin
    line that is not UTF-8 is an error, not a search for its replacement characters."""
    import io

    index = f"index={trained['index']}"
    for args, query in ((["query=what's the apple, river"], "what's the apple, river"), (["E=mc2 apple"], "E=mc2 apple"), (["hybrid=[0.5, 0.5]", "apple"], "apple")):
        assert search_main([index, *args, "k=1"]) == 0, args
        assert capsys.readouterr().out.splitlines()[0] == f"query: {query}"
    assert search_main([index, "kk=3", "apple"]) == 2 and "kk: unknown setting" in capsys.readouterr().err
    assert search_main([index, "\udce9t\udce9"]) == 2 and capsys.readouterr().err == "error: the query is not UTF-8 text\n"
    # bytes under a strict locale (a text stdin would raise UnicodeDecodeError on the second line)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"apple river\n\xe9t\xe9 river\n"), encoding="utf-8", errors="strict"))
    assert search_main([index, "k=1"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("query: apple river") and captured.err == "error: line 2 is not UTF-8 text; skipped\n"
    # every line skipped: each said, then one line saying none was searched (was "no query on stdin" and the usage)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xe9t\xe9\n?!\n"), encoding="utf-8", errors="strict"))
    assert search_main([index, "k=1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: line 1 is not UTF-8 text; skipped" and lines[1].startswith("error: line 2") and lines[2:] == [
        "error: none of the 2 queries on stdin could be searched"], lines
    # blank lines in a queries file are passed over, not errors (status 0)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"apple river\n\n  \nbanana\n\n"), encoding="utf-8"))
    assert search_main([index, "k=1"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and [l for l in captured.out.splitlines() if l.startswith("query:")] == ["query: apple river", "query: banana"]


# ----------------------------------------------------------------------------------------- corpus files


def test_corpus_files_parquet_jsonl_tsv(tmp_path, caplog):
    import pandas as pd

    frame = pd.DataFrame({"pid": [7, 8, 9], "body": ["first passage", "", "third passage"]})
    frame.to_parquet(tmp_path / "c.parquet")
    frame.to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    (tmp_path / "c.tsv").write_text("7\tfirst passage\n8\t\n9\tthird passage\n")
    for name in ("c.parquet", "c.jsonl", "c.tsv"):
        passages = read_corpus_file(tmp_path / name, id_column="pid", text_column="body")
        assert passages.ids == ["7", "9"] and passages.texts == ["first passage", "third passage"], name
    # jsonl: a number or a list where the text should be is skipped, and counted apart from empty texts
    (tmp_path / "typed.jsonl").write_text('{"id": 1, "text": "a passage"}\n{"id": 2, "text": 5}\n{"id": 3, "text": ["a"]}\n{"id": 4, "text": ""}\n')
    with caplog.at_level("WARNING"):
        assert read_corpus_file(tmp_path / "typed.jsonl").ids == ["1"]
    assert "skipped 3 of 4 rows with a missing or empty text (2 of them not a string) (the first: id '2', line 2)" in caplog.text
    # a nullable integer column's missing id (pd.NA) became the id '<NA>'; now it is a missing id, its row named
    pd.DataFrame({"id": pd.array([1, 2, None], dtype="Int64"), "text": ["a", "b", "c"]}).to_parquet(tmp_path / "na.parquet")
    with pytest.raises(CorpusError, match=r"na\.parquet: 1 row\(s\) have no 'id' \(the first: row 3\)"):
        read_corpus_file(tmp_path / "na.parquet")
    # a text file's rows are named by their lines, skipped and blank ones counted ("row 2 of the rows read" was line 5: a probe)
    (tmp_path / "noid.tsv").write_text("1\ta\n\nnot two fields\n2\tb\n\tc\n")
    with pytest.raises(CorpusError, match=r"noid\.tsv: 1 row\(s\) have no 'id' \(the first: line 5\)"):
        read_corpus_file(tmp_path / "noid.tsv")
    (tmp_path / "dups.jsonl").write_text('{"id": "x", "text": "a"}\n\n{"id": "y", "text": "b"}\n{"id": "x", "text": "c"}\n')
    with pytest.raises(CorpusError, match=re.escape("dups.jsonl: 1 id(s) appear more than once ('x' x2 (lines 1, 4)); ids must be unique")):
        read_corpus_file(tmp_path / "dups.jsonl")
    with pytest.raises(CorpusError, match=r"c\.parquet: missing column\(s\) \['id', 'text'\]"):
        read_corpus_file(tmp_path / "c.parquet")
    (tmp_path / "dup.tsv").write_text("1\ta\n1\tb\n")
    with pytest.raises(CorpusError, match="dup.tsv: 1 id"):
        read_corpus_file(tmp_path / "dup.tsv")
    # bad lines are skipped and counted by reason, the first of each named (as jsonl lines and BEIR qrels lines are)
    (tmp_path / "bad.tsv").write_bytes(b"\xef\xbb\xbfid\ttext\n1\ta\tx\n\n2\tb\n3 no tab\n4\tp\xffear\n5\tc\r\n")
    caplog.clear()
    with caplog.at_level("WARNING"):
        passages = read_corpus_file(tmp_path / "bad.tsv")
    assert passages.ids == ["2", "5"] and passages.texts == ["b", "c"]
    assert "skipped {'not_two_fields': 2, 'not_utf8': 1} (first at line 2 (not_two_fields), 6 (not_utf8))" in caplog.text
    # a jsonl's line numbers are the file's: blank lines counted (they were not, so the line named was off by them)
    (tmp_path / "blank.jsonl").write_text('{"id": 1, "text": "a"}\n\n\n{"id": 2, "text": "b"}\nnot json\n{"id": 3, "text": "c"}\n')
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert read_corpus_file(tmp_path / "blank.jsonl").ids == ["1", "2", "3"]
    assert "skipped {'not_json': 1} (first at line 5 (not_json))" in caplog.text
    (tmp_path / "none.tsv").write_text("a,b\nc,d\n")  # a csv named .tsv: nothing read, one line saying why
    with pytest.raises(CorpusError, match=r"none.tsv: no line read: every line was skipped \{'not_two_fields': 2\} \(first at line 1 \(not_two_fields\)\); a line is id<TAB>text$"):
        read_corpus_file(tmp_path / "none.tsv")
    # a compressed file named .tsv / .jsonl (a probe indexed 5 garbage "passages" of a gzip with exit 0), a jsonl
    # of no readable line (it said "missing column(s)"), a file most of whose lines are unreadable: one line each
    import gzip

    (tmp_path / "packed.tsv").write_bytes(gzip.compress(b"1\ta passage\n" * 100))
    with pytest.raises(CorpusError, match=r"packed.tsv: a gzip file, not plain tsv text; decompress it first$"):
        read_corpus_file(tmp_path / "packed.tsv")
    (tmp_path / "bad.jsonl").write_text('not json\n[1, 2]\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl: no line read: every line was skipped \{'not_json': 1, 'row_not_a_mapping': 1\} \(first at line 1 \(not_json\), 2 \(row_not_a_mapping\)\)"):
        read_corpus_file(tmp_path / "bad.jsonl")
    (tmp_path / "mostly.tsv").write_text("1\tone\n" + "no tab here\n" * 3)
    with pytest.raises(CorpusError, match=r"mostly.tsv: only 1 of 4 lines read"):
        read_corpus_file(tmp_path / "mostly.tsv")
    # a header line in another case is a header too
    (tmp_path / "header.tsv").write_text("ID\tText\n1\tone\n")
    assert read_corpus_file(tmp_path / "header.tsv").ids == ["1"]
    # old Mac line ends (\r alone), as pandas read them
    (tmp_path / "cr.tsv").write_bytes(b"1\thello world\r2\tfoo bar\r3\tqux\r")
    assert read_corpus_file(tmp_path / "cr.tsv").ids == ["1", "2", "3"]
    # ... but in a file of \n lines a stray \r is the text's: it ended the line, and made the rest of a passage a
    # passage of its own under whatever id followed (p99 here, silently; a helper's probe)
    (tmp_path / "stray.tsv").write_bytes(b"p1\tboundary layer\r\np2\theat transfer\rp99\tinjected text\np3\tslabs\rcooled\n")
    with caplog.at_level("WARNING"):
        stray = read_corpus_file(tmp_path / "stray.tsv")
    assert stray.ids == ["p1", "p3"] and stray.texts == ["boundary layer", "slabs\rcooled"]
    assert "not_two_fields" in caplog.text and "line 2" in caplog.text


def test_a_checkpoint_folder_is_named_as_a_folder(trained, tmp_path):
    from two_tower.retrieval.checkpoint import load_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained["ckpt"], run / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match=re.escape(f"ckpt={run}: a folder; pass a checkpoint file, e.g. ckpt={run / 'checkpoints' / 'last.ckpt'}")):
        load_checkpoint(run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"a folder; pass a checkpoint file \(a run's checkpoints/\*.ckpt\)"):
        load_checkpoint(tmp_path / "empty")


# ----------------------------------------------------------------------------------------- evaluation


def test_evaluate_replaces_an_earlier_evaluation_in_out_and_checks_out_first(trained, tmp_path, monkeypatch):
    """A second evaluation into the same out= leaves none of the first's files (compare would read its
    per_query tables); an unwritable out= fails before any work."""
    from two_tower.core.errors import NotWritableError
    from two_tower.retrieval import evaluate as evaluate_module

    out = tmp_path / "eval"
    evaluate(compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={out}", "retriever=[dense,bm25]", "save_runs=true"]))
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["bm25.trec", "dense.trec"]
    (out / "notes.txt").write_text("mine")  # not an output: kept
    evaluate(compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={out}", "retriever=[bm25_stemmed]"]))
    assert sorted(p.name for p in out.iterdir()) == [".evaluation_outputs.json", "metrics.json", "metrics.md", "notes.txt", "per_query"]
    assert [p.name for p in (out / "per_query").iterdir()] == ["bm25_stemmed.parquet"]
    assert list(json.loads((out / "metrics.json").read_text())["metrics"]) == ["bm25_stemmed"]
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(evaluate_module, "build_retrievers", lambda cfg: pytest.fail("worked before checking out="))
    with pytest.raises(NotWritableError, match="out="):
        evaluate(compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'file' / 'eval'}", "retriever=[bm25]"]))


def _small_beir(root: Path) -> Path:
    from tests.test_open_vocabulary import write_beir

    write_beir(root, [b'{"_id": "d1", "text": "aircraft wing flutter"}', b'{"_id": "d2", "text": "boundary layer heat"}',
                      b'{"_id": "d3", "text": "shock wave nozzle"}'],
               [b'{"_id": "q1", "text": "xylophone quokka"}', b'{"_id": "q2", "text": "nozzle"}'], ["q1\td1\t1", "q2\td3\t1"])
    return root


def test_evaluate_out_in_the_home_folder_is_written_there(tmp_path, monkeypatch):
    """out="~/x" (quoted for Hydra, or a config given to evaluate()) was checked and made as ~/x, and the outputs then
    staged in ./~/x: a traceback after every retriever had run, and an empty ~/x left (a probe). index.py expands it."""
    beir = _small_beir(tmp_path / "beir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    evaluate(compose_retrieval("evaluate", [f"data.path={beir}", "split=test", 'out="~/evaluation"', "retriever=[bm25]"]))
    assert (tmp_path / "home" / "evaluation" / "metrics.json").is_file() and not (tmp_path / "~").exists()


def test_evaluate_out_replaces_only_what_evaluations_wrote_there(tmp_path, monkeypatch):
    """evaluate.py replaced everything named runs/, per_query/ or qrels.txt in out=, whoever wrote it (a helper's probe:
    out=<a copy of a training run> removed its per_query/val_best.parquet; out=/tmp would remove /tmp/runs). Now it
    replaces the files an earlier evaluation wrote (listed in .evaluation_outputs.json, or named by an older folder's
    metrics.json), keeps the rest, and refuses, before any work, to replace a file no evaluation wrote."""
    from two_tower.retrieval import evaluate as evaluate_module

    beir = _small_beir(tmp_path / "beir")
    out = tmp_path / "run"
    (out / "per_query").mkdir(parents=True)
    (out / "runs").mkdir()
    (out / "per_query" / "val_best.parquet").write_text("training's")
    (out / "runs" / "notes.txt").write_text("mine")
    settings = [f"data.path={beir}", "split=test", f"out={out}"]
    evaluate(compose_retrieval("evaluate", [*settings, "retriever=[bm25]", "save_runs=true"]))
    assert (out / "per_query" / "val_best.parquet").read_text() == "training's" and (out / "runs" / "notes.txt").read_text() == "mine"
    assert json.loads((out / ".evaluation_outputs.json").read_text()) == ["metrics.json", "metrics.md", "per_query/bm25.parquet", "qrels.txt", "runs/bm25.trec"]
    evaluate(compose_retrieval("evaluate", [*settings, "retriever=[bm25_stemmed]"]))  # replaces the first evaluation's files
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [".evaluation_outputs.json", "metrics.json", "metrics.md", "per_query/bm25_stemmed.parquet", "per_query/val_best.parquet", "runs/notes.txt"]
    # A file this evaluation would write that no evaluation wrote: refused before any retriever is built
    (out / "qrels.txt").write_text("somebody's")
    monkeypatch.setattr(evaluate_module, "build_retrievers", lambda cfg: pytest.fail("worked before checking out="))
    with pytest.raises(ConfigError, match=r"qrels.txt is there and no earlier evaluation wrote it"):
        evaluate(compose_retrieval("evaluate", [*settings, "retriever=[bm25]", "save_runs=true"]))
    monkeypatch.undo()
    assert (out / "qrels.txt").read_text() == "somebody's"
    # A folder evaluated before the list was kept: its metrics.json names what it wrote
    (out / "qrels.txt").unlink()
    (out / ".evaluation_outputs.json").unlink()
    evaluate(compose_retrieval("evaluate", [*settings, "retriever=[bm25]"]))
    assert sorted(p.name for p in (out / "per_query").iterdir()) == ["bm25.parquet", "val_best.parquet"]
    # A folder from before the list whose evaluation wrote no runs: a qrels.txt put there since is not its own
    (out / ".evaluation_outputs.json").unlink()
    (out / "qrels.txt").write_text("mine")
    assert evaluate_module.earlier_outputs(out) == {"metrics.json", "metrics.md", "per_query/bm25.parquet"}
    (out / "qrels.txt").unlink()
    _ = evaluate(compose_retrieval("evaluate", [*settings, "retriever=[bm25]"]))
    # A list no evaluation could have written (outside out=) owns nothing
    (out / ".evaluation_outputs.json").write_text(json.dumps(["../beir/corpus.jsonl", "per_query/val_best.parquet", "metrics.json"]))
    assert evaluate_module.earlier_outputs(out) == {"per_query/val_best.parquet", "metrics.json"}
    assert evaluate_module.earlier_outputs(out) - {"metrics.json"} <= {"per_query/val_best.parquet"}
    assert "../beir/corpus.jsonl" not in evaluate_module.earlier_outputs(out)


def test_evaluate_interrupted_while_replacing_leaves_a_folder_the_next_evaluation_replaces(tmp_path, monkeypatch):
    """Killed after the earlier metrics.json went and before the new one came: no metrics.json (no mix of two
    evaluations claims to be whole), and the list names every output left, so the next evaluation is not refused."""
    from two_tower.retrieval import evaluate as evaluate_module

    beir = _small_beir(tmp_path / "beir")
    out = tmp_path / "out"
    settings = [f"data.path={beir}", "split=test", f"out={out}"]
    evaluate(compose_retrieval("evaluate", [*settings, "retriever=[bm25]", "save_runs=true"]))
    real_replace = evaluate_module.os.replace

    def killed(source, target):
        if Path(target) == out / "metrics.json":  # moving the new metrics.json into out=
            raise KeyboardInterrupt
        return real_replace(source, target)

    monkeypatch.setattr(evaluate_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate(compose_retrieval("evaluate", [*settings, "retriever=[bm25_stemmed]", "save_runs=true"]))
    monkeypatch.undo()
    assert not (out / "metrics.json").exists()
    listed = set(json.loads((out / ".evaluation_outputs.json").read_text()))
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != ".evaluation_outputs.json"} <= listed
    evaluate(compose_retrieval("evaluate", [*settings, "retriever=[bm25]", "save_runs=true"]))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        ".evaluation_outputs.json", "metrics.json", "metrics.md", "per_query/bm25.parquet", "qrels.txt", "runs/bm25.trec"]


def test_bm25_retrieves_only_passages_that_share_a_word_with_the_query(tmp_path):
    """Unmatched passages filled BM25's top k in passage order and counted: q1, of words no passage has, scored MRR@10
    1 because its relevant passage came first in the corpus. Now its ranking is empty (the run file has no line for
    it) and it scores 0; q2 finds its passage."""
    beir = _small_beir(tmp_path / "beir")
    out = tmp_path / "out"
    metrics = evaluate(compose_retrieval("evaluate", [f"data.path={beir}", "split=test", f"out={out}", "retriever=[bm25]", "save_runs=true"]))["bm25"]
    assert metrics["mrr@10"] == metrics["recall@100"] == 0.5
    assert (out / "runs" / "bm25.trec").read_text().split()[:3] == ["q2", "Q0", "d3"] and len((out / "runs" / "bm25.trec").read_text().splitlines()) == 1


@pytest.mark.parametrize("setting, words", [
    ("retriever.hybrid_weighted.weights=[0,0]", "retriever.hybrid_weighted.weights=[0, 0]: all 0"),
    ("retriever.hybrid_weighted.weights=[1,-1]", "retriever.hybrid_weighted.weights[1]=-1: must be a finite number >= 0"),
    ("retriever.hybrid_weighted.weights=[inf,1]", "retriever.hybrid_weighted.weights[0]=inf: must be a finite number >= 0"),
    ("retriever.hybrid_rrf.weights=[1,nan]", "retriever.hybrid_rrf.weights[1]=nan: must be a finite number >= 0"),
    ("retriever.hybrid_rrf.depth=0", "retriever.hybrid_rrf.depth=0: must be a whole number >= 1"),
    ("retriever.hybrid_rrf.k=-1", "retriever.hybrid_rrf.k=-1: must be a finite number >= 0"),
    ("retriever.hybrid_weighted.weights=3", "retriever.hybrid_weighted.weights=3: give a list"),
])
def test_evaluate_refuses_fusion_settings_that_rank_nonsense(tmp_path, setting, words):
    """Weights of 0, below 0, infinite or nan, RRF's depth 0 or k below 0 ranked by passage number or worst first, and
    evaluate.py reported the row (index.py and search.py refused the same weights)."""
    beir = _small_beir(tmp_path / "beir")
    cfg = compose_retrieval("evaluate", [f"data.path={beir}", "split=test", f"out={tmp_path / 'out'}", "ckpt=unused.ckpt", "retriever=[hybrid]", setting])
    with pytest.raises(ConfigError, match=re.escape(words)):
        evaluate(cfg)
    with pytest.raises(ConfigError, match=r"all 0"):
        WeightedScoreFusion([BM25Retriever(), BM25Retriever()], [0.0, 0.0])


def test_evaluate_with_no_retriever_is_one_line(tmp_path):
    """retriever=[] removes the key: a ConfigAttributeError traceback, exit 1. Now the 'no retriever' line."""
    cfg = compose_retrieval("evaluate", [f"data.path={_small_beir(tmp_path / 'beir')}", "split=test", f"out={tmp_path / 'out'}", "retriever=[]"])
    with pytest.raises(ConfigError, match=r"no retriever selected"):
        evaluate(cfg)


def test_trec_runs_keep_scores_exact_and_ids_that_fit_the_format(tmp_path):
    """Scores were written %.6f: two Cranfield scores 6e-7 apart (0.7070170045, 0.7070164084) became a tie that
    trec_eval broke by docid, swapping them. An id with white space shifted a line's columns, silently."""
    from types import SimpleNamespace

    from two_tower.retrieval.evaluate import check_trec_ids, write_trec_run

    split = SimpleNamespace(query_ids=["q1"], passage_ids=["d1", "d2", "d3"])
    scores = np.array([[0.7070170045, 0.7070164084, 0.1]])
    write_trec_run(tmp_path / "run.trec", split, np.array([0]), SimpleNamespace(ranked=np.array([[0, 1, 2]]), scores=scores), "dense")
    lines = [line.split() for line in (tmp_path / "run.trec").read_text().splitlines()]
    assert [float(fields[4]) for fields in lines] == scores[0].tolist() and [fields[2] for fields in lines] == ["d1", "d2", "d3"]
    check_trec_ids(split)
    for ids, words in ((dict(passage_ids=["d1", "doc 4"]), "the document id 'doc 4' is empty or holds white space"), (dict(query_ids=["q\t1"]), "the query id 'q\\t1'"),
                       (dict(passage_ids=["d\x002"]), "the document id 'd\\x002' is empty or holds white space or a NUL")):  # trec_eval read 'd
        with pytest.raises(ConfigError, match=re.escape(words)):
            check_trec_ids(SimpleNamespace(**{"query_ids": ["q1"], "passage_ids": ["d1"], **ids}))


def test_evaluate_dense_reproduces_validation_and_writes_reports(trained, tmp_path):
    out = tmp_path / "eval"
    cfg = compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={out}", "retriever=[dense,bm25]", "save_runs=true"])
    metrics = evaluate(cfg)
    logged = {k.removeprefix("val/"): v for k, v in trained["metrics"].items() if k.startswith("val/")}
    assert {k: metrics["dense"][k] for k in logged} == pytest.approx(logged, abs=1e-6)
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["metrics"]) == ["dense", "bm25"]
    # How open the vocabulary had to be: shares of the dense model's tokens per id range, summing to 1.
    assert list(report["token_ranges"]) == ["dense"]
    for shares in report["token_ranges"]["dense"].values():
        assert set(shares) == {"training vocabulary", "extension", "hashed"} and sum(shares.values()) == pytest.approx(1.0)
    table = (out / "metrics.md").read_text()
    assert "| dense |" in table and "| bm25 |" in table
    # The TREC run ranks what the metrics scored: MRR@10 read back from the files agrees.
    qrels = {}
    for line in (out / "qrels.txt").read_text().splitlines():
        qid, _, docid, _ = line.split()
        qrels.setdefault(qid, set()).add(docid)
    first_hit = {}
    for line in (out / "runs" / "dense.trec").read_text().splitlines():
        qid, q0, docid, rank, score, tag = line.split()
        assert q0 == "Q0" and tag == "dense"
        if docid in qrels[qid] and qid not in first_hit:
            first_hit[qid] = int(rank)
    mrr = sum(1 / r for r in first_hit.values() if r <= 10) / len(qrels)
    assert mrr == pytest.approx(metrics["dense"]["mrr@10"], abs=1e-9)
    # Each query's values beside the aggregate, with the same query ids as the TREC files; the dense
    # retriever's agree query by query with what training kept for its last validation epoch.
    dense = per_query.read(out / "per_query" / "dense.parquet", "mrr@10")
    assert set(dense["qid"]) == set(qrels) and dense["mrr@10"].mean() == pytest.approx(metrics["dense"]["mrr@10"], abs=1e-12)
    assert per_query.read(out / "per_query" / "bm25.parquet", "ndcg@10")["ndcg@10"].mean() == pytest.approx(metrics["bm25"]["ndcg@10"], abs=1e-12)
    val_last = per_query.read(Path(trained["ckpt"]).parents[1] / "per_query" / "val_last.parquet", "mrr@10")
    joined = dense.merge(val_last, on="qid", suffixes=("", "_val"))
    assert len(joined) == len(dense) and (joined["query"] == joined["query_val"]).all()
    assert joined["mrr@10"].to_numpy() == pytest.approx(joined["mrr@10_val"].to_numpy(), abs=1e-6)


def test_evaluate_names_what_is_missing(trained, tmp_path):
    cfg = compose_retrieval("evaluate", [f"data.path={trained['data']}", f"out={tmp_path}"])  # dense, no ckpt
    with pytest.raises(ConfigError, match="needs a checkpoint: pass ckpt=PATH"):
        evaluate(cfg)
    cfg = compose_retrieval("evaluate", [f"data.path={trained['data']}", f"out={tmp_path}", "retriever=bm25", "+retriever.rrf={_target_:two_tower.retrieval.hybrid.ReciprocalRankFusion,parts:[dense,bm25],weights:[1,1]}"])
    with pytest.raises(ConfigError, match=r"rrf fuses \['dense'\]"):
        evaluate(cfg)


def test_hybrid_weights_reduce_to_their_parts(trained):
    split = validation_split(trained["data"])
    dense, bm25 = DenseRetriever(str(trained["ckpt"])), BM25Retriever()
    retrievers = {
        "dense": dense,
        "bm25": bm25,
        "rrf_dense_only": ReciprocalRankFusion([dense, bm25], [1.0, 0.0], depth=split.num_passages),
        "weighted_bm25_only": WeightedScoreFusion([dense, bm25], [0.0, 1.0]),
        "hybrid": WeightedScoreFusion([dense, bm25], [0.5, 0.5]),
    }
    metrics, rankings = evaluate_split(split, retrievers)
    assert torch.equal(rankings["rrf_dense_only"].ranked, rankings["dense"].ranked)
    # BM25 retrieves the passages it matched only (-1 after them); the fusion ranks every passage, in the same order
    matched = rankings["bm25"].ranked >= 0
    assert torch.equal(rankings["weighted_bm25_only"].ranked[matched], rankings["bm25"].ranked[matched])
    assert not matched.all() and (matched[:, :-1] | ~matched[:, 1:]).all()  # the unmatched are the rows' tails
    assert metrics["bm25"]["mrr@10"] > 0.3  # the synthetic queries share keywords with their passages


def test_evaluation_scores_each_part_once_with_the_same_figures(trained, monkeypatch):
    """evaluate.py's fusions scored their parts (dense, BM25) again although the parts had been scored for their own
    rows (~40% of the time at 10x marco7k); feedback over dense, dense a third time. Each part is now scored once a
    chunk of queries, and every retriever's rankings and metrics are those it gives alone."""
    from two_tower.core.metrics import mean_metrics, split_per_query
    from two_tower.retrieval.prf import PRFRetriever

    monkeypatch.setattr(SplitRetriever, "chunk", 7)  # several chunks of queries, the last one short
    split = validation_split(trained["data"])
    dense, bm25 = DenseRetriever(str(trained["ckpt"])), BM25Retriever()
    inner = WeightedScoreFusion([dense, bm25], [0.5, 0.5])
    retrievers = {
        "dense": dense,
        "bm25": bm25,
        "rrf": ReciprocalRankFusion([dense, bm25], [1.0, 1.0], depth=20),
        "inner": inner,
        "dense_prf": PRFRetriever([dense], depth=3),
        "of_a_fusion": WeightedScoreFusion([inner, bm25], [0.5, 0.5]),  # a fusion's scores read as a part
        "weighted": WeightedScoreFusion([dense, bm25], [0.7, 0.3]),
    }
    calls = {name: 0 for name in retrievers}
    for name, retriever in retrievers.items():
        scores = retriever.scores

        def counted(rows, name=name, scores=scores):
            calls[name] += 1
            return scores(rows)

        monkeypatch.setattr(retriever, "scores", counted)
    metrics, rankings = evaluate_split(split, retrievers)
    rows = split.evaluated_queries()
    chunks = math.ceil(len(rows) / 7)
    assert chunks >= 3 and calls == dict.fromkeys(retrievers, chunks), calls
    relevant = split.relevance(rows)
    for name, retriever in retrievers.items():
        alone = retriever.rankings(rows, 100)  # no shared scores: its parts scored for it, as before
        for field in ("ranked", "scores", "reranked"):
            assert torch.equal(getattr(rankings[name], field), getattr(alone, field)), (name, field)
        want = mean_metrics(split_per_query(alone.ranked, alone.reranked, relevant)[1])
        assert {k: v for k, v in metrics[name].items() if k != "seconds"} == want, name
    assert calls["dense"] > 3 * chunks  # alone, the fusions and feedback scored dense again


# Three queries over five passages, with BM25 ranks worked out by hand (see test docstring).
HAND_ROWS = [
    {"query": "banana", "passages": {"passage_text": ["apple banana", "cherry grape"], "is_selected": [1, 0]}},
    {"query": "grape smoothie", "passages": {"passage_text": ["peach plum", "cherry grape", "lemon melon"], "is_selected": [1, 0, 0]}},
    {"query": "apple", "passages": {"passage_text": ["apple cherry", "apple banana"], "is_selected": [1, 0]}},
]


def hand_split() -> PreparedSplit:
    rows, _ = msmarco.validate_rows(HAND_ROWS, "validation", for_training=False)
    split = PreparedSplit.from_rows(rows, Tokenizer([PAD, UNK]))
    assert split.passage_texts == ["apple banana", "cherry grape", "peach plum", "lemon melon", "apple cherry"]
    return split


def test_bm25_metrics_by_hand():
    """Passages 0 'apple banana', 1 'cherry grape', 2 'peach plum', 3 'lemon melon', 4 'apple cherry'.

    q0 'banana' -> only p0 matches: positive p0 at rank 1.
    q1 'grape smoothie' -> only p1 matches ('smoothie' is unknown); the rest share no word with it and are
       not retrieved (they followed in index order, and positive p2 counted at rank 3): positive p2 not found.
       Within its candidates [2, 1, 3]: p1 alone (p2 came second, by its place in the list): not found.
    q2 'apple' -> p0 and p4 tie exactly (same length, one 'apple' each); p0 is first: positive p4 at
       rank 2. Within its candidates [4, 0] the tie goes to the earlier candidate, p4: rank 1.
    """
    metrics, rankings = evaluate_split(hand_split(), {"bm25": BM25Retriever()})
    assert rankings["bm25"].ranked[:, :3].tolist() == [[0, -1, -1], [1, -1, -1], [0, 4, -1]]
    assert rankings["bm25"].reranked.tolist() == [[0, -1, -1], [1, -1, -1], [4, 0, -1]]
    want = {
        "mrr@10": (1 + 0 + 1 / 2) / 3,
        "recall@1": 1 / 3,
        "recall@10": 2 / 3,
        "recall@100": 2 / 3,
        "ndcg@10": (1 + 0 + 1 / math.log2(3)) / 3,
        "rerank_mrr@10": (1 + 0 + 1) / 3,
    }
    assert {k: metrics["bm25"][k] for k in want} == pytest.approx(want, abs=1e-12)


class FixedScores(SplitRetriever):
    """Made-up scores; ``no_match``: the score of a passage the part did not match (BM25-like: 0), else every passage is ranked."""

    def __init__(self, scores, no_match: float | None = None):
        super().__init__()
        self.table, self.no_match = torch.tensor(scores, dtype=torch.float32), no_match

    def scores(self, query_rows):
        return self.table[query_rows]

    def no_match_scores(self, query_rows):
        return None if self.no_match is None else torch.full((len(query_rows), 1), self.no_match)


def test_fusion_metrics_by_hand():
    """Two made-up parts over the same five passages.

    A (dense-like): q0 [.9 .1 .2 .3 .8]  q1 [.1 .2 .9 .3 .4]  q2 [.5 .1 .1 .1 .6]
    B (bm25-like):  q0 [ 0 10  0  0  8]  q1 [ 0  4  2  0  0]  q2 [ 6  0  0  0  0]
    Positives (hand_split): q0 p0, q1 p2, q2 p4.
    RRF, k=1, depth=2: a part's best passage gets 1/2, its second 1/3, unless B did not match it (score 0).
      q0: p0 1/2 (A1); p4 1/3 (A2) + 1/3 (B2) = 2/3; p1 1/2 (B1) -> p4, then p0 and p1 tie at 1/2 -> p0.
          Positive p0 at rank 2.
      q1: p2 1/2 (A1) + 1/3 (B2) = 5/6; p1 1/2 (B1); p4 1/3 (A2) -> p2 first. Positive p2: rank 1.
      q2: p4 1/2 (A1); p0 1/3 (A2) + 1/2 (B1) = 5/6; B's second (p1) scores 0, B's no match: no share.
          -> p0, p4, then p1 (0, lowest index). Positive p4: rank 2.
    Weighted 0.5/0.5 on min-max scores:
      q0: A -> p0 1, p4 .875, p1 0;  B -> p1 1, p4 .8.  p4 .8375 > p1 .5 = p0 .5 -> positive p0 rank 2
          (tie with p1, lower index first).
      q1: A -> p2 1, p4 .375, p1 .125;  B -> p1 1, p2 .5 -> p2 .75, p1 .5625, p4 .1875: rank 1.
      q2: A -> p4 1, p0 .8;  B -> p0 1 -> p0 .9, p4 .5: positive p4 at rank 2.
    """
    split = hand_split()
    a = FixedScores([[0.9, 0.1, 0.2, 0.3, 0.8], [0.1, 0.2, 0.9, 0.3, 0.4], [0.5, 0.1, 0.1, 0.1, 0.6]])
    b = FixedScores([[0, 10, 0, 0, 8], [0, 4, 2, 0, 0], [6, 0, 0, 0, 0]], no_match=0.0)
    retrievers = {
        "rrf": ReciprocalRankFusion([a, b], [1.0, 1.0], k=1, depth=2),
        "weighted": WeightedScoreFusion([a, b], [0.5, 0.5]),
    }
    metrics, rankings = evaluate_split(split, retrievers)
    assert rankings["rrf"].ranked[:, :3].tolist() == [[4, 0, 1], [2, 1, 4], [0, 4, 1]]
    assert rankings["rrf"].scores[0, :3].tolist() == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert rankings["rrf"].scores[2, :3].tolist() == pytest.approx([5 / 6, 1 / 2, 0])
    assert rankings["weighted"].ranked[:, :3].tolist() == [[4, 0, 1], [2, 1, 4], [0, 4, 1]]
    assert rankings["weighted"].scores[0, :3].tolist() == pytest.approx([0.8375, 0.5, 0.5])
    assert rankings["weighted"].scores[1, :3].tolist() == pytest.approx([0.75, 0.5625, 0.1875])
    for name in retrievers:
        assert metrics[name]["mrr@10"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3), name
        assert metrics[name]["recall@1"] == pytest.approx(1 / 3), name


def test_fusions_score_as_before_in_place_and_without_sorting_whole_rows(monkeypatch):
    """The fusions weigh and sum their parts in place (the first part's new tensor holds the sum: no [Q, P] tensor
    a step) and RRF selects each part's top depth instead of sorting every row (1,024 x 100,000 scores sorted made
    1.2 GB): the same scores, to the bit, as the sort and the sum of products gave, ties at the depth included."""
    rng = np.random.default_rng(5)
    dense = rng.normal(size=(40, 300)).astype(np.float32)
    dense[:, 150:] = dense[:, :150]  # copies: ties everywhere, also across the depth's cut
    lexical = rng.integers(0, 3, size=(40, 300)).astype(np.float32)  # mostly unmatched (0) or tied
    parts = [FixedScores(dense), FixedScores(lexical, no_match=0.0)]

    def old_rrf(scores, no_match, k, depth):
        top = torch.sort(scores, dim=1, descending=True, stable=True)
        order = top.indices[:, :depth]
        ranks = torch.arange(1, order.shape[1] + 1, dtype=torch.float32).expand_as(order)
        if no_match is None:
            return torch.zeros_like(scores).scatter_(1, order, 1.0 / (k + ranks))
        matched = top.values[:, :depth] > no_match
        return torch.zeros_like(scores).scatter_(1, order, torch.where(matched, 1.0 / (k + ranks), 0.0))

    def old_min_max(scores, no_match):
        low, high = scores.min(dim=1, keepdim=True).values, scores.max(dim=1, keepdim=True).values
        return (scores - low) / (high - low).clamp(min=1e-12)

    rows = np.arange(40)
    sorted_widths = []
    sort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda t, *a, **kw: (sorted_widths.append(t.shape[-1]), sort(t, *a, **kw))[1])
    for depth in (7, 100, 300, 1000):
        sorted_widths.clear()
        fused = ReciprocalRankFusion(parts, [1.0, 0.5], k=3, depth=depth).scores(rows)
        if depth < 300:
            assert max(sorted_widths) <= depth + 1  # top_k's sorts of the selected few: no row of 300 sorted whole
        want = sum(w * old_rrf(p.scores(rows), p.no_match_scores(rows), 3, depth) for p, w in zip(parts, [1.0, 0.5]))
        assert torch.equal(fused, want), depth
    fused_table = {}
    first = parts[0].scores
    parts[0].scores = lambda r: fused_table.setdefault("first", first(r))
    fused = WeightedScoreFusion(parts, [0.7, 0.3]).scores(rows)
    want = sum(w * old_min_max(p.scores(rows), None) for p, w in zip([FixedScores(dense), parts[1]], [0.7, 0.3]))
    assert torch.equal(fused, want)
    assert fused.data_ptr() == fused_table["first"].data_ptr()  # summed into the first part's tensor, no new one


def test_rrf_gives_every_ranked_passage_its_share_and_bm25_none_to_unmatched(tmp_path):
    """Standard RRF (sum of weight / (k + rank) over each part's top depth) where every passage is matched: a dense
    part's last passage in a corpus no deeper than ``depth``, and BM25's lowest-scored passage when it shares a word
    with the query, get their share (the rule 'no share at the part's minimum' took it from them); a BM25 passage
    sharing no word gets none, also for bm25s's bm25+ and bm25l, which score absent words above 0 (and where every
    passage shares a word, every one gets its share there too)."""
    split = PreparedSplit(
        query_texts=["cat"], query_tokens=None, passage_texts=["a cat sat", "cat cat", "the cat ran", "dog ran far"], passage_tokens=None,
        positives=Ragged.from_lists([[0]]), candidates=Ragged.from_lists([[0, 1, 2, 3]]),
    )
    dense = FixedScores([[0.9, 0.5, 0.1, 0.3]])
    fused = ReciprocalRankFusion([dense], [1.0], k=60)
    fused.prepare(split)
    assert fused.scores(np.array([0]))[0].tolist() == pytest.approx([1 / 61, 1 / 62, 1 / 64, 1 / 63])
    matched = FixedScores([[1.0, 2.0, 3.0, 0.5]], no_match=0.0)
    assert ReciprocalRankFusion([dense, matched], [1.0, 1.0]).scores(np.array([0]))[0].tolist() == pytest.approx([1 / 61 + 1 / 63, 1 / 62 + 1 / 62, 1 / 64 + 1 / 61, 1 / 63 + 1 / 64])
    every = PreparedSplit(
        query_texts=["cat"], query_tokens=None, passage_texts=["a cat sat", "cat cat", "the cat ran", "a cat far"], passage_tokens=None,
        positives=Ragged.from_lists([[0]]), candidates=Ragged.from_lists([[0, 1, 2, 3]]),
    )
    for method in ("lucene", "bm25+", "bm25l"):
        for corpus, matched in ((split, [True, True, True, False]), (every, [True] * 4)):  # "dog ran far" shares no word
            bm25 = BM25Retriever(method=method, stopwords=None)
            bm25.prepare(corpus)
            shares = ReciprocalRankFusion([bm25], [1.0]).scores(np.array([0]))[0].tolist()
            assert [s > 0 for s in shares] == matched, (method, corpus.passage_texts)


def test_corrupted_index_part_and_truncated_checkpoint_are_refused(trained, tmp_path):
    from two_tower.retrieval.checkpoint import load_checkpoint
    from two_tower.core.errors import CheckpointError

    broken = tmp_path / "index"
    shutil.copytree(trained["index"], broken)
    faiss_file = broken / "faiss.index"
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the vectors
    faiss_file.write_bytes(bytes(data))
    with pytest.raises(IndexFolderError, match="faiss.index"):
        Searcher.load(broken)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["ckpt"].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a two-tower checkpoint"):
        load_checkpoint(truncated)
    # Not a torch file at all: said so, without torch's advice to load it with weights_only=False
    (tmp_path / "passages.tsv").write_text("1\ta passage\n")
    with pytest.raises(CheckpointError, match=r"passages.tsv: not a two-tower checkpoint \(not a file written by torch.save: a checkpoint is a zip archive\)$"):
        load_checkpoint(tmp_path / "passages.tsv")
    # A checkpoint missing weights: one line, however many keys load_state_dict lists.
    state = torch.load(trained["ckpt"], weights_only=False)
    for key in [k for k in state["state_dict"] if k.startswith("towers.query_encoder.rnn.")]:
        del state["state_dict"][key]
    torch.save(state, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="not a two-tower checkpoint .*Missing key") as raised:
        load_checkpoint(tmp_path / "missing.ckpt")
    assert "\n" not in str(raised.value) and "\t" not in str(raised.value)


def test_teacher_retriever_ranks_by_the_teachers_cosine_and_caches(trained, tmp_path, monkeypatch):
    """retriever=teacher: the distillation teacher's cosine over the split, scored by the shared metric
    code (MRR@10 equals a brute-force ranking of its vectors), its vectors cached for the next run."""
    from tests.test_distill import TopicTeacherModel
    from two_tower.data.teacher import SentenceTransformerTeacher

    monkeypatch.setattr(SentenceTransformerTeacher, "_load", lambda self: TopicTeacherModel())
    TopicTeacherModel.calls = 0
    overrides = [f"data.path={trained['data']}", f"out={tmp_path / 'eval'}", "retriever=[teacher]", f"retriever.teacher.cache_dir={tmp_path / 'cache'}"]
    metrics = evaluate(compose_retrieval("evaluate", overrides))["teacher"]
    assert TopicTeacherModel.calls == 2  # the split's queries and passages, once each

    split = validation_split(trained["data"])
    model = TopicTeacherModel()
    queries = model.encode(split.query_texts, 64, True, False, True)
    passages = model.encode(split.passage_texts, 64, True, False, True)
    reciprocal = []
    for row in split.evaluated_queries():
        scores = passages @ queries[row]
        order = np.lexsort((np.arange(len(scores)), -scores))[:10]  # best first, ties to the lower passage
        hits = [rank for rank, pid in enumerate(order, 1) if pid in set(split.positives[row].tolist())]
        reciprocal.append(1 / hits[0] if hits else 0.0)
    assert metrics["mrr@10"] == pytest.approx(np.mean(reciprocal), abs=1e-9) and metrics["mrr@10"] > 0.5

    calls = TopicTeacherModel.calls
    again = evaluate(compose_retrieval("evaluate", [*overrides[:1], f"out={tmp_path / 'again'}", *overrides[2:]]))["teacher"]
    assert TopicTeacherModel.calls == calls  # read from the cache: the model is not used again
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in metrics.items() if k != "seconds"}


# ----------------------------------------------------------------------------------------- pseudo-relevance feedback


def brute_force_rocchio(queries: np.ndarray, passages: np.ndarray, depth: int, alpha: float, beta: float) -> np.ndarray:
    """Rankings [Q, P] after Rocchio feedback, written out with numpy loops (ties to the lower passage)."""
    ranked = []
    for q in queries:
        first = np.lexsort((np.arange(len(passages)), -(passages @ q)))
        moved = alpha * q + beta * np.mean([passages[p] for p in first[:depth]], axis=0)
        ranked.append(np.lexsort((np.arange(len(passages)), -(passages @ moved))))
    return np.array(ranked)


def test_dense_prf_is_rocchio_over_the_checkpoint_vectors(trained, tmp_path):
    """retriever=dense_prf: the metrics of a brute-force Rocchio ranking (depth 5, 0.4 / 0.6, the config's
    values) over the dense retriever's own vectors; depth 0 gives back the dense ranking."""
    from two_tower.retrieval.prf import PRFRetriever, RocchioPRF

    cfg = compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path}", "retriever=[dense_prf]"])
    assert {k: cfg.retriever.dense_prf[k] for k in ("depth", "alpha", "beta")} == {"depth": 5, "alpha": 0.4, "beta": 0.6}
    assert RocchioPRF(**{k: cfg.retriever.dense_prf[k] for k in ("depth", "alpha", "beta")}) == RocchioPRF()  # one setting in code and config
    metrics = evaluate(cfg)
    assert list(metrics) == ["dense", "dense_prf"]

    split = validation_split(trained["data"])
    dense = DenseRetriever(str(trained["ckpt"]))
    dense.prepare(split)
    rows = split.evaluated_queries()
    ranked = brute_force_rocchio(dense.queries[rows].numpy(), dense.passages.numpy(), 5, 0.4, 0.6)
    reciprocal = []
    for row, order in zip(rows, ranked):
        hits = [rank for rank, pid in enumerate(order[:10], 1) if pid in set(split.positives[row].tolist())]
        reciprocal.append(1 / hits[0] if hits else 0.0)
    assert metrics["dense_prf"]["mrr@10"] == pytest.approx(np.mean(reciprocal), abs=1e-9)
    assert metrics["dense_prf"]["mrr@10"] != metrics["dense"]["mrr@10"]  # the feedback changed something

    retrievers = {"dense": dense, "off": PRFRetriever([dense], depth=0), "on": PRFRetriever([dense], depth=5)}
    _, rankings = evaluate_split(split, retrievers)
    assert torch.equal(rankings["off"].ranked, rankings["dense"].ranked)
    assert rankings["on"].ranked[:, :10].tolist() == ranked[:, :10].tolist()


def test_searcher_prf_ranks_as_evaluate_does(trained, capsys):
    """The index folder's Searcher with RocchioPRF returns the passages evaluate's dense_prf ranks, and
    search.py takes it as prf=rocchio; a bad setting is one error line."""
    from two_tower.retrieval.prf import PRFRetriever, RocchioPRF

    split = validation_split(trained["data"])
    dense = DenseRetriever(str(trained["ckpt"]))
    prf = PRFRetriever([dense], depth=3, alpha=0.5, beta=0.5)
    prf.prepare(split)
    rows = split.evaluated_queries()[:25]
    brute = prf.rankings(rows, 10)
    searcher = Searcher.load(trained["index"], prf=RocchioPRF(depth=3, alpha=0.5, beta=0.5), hybrid=False)
    results = searcher.search([split.query_texts[r] for r in rows], k=10)
    assert [[h.id for h in hits] for hits in results] == [[str(i) for i in ids] for ids in brute.ranked.tolist()]
    assert np.array([[h.score for h in hits] for hits in results]) == pytest.approx(brute.scores.numpy(), abs=1e-5)  # the same numbers too
    plain = Searcher.load(trained["index"], hybrid=False).search([split.query_texts[r] for r in rows], k=10)
    assert [[h.id for h in hits] for hits in plain] != [[h.id for h in hits] for hits in results]

    assert search_main([f"index={trained['index']}", "apple", "river", "k=2", "prf=rocchio", "prf.depth=2"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "query: apple river"
    assert search_main([f"index={trained['index']}", "apple", "river", "k=2", "hybrid=false"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "query: apple river"
    for bad, named in (("prf.depth=-1", "prf.depth=-1"), ("+prf.foo=1", "prf.foo"), ("hybrid=maybe", "hybrid='maybe'")):
        assert search_main([f"index={trained['index']}", "apple", "prf=rocchio", bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err and "Traceback" not in err
    # a group's setting without the group, or a key the group lacks: one line that says which (not Hydra's "+" hint)
    for args, message in (
        (["rerank.depth=5"], "error: rerank.depth: a setting of the rerank group, which is off; select it first, e.g. rerank=maxsim rerank.depth=5"),
        (["prf=rocchio", "prf.foo=1"], "error: prf.foo: unknown setting; prf has depth, alpha, beta"),
        (["rerank=maxsim", "rerank.foo=1"], "error: rerank.foo: unknown setting; rerank has depth, weight, teacher, dim, max_tokens"),
    ):
        assert search_main([f"index={trained['index']}", "apple", *args]) == 2, args
        assert capsys.readouterr().err == message + "\n"


def test_feedback_with_rows_found_returns_the_kind_it_was_given():
    """``RocchioPRF.expand`` says it returns numpy for numpy and torch for torch; with ``found`` (the rows an approximate
    index returned) torch input came back as a numpy array (np.maximum and np.where). The same values either way."""
    import torch

    from two_tower.retrieval.prf import RocchioPRF

    prf = RocchioPRF(depth=2, alpha=0.4, beta=0.6)
    queries, feedback, found = np.ones((2, 3), np.float32), np.stack([np.eye(3, dtype=np.float32)[:2]] * 2), np.array([[True, False], [False, False]])
    as_numpy = prf.expand(queries, feedback, found)
    as_torch = prf.expand(torch.from_numpy(queries), torch.from_numpy(feedback), torch.from_numpy(found))
    assert isinstance(as_numpy, np.ndarray) and isinstance(as_torch, torch.Tensor)
    for moved in (as_numpy, as_torch.numpy()):
        assert moved.ravel().tolist() == pytest.approx([1.0, 0.4, 0.4, 1.0, 1.0, 1.0])


def test_a_short_list_from_an_approximate_index_is_padded_with_minus_infinity():
    """``SearchHits`` says -1 / -inf where fewer than k; an IVF index probing one list padded with FAISS's -3.4e38."""
    vectors = clustered(400, 16, 4, seed=3)
    index = PassageIndex(Path("."), build_faiss(vectors, "IVF4,Flat", train_size=200, search_params="nprobe=1"), None, {"faiss": {"type": "IVF"}})
    hits = index.search(vectors[:3], 400)
    missing = hits.rows < 0
    assert missing.any() and (~missing).any()
    assert np.isneginf(hits.scores[missing]).all() and np.isfinite(hits.scores[~missing]).all()
    assert not (missing[:, :-1] & ~missing[:, 1:]).any()  # the found rows first, best first


def test_stored_vectors_come_back_from_flat_and_ivf_indexes():
    from two_tower.retrieval.prf import RocchioPRF

    vectors = clustered(400, 16, 4, seed=3)
    for factory in ("Flat", "IVF4,Flat", "HNSW32"):
        index = PassageIndex(Path("."), build_faiss(vectors, factory, train_size=200), None, {})
        rows = np.array([[3, 7], [399, 0]])
        assert index.vectors(rows) == pytest.approx(vectors[rows], abs=1e-6)
        with pytest.raises(ConfigError, match="outside"):
            index.vectors(np.array([400]))
    # Built under a lock: threads reading a fresh IVF index's vectors at once all get them.
    from concurrent.futures import ThreadPoolExecutor

    index = PassageIndex(Path("."), build_faiss(vectors, "IVF4,Flat", train_size=200), None, {})
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda r: index.vectors(np.array([r])), range(32)))
    assert np.concatenate(results) == pytest.approx(vectors[:32], abs=1e-6)
    # Feedback rows an approximate index did not return (-1) are left out of the mean; none at all keeps the query.
    for alpha in (0.4, 0.0):
        prf = RocchioPRF(depth=2, alpha=alpha, beta=0.6)
        queries, feedback = np.ones((2, 3)), np.stack([np.eye(3)[:2], np.eye(3)[:2]])
        moved = prf.expand(queries, feedback, np.array([[True, False], [False, False]]))
        assert moved.tolist() == [[alpha + 0.6, alpha, alpha], [1.0, 1.0, 1.0]]
    for bad in ({"depth": -1}, {"depth": 100_000}, {"alpha": float("nan")}, {"depth": 2, "alpha": 0, "beta": 0}, {"beta": True}):
        with pytest.raises(ConfigError, match="prf"):
            RocchioPRF(**bad)
    with pytest.raises(ConfigError, match="prf.foo: unknown setting"):
        RocchioPRF.from_config({"depth": 3, "foo": 1})


# ----------------------------------------------------------------------------------------- hybrid search in index folders


def test_index_stores_the_vectors_the_model_scores_with(trained, tmp_path):
    """A passage with no readable word ("!!!") has a zero bag part, so the model's vector is shorter than 1 and
    evaluate.py scores it low; the folder stores it as it is (L2-normalising it lifted it 1.4x above where
    evaluate ranks it) and scores queries as the model does, so the folder ranks and scores as the brute force."""
    from two_tower.retrieval.checkpoint import load_checkpoint
    from two_tower.retrieval.indexer import encode_passages

    split = validation_split(trained["data"])
    texts = split.passage_texts[:60] + ["!!!", "\U0001F600 \U0001F600 \U0001F600"]
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"p{i}\t{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"corpus={corpus}", f"out={tmp_path / 'index'}"]))
    module = load_checkpoint(str(trained["ckpt"]))
    vectors = encode_passages(module, texts)
    assert np.linalg.norm(vectors[-2:], axis=1).max() < 0.99  # the case: shorter than the rest
    searcher = Searcher.load(tmp_path / "index", hybrid=False)
    assert searcher.index.vectors(np.arange(len(texts))) == pytest.approx(vectors, abs=1e-6)
    queries = split.query_texts[:20]
    scores = searcher.encoder.encode(queries) @ vectors.T
    for q, hits in enumerate(searcher.search(queries, k=len(texts))):
        order = np.lexsort((np.arange(len(texts)), -scores[q]))
        assert [h.id for h in hits] == [f"p{i}" for i in order]
        assert [h.score for h in hits] == pytest.approx(scores[q][order].tolist(), abs=1e-5)


def test_index_says_how_many_passages_fill_the_model_window(trained, tmp_path, caplog):
    """A tower reads a passage's first max_passage_len tokens: index.py said nothing of the rest, so a corpus of
    long documents (63% of Cranfield's abstracts are longer than 128 tokens) lost words silently. It now warns
    with the count, and the folder's manifest records it."""
    from two_tower.retrieval.checkpoint import load_checkpoint

    window = load_checkpoint(str(trained["ckpt"])).tokenizer.max_passage_len
    texts = [f"short passage number {i}" for i in range(20)]
    texts += [" ".join(f"word{j}" for j in range(window + extra)) for extra in (0, 1, 50)]  # exactly the window, and longer
    texts += [" ".join(f"word{j}" for j in range(window - 1))]  # one token short of it
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"p{i}\t{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    with caplog.at_level("INFO"):
        build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"corpus={corpus}", f"out={tmp_path / 'index'}"]))
    warned = [r for r in caplog.records if "fill the model's window" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"
    assert warned[0].getMessage().startswith(f"3 of {len(texts)} passages (12.5%) fill the model's window of {window} tokens (data.tokenizer.max_passage_len")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["passage_window"] == {"tokens": window, "passages_filling_it": 3}


def test_window_count_is_quiet_when_no_text_fills_it_and_a_note_below_its_warning_share(caplog):
    import logging

    from two_tower.data.tokenizer import WindowCount

    count = WindowCount(4, "data.tokenizer.max_query_len")
    count.add(np.array([1, 2, 3]))
    assert count.note("queries") is None
    count.add(np.array([4] * 19 + [1] * 178))
    assert count.full == 19 and count.texts == 200
    with caplog.at_level("INFO"):
        count.log(logging.getLogger("test"), "queries")
    assert [(r.levelname, r.getMessage()[:41]) for r in caplog.records] == [("INFO", "19 of 200 queries (9.5%) fill the model's")]


def test_index_search_params_that_do_not_apply_are_refused_before_encoding(trained, tmp_path, monkeypatch):
    """index.search_params naming a parameter the factory lacks (nprobe for HNSW) was refused after the whole
    corpus was encoded (hours at scale); now before the first passage is."""
    from two_tower.retrieval import indexer

    monkeypatch.setattr(indexer, "encode_passages", lambda *a, **k: pytest.fail("encoded before checking search_params"))
    monkeypatch.setattr(indexer, "encoded_chunks", lambda *a, **k: pytest.fail("encoded before checking search_params"))
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'index'}", "index.factory=HNSW32", "index.search_params='nprobe=4'"])
    with pytest.raises(ConfigError, match=re.escape("index.search_params='nprobe=4' does not apply to this HNSW32 index (it has no parameter nprobe")):
        build_index(cfg)
    assert not (tmp_path / "index").exists()


def test_a_folder_of_the_previous_format_loads_with_a_warning_and_older_ones_are_refused(trained, tmp_path, caplog):
    """Format 3 normalised every vector (the same rankings but for passages with no readable word under a bag
    path): it loads and says so; format 2 is one error naming the formats read."""
    for fmt in (3, 2):
        folder = tmp_path / f"format{fmt}"
        shutil.copytree(trained["index"], folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["format"] == 4
        (folder / "manifest.json").write_text(json.dumps({**manifest, "format": fmt}))
        if fmt == 3:
            with caplog.at_level("WARNING"):
                assert len(Searcher.load(folder).search(["apple"], 3)[0]) == 3
            assert any("built before index folders kept the model's vectors" in r.getMessage() for r in caplog.records)
        else:
            with pytest.raises(IndexFolderError, match="format 2, this code reads formats 3, 4; rebuild it"):
                Searcher.load(folder)


def brute_force_smoothing(vectors: np.ndarray, neighbours: int, weight: float) -> np.ndarray:
    """Each vector moved towards the mean of its nearest other vectors (exact, ties to the lower row), kept at its
    own length, with numpy loops."""
    out = []
    for i, v in enumerate(vectors):
        order = [j for j in np.lexsort((np.arange(len(vectors)), -(vectors @ v))) if j != i][:neighbours]
        moved = (1 - weight) * v + weight * np.mean(vectors[order], axis=0) if order else v
        out.append(moved * np.linalg.norm(v) / np.linalg.norm(moved))
    return np.array(out, dtype=np.float32)


def test_neighbour_smoothing_is_the_brute_force_mean_of_nearest_passages(monkeypatch):
    """Smoothed vectors equal a numpy loop's, also with exact duplicates (a duplicate is its twin's nearest
    neighbour, and itself is left out), a corpus smaller than the neighbours asked for, and from an
    approximate index whose neighbours are nearly all the exact ones; bad settings are one ConfigError each."""
    from two_tower.retrieval.smoothing import NeighbourSmoothing

    vectors = clustered(300, 16, 6, seed=5)
    vectors[7] = vectors[3]  # an exact duplicate
    vectors[11] *= 0.7  # shorter than the rest (as a passage with no readable word under a bag path): kept so
    monkeypatch.setattr("two_tower.retrieval.smoothing.ROWS_AT_ONCE", 7)  # chunks of a chunk: the same vectors
    monkeypatch.setattr("two_tower.retrieval.smoothing.SEARCH_ROWS", 3)  # and searches of a few rows
    for neighbours, weight in ((1, 0.5), (5, 0.2), (3, 1.0)):
        smoothing = NeighbourSmoothing(neighbours, weight)
        got = np.concatenate(list(smoothing.chunks(build_faiss(vectors.copy(), "Flat", normalize=False), 64, progress=False)))
        assert got == pytest.approx(brute_force_smoothing(vectors, neighbours, weight), abs=1e-5)
    assert np.concatenate(list(NeighbourSmoothing(5, 0.0).chunks(build_faiss(vectors.copy(), "Flat", normalize=False), 64, progress=False))) == pytest.approx(vectors, abs=1e-6)
    few = vectors[:3].copy()
    assert NeighbourSmoothing(10, 0.3).vectors(build_faiss(few.copy(), "Flat"), np.arange(3)) == pytest.approx(brute_force_smoothing(few, 10, 0.3), abs=1e-5)
    one = vectors[:1].copy()
    assert NeighbourSmoothing(5, 0.3).vectors(build_faiss(one.copy(), "Flat"), np.arange(1)) == pytest.approx(one, abs=1e-6)
    hnsw = np.concatenate(list(NeighbourSmoothing(5, 0.2).chunks(build_faiss(vectors.copy(), "HNSW32", normalize=False), 100, progress=False)))
    assert np.mean(np.abs(hnsw - brute_force_smoothing(vectors, 5, 0.2)).max(1) < 1e-5) > 0.9
    ivf = np.concatenate(list(NeighbourSmoothing(5, 0.2).chunks(build_faiss(vectors.copy(), "IVF4,Flat", train_size=300, normalize=False), 100, progress=False)))
    assert np.mean(np.abs(ivf - brute_force_smoothing(vectors, 5, 0.2)).max(1) < 1e-5) > 0.8
    for bad in ({"neighbours": 0}, {"neighbours": 2.5}, {"neighbours": True}, {"weight": 1.5}, {"weight": float("nan")}, {"weight": "0.2"}):
        with pytest.raises(ConfigError, match="smooth"):
            NeighbourSmoothing(**bad)
    with pytest.raises(ConfigError, match="smooth.foo: unknown setting; smooth has neighbours, weight"):
        NeighbourSmoothing.from_config({"foo": 1})


def test_smoothed_index_folder_ranks_as_evaluate_dense_smoothed(trained, tmp_path, monkeypatch, caplog):
    """index.py smooth=neighbours stores the vectors evaluate's dense_smoothed ranks by (the brute-force
    smoothing of the dense retriever's passages), so the folder's Searcher returns the same passages and scores,
    also with feedback on top (dense_smoothed_prf) and the folder's default hybrid ranking (hybrid_smoothed); the
    manifest records the setting; a bad one is refused before anything is loaded."""
    from two_tower.retrieval.prf import RocchioPRF

    cfg = compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'eval'}", "retriever=[smoothed]", "save_runs=true"])
    from two_tower.retrieval.smoothing import NeighbourSmoothing

    settings = {k: v for k, v in cfg.retriever.dense_smoothed.items() if k not in ("_target_", "parts")}
    assert NeighbourSmoothing(**settings) == NeighbourSmoothing() == NeighbourSmoothing.from_config(compose_retrieval("index", ["smooth=neighbours"]).smooth)  # one setting in code and configs
    metrics = evaluate(cfg)
    assert list(metrics) == ["dense", "bm25_stemmed", "hybrid_rrf", "hybrid_weighted", "dense_smoothed", "dense_smoothed_prf", "hybrid_smoothed"]
    assert list(cfg.retriever.hybrid_smoothed.weights) == list(cfg.retriever.hybrid_weighted.weights)
    assert metrics["dense_smoothed"]["mrr@10"] != metrics["dense"]["mrr@10"]  # the smoothing changed something

    split = validation_split(trained["data"])
    dense = DenseRetriever(str(trained["ckpt"]))
    dense.prepare(split)
    smoothed = brute_force_smoothing(dense.passages.numpy(), 5, 0.2)
    rows = split.evaluated_queries()
    ranked = np.lexsort((np.broadcast_to(np.arange(len(smoothed)), (len(rows), len(smoothed))), -(dense.queries[rows].numpy() @ smoothed.T)), axis=-1)
    reciprocal = []
    for row, order in zip(rows, ranked):
        hits = [rank for rank, pid in enumerate(order[:10], 1) if pid in set(split.positives[row].tolist())]
        reciprocal.append(1 / hits[0] if hits else 0.0)
    assert metrics["dense_smoothed"]["mrr@10"] == pytest.approx(np.mean(reciprocal), abs=1e-9)

    folder = tmp_path / "smoothed"
    monkeypatch.setattr("two_tower.retrieval.indexer.EXACT_NEIGHBOURS_WARN", 10)  # a Flat corpus over the bar is warned about
    with caplog.at_level("WARNING"):
        build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={folder}", "smooth=neighbours"]))
    assert any("exact neighbours of" in r.getMessage() and "HNSW or IVF" in r.getMessage() for r in caplog.records)
    assert json.loads((folder / "manifest.json").read_text())["config"]["smooth"] == {"neighbours": 5, "weight": 0.2}
    from fastapi.testclient import TestClient
    from two_tower.serve.app import create_app

    with TestClient(create_app(Searcher.load(folder))) as client:  # /health says how the folder ranks
        assert client.get("/health").json()["index"]["ranking"]["smooth"] == {"neighbours": 5, "weight": 0.2}
    runs = {}
    for name in ("dense_smoothed", "dense_smoothed_prf", "hybrid_smoothed"):
        for line in (tmp_path / "eval" / "runs" / f"{name}.trec").read_text().splitlines():
            qid, _, pid, rank, score, _ = line.split()
            runs.setdefault(name, {}).setdefault(qid, []).append((pid, float(score)))
    queries = [split.query_texts[r] for r in rows]
    for name, prf, hybrid in (("dense_smoothed", None, False), ("dense_smoothed_prf", RocchioPRF(), False), ("hybrid_smoothed", None, None)):
        results = Searcher.load(folder, hybrid=hybrid, prf=prf).search(queries, k=10)  # hybrid None: the folder's default
        for row, hits in zip(rows, results):
            expected = runs[name][str(row)][:10]
            assert [h.id for h in hits] == [pid for pid, _ in expected], (name, row)
            assert [h.score for h in hits] == pytest.approx([s for _, s in expected], abs=1e-5)
    plain = Searcher.load(trained["index"], hybrid=False).search(queries, k=10)
    assert [[h.id for h in hits] for hits in plain] != [[h.id for h in hits] for hits in Searcher.load(folder, hybrid=False).search(queries, k=10)]

    # checked before the checkpoint is read (this one does not exist)
    for bad, message in (("smooth.neighbours=0", "smooth.neighbours=0: must be a whole number from 1 to 1000"),
                         ("smooth.weight=2", "smooth.weight=2: must be a number from 0 (the passage's own vector) to 1 (its neighbours' mean)")):
        out = tmp_path / "refused"
        with pytest.raises(ConfigError) as err:
            build_index(compose_retrieval("index", [f"ckpt={tmp_path / 'no.ckpt'}", f"data.path={trained['data']}", f"out={out}", "smooth=neighbours", bad]))
        assert str(err.value) == message
        assert not out.exists()


def test_searcher_hybrid_ranks_as_evaluate_hybrid_weighted(trained, tmp_path):
    """A folder built with hybrid.enabled (the default) ranks by dense + stemmed BM25 fused exactly as
    evaluate.py's hybrid_weighted: the same passages and fused scores; a dense-only folder searches as
    before; hybrid=True on it, or a changed BM25 file, is one clear refusal."""
    split = validation_split(trained["data"])
    cfg = compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'eval'}", "retriever=[hybrid]"])
    index_cfg = compose_retrieval("index", ["ckpt=x"])
    assert list(index_cfg.hybrid.weights) == list(cfg.retriever.hybrid_weighted.weights)  # one setting, two configs
    assert {k: v for k, v in index_cfg.hybrid.bm25.items()} == {k: v for k, v in cfg.retriever.bm25_stemmed.items()}
    from two_tower.retrieval.evaluate import build_retrievers

    retrievers = build_retrievers(cfg)
    rows = split.evaluated_queries()[:30]
    _, rankings = evaluate_split(split, {"hybrid_weighted": retrievers["hybrid_weighted"]})
    searcher = Searcher.load(trained["index"])
    assert searcher.lexical is not None and searcher.index.hybrid_weights == [0.7, 0.3]
    results = searcher.search([split.query_texts[r] for r in rows], k=10)
    position = {r: i for i, r in enumerate(split.evaluated_queries().tolist())}
    for row, hits in zip(rows.tolist(), results):
        want = rankings["hybrid_weighted"]
        assert [h.id for h in hits] == [str(p) for p in want.ranked[position[row], :10].tolist()]
        assert [h.score for h in hits] == pytest.approx(want.scores[position[row], :10].tolist(), abs=1e-5)
    # A Flat folder is scored whole (as evaluate does); the candidate path other index types take agrees.
    from two_tower.retrieval.index import normalised

    texts = [split.query_texts[r] for r in rows]
    vectors = normalised(searcher.encoder.encode(texts))
    assert searcher.index.flat_vectors() == pytest.approx(searcher.index.vectors(np.arange(len(searcher.index))))
    whole, candidates = searcher.hybrid_search(texts, vectors, 10, exhaustive=True), searcher.hybrid_search(texts, vectors, 10, exhaustive=False)
    assert whole.rows.tolist() == candidates.rows.tolist() and whole.scores == pytest.approx(candidates.scores, abs=1e-5)
    assert searcher.hybrid_search(texts, vectors.astype(np.float64), 10).rows.tolist() == whole.rows.tolist()
    # A query of stopwords only: BM25 scores nothing, the dense part ranks alone.
    assert [h.id for h in searcher.search(["the of and"], k=5)[0]] == [h.id for h in Searcher.load(trained["index"], hybrid=False).search(["the of and"], k=5)[0]]

    dense_only = tmp_path / "dense_only"
    build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={dense_only}", "hybrid.enabled=false"]))
    assert not (dense_only / "bm25").exists() and "hybrid" not in json.loads((dense_only / "manifest.json").read_text())
    plain = Searcher.load(dense_only)
    assert plain.lexical is None
    queries = [split.query_texts[r] for r in rows[:5]]
    assert [[h.id for h in q] for q in plain.search(queries, 5)] == [[h.id for h in q] for q in Searcher.load(trained["index"], hybrid=False).search(queries, 5)]
    with pytest.raises(IndexFolderError, match="without a BM25 index"):
        Searcher.load(dense_only, hybrid=True)
    with pytest.raises(ConfigError, match="hybrid.weights"):
        build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'bad'}", "hybrid.weights=[0,0]"]))

    changed = tmp_path / "changed"
    shutil.copytree(trained["index"], changed)
    with open(changed / "bm25" / "vocab.index.json", "a") as f:
        f.write(" ")
    with pytest.raises(IndexFolderError, match="vocab.index.json does not match"):
        Searcher.load(changed)
    # The manifest must name every file under bm25/ too, and its weights must make sense.
    for edit, message in (
        (lambda m, folder: m["files"].pop("bm25/vocab.index.json"), r"does not name \['bm25/vocab.index.json'\]"),
        (lambda m, folder: (folder / "bm25" / "extra.bin").write_bytes(b"x"), r"does not name \['bm25/extra.bin'\]"),
        (lambda m, folder: m["hybrid"].update(weights=[0.1, -1]), r"hybrid.weights=\[0.1, -1\]"),
        # edited by hand, these were KeyErrors, AttributeErrors and a message that read as consistent (a probe)
        (lambda m, folder: m["model"].pop("dim"), r"model.dim=None must be whole numbers"),
        (lambda m, folder: m.update(passages=str(m["passages"])), r"passages='\d+' and model.dim=\d+ must be whole numbers"),
        (lambda m, folder: m.update(static_model={"teacher": "x"}), r"static_model=\{'teacher': 'x'\} must name its teacher and dim"),
        (lambda m, folder: m.update(format="4"), r"format '4', this code reads formats 3, 4"),
        (lambda m, folder: m.pop("hybrid"), r"names a BM25 index \(bm25/\) and no hybrid weights"),
        (lambda m, folder: (m["files"].pop("term_statistics.npz"), (folder / "term_statistics.npz").unlink()),
         r"the model has a bag-of-words path and the folder no term_statistics.npz"),
    ):
        folder = tmp_path / f"edited{len(list(tmp_path.iterdir()))}"
        shutil.copytree(trained["index"], folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        edit(manifest, folder)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(IndexFolderError, match=message):
            Searcher.load(folder)
    # Files a load never reads (a desktop's .DS_Store, an NFS .nfs* file, an index folder built inside this
    # one) leave it loadable: only its own files and bm25/'s must be named.
    visited = tmp_path / "visited"
    shutil.copytree(trained["index"], visited)
    (visited / ".DS_Store").write_bytes(b"x")
    (visited / "bm25" / ".nfs000123").write_bytes(b"x")
    shutil.copytree(trained["index"], visited / "nested")
    assert [[h.id for h in q] for q in Searcher.load(visited).search(queries, 5)] == [[h.id for h in q] for q in Searcher.load(trained["index"]).search(queries, 5)]
    for bad, message in (("hybrid.bm25.method=foo", "hybrid.bm25: Invalid"), ("+hybrid.bm25.foo=1", "hybrid.bm25.foo: unknown"), ("hybrid.enabled=maybe", "hybrid.enabled='maybe'")):
        with pytest.raises(ConfigError, match=message):
            build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'bad'}", bad]))
    with pytest.raises(ConfigError, match="hybrid='false'"):
        Searcher.load(trained["index"], hybrid="false")


@pytest.mark.parametrize("columns, message", [
    ((None, "text"), r"corpus_columns.id=null: must be a column's name"),
    (("id", 5), r"corpus_columns.text=5: must be a column's name"),
    ((True, "text"), r"corpus_columns.id=true: must be a column's name"),
    (("text", "text"), r"corpus_columns.id and corpus_columns.text are both 'text'"),
])
def test_corpus_columns_that_are_not_two_names_are_one_line(tmp_path, columns, message):
    """corpus_columns.id/.text null, a number, a boolean or one name for both is one line, in index.py before the
    checkpoint loads: each was an AttributeError traceback (or a DataFrame's) reading a tsv."""
    corpus = tmp_path / "c.tsv"
    corpus.write_text("a\tone\nb\ttwo\n")
    with pytest.raises(ConfigError, match=message):
        read_corpus_file(corpus, *columns)
    overrides = [f"ckpt={tmp_path / 'none.ckpt'}", f"corpus={corpus}", f"out={tmp_path / 'out'}"]
    cfg = compose_retrieval("index", overrides)
    with open_dict(cfg):
        cfg.corpus_columns.id, cfg.corpus_columns.text = columns
    with pytest.raises(ConfigError, match=message):
        build_index(cfg)


def test_a_manifest_naming_files_outside_its_folder_is_refused(trained, tmp_path):
    """A manifest naming a file by an absolute path or through '..', with its hash, made the load read and hash that file
    (any file the user can read, however large) and load; refused before anything is hashed."""
    from two_tower.retrieval.index import file_hash

    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not the folder's")
    for name in (str(outside), "../elsewhere.txt"):
        folder = tmp_path / "index"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(trained["index"], folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"][name] = file_hash(outside)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(IndexFolderError, match=f"names files outside the folder \\(\\[{re.escape(repr(name))}\\]\\)"):
            Searcher.load(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(faiss=None), r"faiss=null must be a JSON object"),
    (lambda m: m.update(config=[1]), r"config=\[1\] must be a JSON object"),
    (lambda m: m["config"].update(index="Flat"), r'config.index="Flat" must be a JSON object'),
])
def test_a_manifest_part_that_is_not_an_object_is_one_line(trained, tmp_path, edit, message):
    """A manifest edited by hand whose faiss, config or config.index is not a JSON object is refused naming it (they were
    AttributeErrors, a traceback, in the load); without its faiss entry a search_params override is a ConfigError line
    (a KeyError)."""
    folder = tmp_path / "edited"
    shutil.copytree(trained["index"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFolderError, match=message):
        Searcher.load(folder)
    manifest = json.loads((trained["index"] / "manifest.json").read_text())
    del manifest["faiss"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="search_params='efSearch=8' does not apply to this FAISS index"):
        Searcher.load(folder, search_params="efSearch=8")


def test_searcher_hybrid_weights_given_at_load_replace_the_folders(trained, tmp_path):
    """hybrid=(dense, bm25) fuses with those weights instead of the folder's, exactly as evaluate.py's
    hybrid_weighted with the same weights (so a collection's own judgements can choose them, no re-indexing);
    (1, 0) ranks as dense alone; bad weights, or weights for a folder without BM25, are one clear refusal."""
    split = validation_split(trained["data"])
    from two_tower.retrieval.evaluate import build_retrievers

    cfg = compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'eval'}", "retriever=[hybrid]", "retriever.hybrid_weighted.weights=[0.3,0.9]"])
    _, rankings = evaluate_split(split, {"w": build_retrievers(cfg)["hybrid_weighted"]})
    rows = split.evaluated_queries()[:30]
    position = {r: i for i, r in enumerate(split.evaluated_queries().tolist())}
    texts = [split.query_texts[r] for r in rows]
    searcher = Searcher.load(trained["index"], hybrid=[0.3, 0.9])
    assert searcher.weights == (0.3, 0.9) and Searcher.load(trained["index"]).weights == (0.7, 0.3)
    for row, hits in zip(rows.tolist(), searcher.search(texts, k=10)):
        assert [h.id for h in hits] == [str(p) for p in rankings["w"].ranked[position[row], :10].tolist()]
        assert [h.score for h in hits] == pytest.approx(rankings["w"].scores[position[row], :10].tolist(), abs=1e-5)
    # the candidate path (HNSW, IVF, compressed folders) uses the given weights too
    from two_tower.retrieval.index import normalised

    vectors = normalised(searcher.encoder.encode(texts))
    whole, candidates = searcher.hybrid_search(texts, vectors, 10, exhaustive=True), searcher.hybrid_search(texts, vectors, 10, exhaustive=False)
    assert whole.rows.tolist() == candidates.rows.tolist() and whole.scores == pytest.approx(candidates.scores, abs=1e-5)
    dense_only = [[h.id for h in q] for q in Searcher.load(trained["index"], hybrid=False).search(texts, 10)]
    assert [[h.id for h in q] for q in Searcher.load(trained["index"], hybrid=(1, 0)).search(texts, 10)] == dense_only
    assert Searcher.load(trained["index"], hybrid=np.array([0.3, 0.9])).weights == (0.3, 0.9)  # numpy values too
    assert Searcher.load(trained["index"], hybrid=[np.float32(0.5), np.int64(1)]).weights == (0.5, 1.0)
    for bad in ([0, 0], [1, -1], [1], [1, 2, 3], [float("nan"), 1], ["a", 1], [True, 1], 1, b"ab", np.array([0, 0])):
        with pytest.raises(ConfigError, match=r"\[dense weight, bm25 weight\]"):
            Searcher.load(trained["index"], hybrid=bad)
    folder = tmp_path / "dense_only"
    build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={folder}", "hybrid.enabled=false"]))
    with pytest.raises(IndexFolderError, match="without a BM25 index"):
        Searcher.load(folder, hybrid=[0.5, 0.5])
    # search.py takes them as a Hydra list
    assert search_main([f"index={trained['index']}", "hybrid=[0.3,0.9]", "k=3", texts[0]]) == 0

def weighted_top_k(k, weights, lexical, dense_range, dense_top, dense_scores):
    """One query through ``proven_top_k`` as ``Searcher.hybrid_search`` takes it: candidates of n per part
    (here from 100, or k), four times as many until proven."""
    from two_tower.retrieval.hybrid import proven_top_k

    n = min(max(k, 100), len(lexical))
    while (found := proven_top_k(k, weights, lexical, dense_range, *dense_top(n), dense_scores)) is None:
        n = min(4 * n, len(lexical))
    return found


def test_weighted_top_k_is_the_brute_force_fusion_even_past_the_first_candidates():
    """proven_top_k, grown until proven, against the fusion of every passage's scores, where the top k lies beyond both parts'
    first candidates (so the candidate lists must grow), with ties, and for k above the corpus."""
    from two_tower.retrieval.hybrid import min_max

    rng = np.random.default_rng(5)
    for trial in range(20):
        passages = int(rng.integers(50, 900))
        dense = rng.normal(size=passages).astype(np.float32)
        lexical = np.where(rng.random(passages) < 0.7, 0.0, rng.gamma(2.0, 2.0, size=passages)).astype(np.float32)
        if trial % 2:  # passages good on both parts but first in neither: the top k comes from far down both lists
            middle = rng.choice(passages, size=min(40, passages // 3), replace=False)
            dense[middle], lexical[middle] = np.quantile(dense, 0.85), np.quantile(lexical, 0.95) + 1
            dense[:5] = dense[5:10] = dense.max()  # ties
        weights = (float(rng.uniform(0.1, 1)), float(rng.uniform(0.1, 1)))
        fused = weights[0] * min_max(dense, dense.min(), dense.max()) + weights[1] * min_max(lexical, lexical.min(), lexical.max())
        order = np.lexsort((np.arange(passages), -dense))
        for k in (1, 10, 150, passages + 5):
            rows, scores = weighted_top_k(k, weights, lexical, (dense.min(), dense.max()), lambda n: (order[:n], dense[order[:n]]), lambda r: dense[r])
            want = np.lexsort((np.arange(passages), -fused))[:k]
            assert rows.tolist() == want.tolist()
            assert scores == pytest.approx(fused[want], abs=1e-6)
    # Built so: 200 passages best on dense only, 200 best on BM25 only, and the 10 best fused rank 201-210 on both.
    dense, lexical = np.full(1000, -1.0, dtype=np.float32), np.zeros(1000, dtype=np.float32)
    dense[:200], lexical[200:400] = 1.0, 10.0
    dense[400:410], lexical[400:410] = 0.8, 8.0
    asked = []
    order = np.lexsort((np.arange(1000), -dense))
    rows, scores = weighted_top_k(10, (0.5, 0.5), lexical, (-1.0, 1.0), lambda n: (asked.append(n), (order[:n], dense[order[:n]]))[1], lambda r: dense[r])
    assert rows.tolist() == list(range(400, 410)) and scores == pytest.approx([0.85] * 10)
    assert asked == [100, 400]  # the first 100 candidates of each part could not prove the top 10


def test_searcher_hybrid_searches_deeper_for_the_queries_that_need_it():
    """Searcher.hybrid_search over a Flat index where the first candidates (both parts' top 200) cannot
    prove one query's top 10: that query is searched again deeper, the other is not; both equal the
    brute-force fusion of every passage's scores."""
    from types import SimpleNamespace

    from two_tower.retrieval.hybrid import min_max

    e = np.eye(8, dtype=np.float32)
    vectors = np.empty((1000, 8), dtype=np.float32)
    vectors[:200], vectors[200:400], vectors[400:410] = e[0], -e[0], 0.8 * e[0] + 0.6 * e[1]
    vectors[410:] = -0.5 * e[0] + np.sqrt(0.75) * e[2]
    lexical = np.zeros((2, 1000), dtype=np.float32)
    lexical[0, 200:400], lexical[0, 400:410] = 10.0, 8.0  # query 0: the best fused rank 201-210 on both parts
    lexical[1, 410:420] = 3.0
    index = PassageIndex(Path("."), build_faiss(vectors, "Flat"), None, {"hybrid": {"weights": [0.5, 0.5]}})
    searcher = Searcher(index, encoder=None, hybrid=False)
    scored = []  # the queries BM25 scored, in order
    searcher.lexical = SimpleNamespace(query_tokens=lambda queries: list(range(len(queries))), scores=lambda token_lists: (scored.extend(token_lists), lexical[token_lists])[1])
    searcher.weights = (0.5, 0.5)
    calls = []
    search = index.search
    index.search = lambda v, n: (calls.append((len(v), n)), search(v, n))[1]
    queries = np.stack([e[0], e[2]])
    hits = searcher.hybrid_search(["q0", "q1"], queries, k=10, exhaustive=False)
    assert calls == [(2, 1), (2, 200), (1, 800)]  # the lowest scores, both queries at 200, then query 0 alone
    assert scored == [0, 1]  # BM25 once a query, however many rounds it needs
    for q in range(2):
        dense = vectors @ queries[q]
        fused = 0.5 * min_max(dense, dense.min(), dense.max()) + 0.5 * min_max(lexical[q], lexical[q].min(), lexical[q].max())
        want = np.lexsort((np.arange(1000), -fused))[:10]
        assert hits.rows[q].tolist() == want.tolist() and hits.scores[q] == pytest.approx(fused[want], abs=1e-6)
    assert hits.rows[0].tolist() == list(range(400, 410))


def test_duplicate_passages_score_alike_in_hybrid_search():
    """Two copies of a passage at the dense candidates' cut (one inside, one found by BM25 only) get the
    same fused score and come lower row first: every candidate's dense score is computed the same way,
    not FAISS's batched (BLAS) score for some and a dot product for others."""
    from types import SimpleNamespace

    rng = np.random.default_rng(11)
    failures = 0
    for trial in range(10):
        vectors = rng.normal(size=(1000, 128)).astype(np.float32)
        query = rng.normal(size=128).astype(np.float32)
        vectors, query = vectors / np.linalg.norm(vectors, axis=1, keepdims=True), query / np.linalg.norm(query)
        cut = vectors[np.argsort(-(vectors @ query))[198]]  # with its copies: dense ranks 199-201 of 200 candidates
        vectors = np.concatenate([vectors, cut[None], cut[None]])
        lexical = np.zeros(1002, dtype=np.float32)
        lexical[[1000, 1001]] = 5.0
        index = PassageIndex(Path("."), build_faiss(vectors, "Flat"), None, {"hybrid": {"weights": [0.5, 0.5]}})
        searcher = Searcher(index, encoder=None, hybrid=False)
        searcher.lexical = SimpleNamespace(query_tokens=lambda texts: [0] * len(texts), scores=lambda token_lists: lexical[None].repeat(len(token_lists), 0))
        searcher.weights = tuple(index.hybrid_weights)
        hits = searcher.hybrid_search(["q"] * 24, np.repeat(query[None], 24, 0), k=10, exhaustive=False)  # 24 queries: FAISS uses BLAS
        for q in range(24):
            at = hits.rows[q].tolist()
            first, second = at.index(1000), at.index(1001)
            failures += not (second == first + 1 and hits.scores[q, first] == hits.scores[q, second])
    assert failures == 0


def test_hybrid_scores_stay_in_range_on_approximate_indexes():
    """HNSW and IVF find the dense extremes approximately: a probe saw fused scores of 2,002,716 on a
    one-passage HNSW folder (a rounding difference divided by the range's 1e-12 floor) and up to 1.71 on
    IVF with nprobe 1. The range now takes in the candidates' own scores: every score in [0, sum of the
    weights]; and copies of a passage score alike, lower row first, as on Flat."""
    from types import SimpleNamespace

    def searcher_over(vectors, factory, params, lexical):
        index = PassageIndex(Path("."), build_faiss(vectors, factory, train_size=len(vectors), search_params=params), None, {"hybrid": {"weights": [0.7, 0.3]}})
        searcher = Searcher(index, encoder=None, hybrid=False)
        searcher.lexical = SimpleNamespace(query_tokens=lambda texts: list(range(len(texts))), scores=lambda token_lists: lexical[token_lists])
        searcher.weights = (0.7, 0.3)
        return searcher

    one = clustered(1, 16, 1, seed=3)
    hits = searcher_over(one, "HNSW32", None, np.zeros((1, 1), dtype=np.float32)).hybrid_search(["q"], one, k=1, exhaustive=False)
    assert hits.scores.tolist() == [[0.0]]  # as the Flat path: a part that scores every passage alike gives 0

    vectors = clustered(2000, 16, 40, seed=4)
    queries = clustered(60, 16, 40, seed=5)
    lexical = np.where(np.random.default_rng(6).random((60, 2000)) < 0.9, 0, 3).astype(np.float32)
    for factory, params in (("IVF40,Flat", "nprobe=1"), ("HNSW8", "efSearch=16")):
        hits = searcher_over(vectors, factory, params, lexical).hybrid_search(["q"] * 60, queries, k=50, exhaustive=False)
        found = hits.scores[hits.rows >= 0]
        assert found.min() >= 0 and found.max() <= 1 + 1e-6, (factory, found.min(), found.max())

    copies = np.concatenate([vectors[:300], vectors[:300], vectors[:300]])  # passage i at rows i, i+300, i+600
    hits = searcher_over(copies, "HNSW32", "efSearch=256", np.zeros((60, 900), dtype=np.float32)).hybrid_search(["q"] * 60, queries, k=9, exhaustive=False)
    for rows, scores in zip(hits.rows.tolist(), hits.scores.tolist()):
        for i in range(0, 9, 3):
            assert rows[i + 1] == rows[i] + 300 and rows[i + 2] == rows[i] + 600 and scores[i] == scores[i + 1] == scores[i + 2]


# ----------------------------------------------------------------------------------------- MaxSim rerank in index folders


def test_searcher_maxsim_rerank_ranks_as_evaluate(trained, tmp_path, monkeypatch, capsys):
    """Searcher.load(..., rerank=MaxSimRerank()) ranks and scores each query's top passages as evaluate.py's
    dense_maxsim / hybrid_maxsim (same first stage, same idf over the same corpus); search.py takes rerank=maxsim."""
    from tests.test_maxsim import static_model_over
    from two_tower.retrieval.maxsim import MaxSimRerank, MaxSimRetriever, static_tokens

    monkeypatch.setenv("TWO_TOWER_CACHE", str(tmp_path))
    split = validation_split(trained["data"])
    static_model_over(sorted({w for t in split.passage_texts + split.query_texts for w in t.lower().split()}))
    try:
        settings = MaxSimRerank(depth=8, weight=0.5, teacher="tiny", dim=8)
        rows = split.evaluated_queries()[:25]
        queries = [split.query_texts[r] for r in rows]
        cfg = compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'eval'}", "retriever=[hybrid]"])
        from two_tower.retrieval.evaluate import build_retrievers

        built = build_retrievers(cfg)

        def searched_as_evaluated(first: str, hybrid, rerank: MaxSimRerank) -> list:
            """Searcher's top 8 with ``rerank``, checked (ids and scores) against evaluate's MaxSimRetriever."""
            retriever = MaxSimRetriever([built[first]], depth=rerank.depth, weight=rerank.weight, teacher="tiny", dim=8)
            retriever.prepare(split)
            want = retriever.rankings(rows, 8)
            results = Searcher.load(trained["index"], hybrid=hybrid, rerank=rerank).search(queries, k=8)
            assert [[h.id for h in hits] for hits in results] == [[str(i) for i in ids] for ids in want.ranked.tolist()], first
            assert [[h.score for h in hits] for hits in results] == [pytest.approx(s, abs=1e-5) for s in want.scores.tolist()]
            return results

        for first, hybrid in (("dense", False), ("hybrid_weighted", None)):
            results = searched_as_evaluated(first, hybrid, settings)
            plain = Searcher.load(trained["index"], hybrid=hybrid).search(queries, k=8)
            assert [[h.id for h in hits] for hits in plain] != [[h.id for h in hits] for hits in results]  # it reranks
            # k below the depth: the top k of the same reranking
            assert [[h.id for h in hits] for hits in Searcher.load(trained["index"], hybrid=hybrid, rerank=settings).search(queries, k=3)] == [
                [h.id for h in hits[:3]] for hits in results
            ]
        # k above the depth: the top depth reranked, the rest below in the first stage's order (scores too);
        # weight 1 and a query no static token reads: every fused score ties, and ties go to the lower row
        shallow = MaxSimRerank(depth=3, weight=1.0, teacher="tiny", dim=8)
        for first, hybrid in (("dense", False), ("hybrid_weighted", None)):
            results = searched_as_evaluated(first, hybrid, shallow)
            first_stage = Searcher.load(trained["index"], hybrid=hybrid).search(queries, k=8)
            assert [[h.id for h in hits[3:]] for hits in results] == [[h.id for h in hits[3:]] for hits in first_stage]
            unread = Searcher.load(trained["index"], hybrid=hybrid, rerank=shallow).search(["qqqq"], k=8)[0]
            plain_unread = [h.id for h in Searcher.load(trained["index"], hybrid=hybrid).search(["qqqq"], k=8)[0]]
            assert [h.score for h in unread[:3]] == [0.0, 0.0, 0.0]
            assert [h.id for h in unread[:3]] == sorted(plain_unread[:3], key=int) and [h.id for h in unread[3:]] == plain_unread[3:]
        # the folder's idf is cached by its passages file: a second load reads it, with no pass over the texts
        first_idf = Searcher.load(trained["index"], rerank=settings).maxsim.idf.numpy()
        with monkeypatch.context() as patched:
            patched.setattr("two_tower.retrieval.maxsim.corpus_idf", lambda *a, **k: pytest.fail("the idf was computed again"))
            again = Searcher.load(trained["index"], rerank=settings)
        np.testing.assert_array_equal(again.maxsim.idf.numpy(), first_idf)
        with pytest.raises(ConfigError, match="k="):
            Searcher.load(trained["index"], rerank=settings).search(queries, k=0)
        with pytest.raises(ConfigError, match=r"rerank.teacher=/no/such/model \(rerank.dim=8\): no static model"):
            Searcher.load(trained["index"], rerank=MaxSimRerank(teacher="/no/such/model", dim=8))
        assert search_main([f"index={trained['index']}", "apple", "river", "k=2", "rerank=maxsim", "rerank.teacher=tiny", "rerank.dim=8"]) == 0
        assert capsys.readouterr().out.splitlines()[0] == "query: apple river"
        assert search_main([f"index={trained['index']}", "apple", "rerank=maxsim", "rerank.weight=2"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "rerank.weight=2" in err
    finally:
        static_tokens.cache_clear()


def test_validation_under_mixed_precision_is_what_evaluate_prints(tmp_path):
    """trainer.precision=bf16-mixed trains under autocast; validation still encodes in float32, as evaluate.py
    does, so the logged figure (and the checkpoint it chooses) is evaluate's (it was not: 0.2278 against 0.2296)."""
    from tests.conftest import TINY_RUN, compose_train, write_validation_shard
    from two_tower.training.train import train

    cfg = compose_train(tmp_path, [*TINY_RUN, "trainer.precision=bf16-mixed"])
    metrics = train(cfg)
    data = write_validation_shard(cfg, tmp_path / "data")
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    printed = evaluate(compose_retrieval("evaluate", [f"ckpt={ckpt}", f"data.path={data}", f"out={tmp_path / 'eval'}", "retriever=[dense]"]))
    assert printed["dense"]["mrr@10"] == pytest.approx(metrics["val/mrr@10"], abs=1e-6)
    assert printed["dense"]["recall@100"] == pytest.approx(metrics["val/recall@100"], abs=1e-6)


def test_python_api_refuses_odd_arguments_in_one_clear_exception(trained):
    """A probe of the Python API: one bytes query was iterated into its byte values ("query 1 of 5 is not text (int:
    97)"), None was "'NoneType' object is not iterable", and prf="rocchio" / rerank="maxsim" (the command line's words)
    an AttributeError deep inside, the rerank's after the whole folder had loaded."""
    searcher = Searcher.load(trained["index"])
    with pytest.raises(TypeError, match="a list of queries, not one bytes; wrap a single query in a list"):
        searcher.search(b"apple", k=3)
    with pytest.raises(TypeError, match="a list of queries, not NoneType"):
        searcher.search(None, k=3)
    from two_tower.retrieval.prf import RocchioPRF

    for kwargs, name in ((dict(prf="rocchio"), "prf='rocchio'"), (dict(rerank="maxsim"), "rerank='maxsim'")):
        with pytest.raises(ConfigError, match=re.escape(name) + ": must be None or a two_tower.retrieval"):
            Searcher.load(trained["index"], **kwargs)
        with pytest.raises(ConfigError, match=re.escape(name)):
            Searcher(searcher.index, searcher.encoder, **kwargs)
    assert Searcher.load(trained["index"], prf=RocchioPRF(depth=2)).search(["apple"], k=2)  # the objects themselves pass
    import copy
    import pickle

    for copying in (pickle.dumps, copy.deepcopy):  # "cannot pickle '_thread.lock'" (multiprocessing's spawn)
        with pytest.raises(TypeError, match="a Searcher does not pickle .*load one in each worker process"):
            copying(searcher)


def test_a_mapping_or_table_of_texts_is_refused_not_read_as_its_keys(trained):
    """A probe of the Python API: search({"q1": text, ...}) searched the ids "q1", "q2" (a dict iterates its keys) and
    search(DataFrame) its column name (2 queries gave 1 hit list), silently; Encoder.fit_corpus({id: text}) counted
    the ids as the corpus. A Series, an array and a generator of texts are read as before."""
    import pandas as pd
    from two_tower.retrieval.encoder import Encoder

    searcher = Searcher.load(trained["index"], hybrid=False)
    queries = ["apple", "river castle"]
    with pytest.raises(TypeError, match=re.escape("not a dict: iterating one gives its keys, which would be read as the texts; give the texts themselves, e.g. list(queries.values())")):
        searcher.search({"q1": queries[0], "q2": queries[1]}, k=3)
    with pytest.raises(TypeError, match=re.escape("not a 2-dimensional DataFrame: iterating one gives its column names or rows")):
        searcher.search(pd.DataFrame({"query": queries}), k=3)
    listed = [[hit.id for hit in hits] for hits in searcher.search(queries, k=3)]
    for given in (pd.Series(queries, index=[7, 3]), np.array(queries), (q for q in queries)):
        assert [[hit.id for hit in hits] for hits in searcher.search(given, k=3)] == listed
    encoder = Encoder.load(trained["ckpt"])
    texts = validation_split(trained["data"]).passage_texts
    with pytest.raises(ConfigError, match=re.escape("give a list of passage texts, not a dict: iterating one gives its keys")):
        encoder.fit_corpus({str(i): text for i, text in enumerate(texts)})
    encoder.fit_corpus(texts)
    with pytest.raises(ConfigError, match=re.escape("give a list of query texts, not a 2-dimensional DataFrame")):
        encoder.encode_queries(pd.DataFrame({"query": queries}))


def test_search_params_that_are_not_text_are_refused(trained, tmp_path, monkeypatch):
    """search_params=256 (a Python int, or Hydra's for an unquoted value) went to FAISS as a combination number of
    an empty ParameterSpace, which set nothing: an HNSW folder was searched at its old efSearch, silently, and
    index.py saved the 256 in a folder it then could not load ("could not interpret parameters 256")."""
    from two_tower.retrieval import indexer
    from two_tower.retrieval.index import set_search_params

    hnsw = faiss.index_factory(8, "HNSW8", faiss.METRIC_INNER_PRODUCT)
    for params in (256, {"efSearch": 256}):
        with pytest.raises(ConfigError, match=re.escape(f"search_params={params!r}: must be text naming each parameter, e.g. 'efSearch=256'")):
            set_search_params(hnsw, params, f"search_params={params!r}", "HNSW8")
    with pytest.raises(ConfigError, match=re.escape("search_params=256: must be text")):
        Searcher.load(trained["index"], search_params=256)
    monkeypatch.setattr(indexer, "encode_passages", lambda *a, **k: pytest.fail("encoded before checking search_params"))
    monkeypatch.setattr(indexer, "encoded_chunks", lambda *a, **k: pytest.fail("encoded before checking search_params"))
    cfg = compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'index'}", "index.factory=HNSW32", "index.search_params=256"])
    with pytest.raises(ConfigError, match=re.escape("index.search_params=256: must be text")):
        build_index(cfg)
    assert not (tmp_path / "index").exists()


def test_encoder_batch_size_and_load_paths_of_another_type_are_one_error_naming_them(trained):
    """A probe of the Python API: Encoder(batch_size=0 or -1) encoded one text a batch, silently; 2.5, None or "8"
    failed deep in the batching ("'<' not supported between instances of 'int' and 'NoneType'"); Searcher.load(None)
    and Encoder.load(None) said "expected str, bytes or os.PathLike object, not NoneType", naming no argument."""
    from two_tower.retrieval.encoder import Encoder

    for size in (0, -1, 2.5, None, True, "8"):
        with pytest.raises(ConfigError, match=re.escape(f"batch_size={size!r}: must be a whole number >= 1")):
            Encoder.load(trained["ckpt"], batch_size=size)
    encoder = Encoder.load(trained["ckpt"], batch_size=np.int64(3))
    assert encoder.batch_size == 3 and type(encoder.batch_size) is int
    with pytest.raises(ConfigError, match=re.escape("batch_size=0: must be a whole number >= 1")):
        Encoder(encoder.module, batch_size=0)
    for path in (None, b"/tmp", 5):
        with pytest.raises(IndexFolderError, match=re.escape(f"index={path!r}: give the index folder's path (a str or pathlib.Path), not {type(path).__name__}")):
            Searcher.load(path)
        with pytest.raises(CheckpointError, match=re.escape(f"ckpt={path!r}: give the checkpoint file's path (a str or pathlib.Path), not {type(path).__name__}")):
            Encoder.load(path)
    with pytest.raises(CheckpointError, match=re.escape("ckpt=7: give the checkpoint file's path")):
        Searcher.load(trained["index"], checkpoint=7)
    assert Searcher.load(str(trained["index"])).search(["apple"], k=1)  # a str and a Path (the fixture's) both load


def test_fusion_weights_whose_sum_float32_cannot_hold_are_refused(trained):
    """hybrid=(1e-50, 1e-50) fused every passage's float32 score to 0 and (7e38, 3e38) to inf: passed as finite, >= 0
    and not both 0, they ranked the corpus by row ('1', '2', '3', ... for every query), silently (a probe)."""
    from two_tower.retrieval.hybrid import check_weights
    from two_tower.retrieval.search import check_hybrid

    rule = "their sum from 1.2e-38 to 3.4e+38, as float32 scores hold"
    for weights in ((1e-50, 1e-50), (7e38, 3e38)):
        with pytest.raises(ConfigError, match=re.escape(rule)):
            Searcher.load(trained["index"], hybrid=weights)
        with pytest.raises(ConfigError, match=re.escape(f"retriever.hybrid_weighted.weights={list(weights)}: {rule}")):
            check_weights(list(weights), "retriever.hybrid_weighted.weights")
    assert check_hybrid((1e-300, 1.0)) == (1e-300, 1.0)  # a negligible dense weight: BM25's ranking, as before
    searcher = Searcher.load(trained["index"], hybrid=(7e29, 3e29))  # scaled weights rank as the folder's own
    assert [h.id for h in searcher.search(["apple"], k=5)[0]] == [h.id for h in Searcher.load(trained["index"]).search(["apple"], k=5)[0]]


def test_threads_setting_applies_to_the_call_only(trained, tmp_path):
    """build_index() and evaluate() with threads=1 left torch at 1 thread in the calling process (a notebook's
    next encoding ran on one core)."""
    import faiss

    before, omp_before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(2 if before != 2 else 3)
    faiss.omp_set_num_threads(2)
    wanted = torch.get_num_threads()
    try:
        build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'index'}", "threads=1"]))
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (wanted, 2)
        evaluate(compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={trained['data']}", f"out={tmp_path / 'eval'}", "retriever=[bm25]", "threads=1"]))
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (wanted, 2)
    finally:
        torch.set_num_threads(before)
        faiss.omp_set_num_threads(omp_before)


def test_threads_setting_sets_faiss_threads_too():
    """threads=1 set torch's threads only: index.py, search.py and evaluate.py searched (and k-means trained IVF
    indexes) with FAISS's OpenMP default, one thread per core."""
    import faiss

    from two_tower.core.threads import kept, set_threads

    omp_before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        with kept():
            set_threads(1)
            assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1)
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(omp_before)


def test_searcher_ndcg_scores_the_searchers_order_and_a_query_it_refuses_as_0(trained, tmp_path, monkeypatch, capsys):
    """experiments/zero_shot/searcher_ndcg.py gave ranx the hits' scores, and ranx orders tied scores its own way: with
    passages of one text it scored another ranking than the Searcher returned (and evaluate.py ranks: lower row first).
    A query without a searchable word (the Searcher refuses it) ended the script in a traceback (a probe)."""
    import runpy

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{i:02d}", "text": "wing lift at high speed"} for i in range(30)] + [{"_id": "e1", "text": "engine drag"}]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "wing lift"}) + "\n" + json.dumps({"_id": "q2", "text": "?!"}) + "\n")
    (beir / "qrels" / "ties.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td25\t1\n")  # the 26th of 30 tied passages
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td25\t1\nq2\te1\t1\n")
    index = tmp_path / "index"
    build_index(compose_retrieval("index", [f"ckpt={trained['ckpt']}", f"data.path={beir}", f"out={index}", "hybrid.enabled=false"]))
    hits = Searcher.load(index).search(["wing lift"], k=100)[0]
    assert [h.id for h in hits[:30]] == [f"d{i:02d}" for i in range(30)] and len({h.score for h in hits[:30]}) == 1  # tied, in row order

    def script(split):
        monkeypatch.setattr("sys.argv", ["searcher_ndcg.py", str(index), str(beir), "--split", split])
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "experiments" / "zero_shot" / "searcher_ndcg.py"), run_name="__main__")
        return capsys.readouterr().out.strip().splitlines()[-1]

    expected = evaluate(compose_retrieval("evaluate", [f"ckpt={trained['ckpt']}", f"data.path={beir}", "split=ties", f"out={tmp_path / 'out'}"]))["dense"]
    assert (expected["mrr@10"], expected["recall@100"]) == (0.0, 1.0)  # rank 26
    assert script("ties") == "1 queries, dense: ndcg@10 0.0000, mrr@10 0.0000, recall@100 1.0000"
    assert script("test") == "2 queries (1 without a searchable word score 0), dense: ndcg@10 0.0000, mrr@10 0.0000, recall@100 0.5000"


def test_evaluated_queries_without_a_searchable_word_are_named(trained, caplog):
    """The Searcher, search.py and serve.py refuse a query with no searchable word; evaluate.py ranked it by an empty
    query's vector, silently (a probe: a query of '?? !!' scored recall@100 1 on a 200-passage corpus). It is ranked
    as validation ranks it, and a warning counts such queries and names the first."""
    import dataclasses
    import logging

    split = validation_split(trained["data"])
    rows = split.evaluated_queries()
    texts = list(split.query_texts)
    texts[rows[1]] = texts[rows[3]] = "?? !!"
    dense = DenseRetriever(str(trained["ckpt"]))
    with caplog.at_level(logging.WARNING, logger="two_tower.retrieval.dense"):
        dense.prepare(dataclasses.replace(split, query_texts=texts))
    warned = [r.getMessage() for r in caplog.records if "searchable word" in r.getMessage()]
    assert warned == [f"2 of {len(rows)} evaluated queries have no searchable word (first: row {rows[1]}, '?? !!'): the model ranks "
                      "them by the vector of an empty query, as validation does (the Searcher and search.py refuse them)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="two_tower.retrieval.dense"):
        DenseRetriever(str(trained["ckpt"])).prepare(split)
    assert not [r for r in caplog.records if "searchable word" in r.getMessage()]


def test_a_tsv_corpus_line_with_a_nul_byte_is_skipped_and_a_utf16_file_refused(tmp_path, caplog):
    """A UTF-16 tsv (Windows tools write them) was read as UTF-8 lines whose ids and texts held a NUL between every
    character: 19 of 20 passages indexed under ids such as '\\x00p\\x001\\x00', one warning (a probe). A NUL is never
    text: its line is skipped and counted, so such a file is refused in one line."""
    lines = [f"p{i}\tpassage number {i}" for i in range(20)]
    (tmp_path / "utf16.tsv").write_bytes("\n".join(lines).encode("utf-16"))
    with pytest.raises(CorpusError, match=r"utf16.tsv: no line read: every line was skipped \{'not_utf8': 1, 'nul_byte': 19\}"):
        read_corpus_file(tmp_path / "utf16.tsv")
    (tmp_path / "nul.tsv").write_bytes(b"p1\tone\np2\tt\x00wo\np3\tthree\n")
    with caplog.at_level("WARNING"):
        assert read_corpus_file(tmp_path / "nul.tsv").ids == ["p1", "p3"]
    assert "skipped {'nul_byte': 1} (first at line 2 (nul_byte))" in caplog.text


def test_a_jsonl_corpus_id_is_a_string_or_an_integer(tmp_path):
    """JSON gives an id any value: {"a": 1}, ["a"], true and 1.0 were indexed as the ids "{'a': 1}", "['a']", "True" and
    "1.0" (1.0 beside 1: two passages) without a word (a probe). Such a row is refused as a missing id is, its line named."""
    for value, shown in (('{"a": 1}', '{"a": 1}'), ('["a"]', '["a"]'), ("true", "true"), ("1.0", "1.0")):
        (tmp_path / "c.jsonl").write_text(f'{{"id": "p1", "text": "one"}}\n\n{{"id": {value}, "text": "two"}}\n')
        with pytest.raises(CorpusError, match=re.escape(f"c.jsonl: 1 row(s) have an 'id' that is not a string or an integer (the first: line 3, {shown})")):
            read_corpus_file(tmp_path / "c.jsonl")
    (tmp_path / "c.jsonl").write_text('{"id": "p1", "text": "one"}\n{"id": 2, "text": "two"}\n')
    assert read_corpus_file(tmp_path / "c.jsonl").ids == ["p1", "2"]
    # parquet: a column of float ids (pandas writes an integer column with a missing value so) gave the ids "0.0", "1.0"
    import pandas as pd

    pd.DataFrame({"id": [0.0, 1.0], "text": ["one", "two"]}).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(CorpusError, match=re.escape("c.parquet: 2 row(s) have an 'id' that is not a string or an integer (the first: row 1, 0.0)")):
        read_corpus_file(tmp_path / "c.parquet")
    pd.DataFrame({"id": [[1], [2]], "text": ["one", "two"]}).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(CorpusError, match=re.escape("(the first: row 1, [1])")):
        read_corpus_file(tmp_path / "c.parquet")
    pd.DataFrame({"id": [7, 8], "text": ["one", "two"]}).to_parquet(tmp_path / "c.parquet")
    assert read_corpus_file(tmp_path / "c.parquet").ids == ["7", "8"]


def test_a_parquet_integer_id_column_with_a_missing_id_is_said_to_miss_it(tmp_path):
    """pandas reads a parquet integer column holding a null as floats: a file of integer ids [1, null, 3] (as pyarrow,
    Spark or DuckDB write it) was said to have "2 row(s) ... an 'id' that is not a string or an integer (the first: row
    1, 1.0)", where row 2 has no id (a probe). Its ids stay integers, the missing one named; none rounds through a float."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": pa.array([1, None, 3], pa.int64()), "text": ["a", "b", "c"]}), tmp_path / "c.parquet")
    with pytest.raises(CorpusError, match=re.escape("c.parquet: 1 row(s) have no 'id' (the first: row 2); every passage needs an id")):
        read_corpus_file(tmp_path / "c.parquet")
    big = 2**53 + 1  # not a float64
    pq.write_table(pa.table({"id": pa.array([big, 7], pa.uint64()), "text": ["a", "b"]}), tmp_path / "c.parquet")
    assert read_corpus_file(tmp_path / "c.parquet").ids == [str(big), "7"]


def test_a_corpus_file_that_is_a_folder_or_a_dead_link_is_named_as_such(tmp_path):
    """corpus=DIR said "no such file" of a folder that is there, and of a link to a file that is not (a probe)."""
    import os

    (tmp_path / "c.tsv").mkdir()
    with pytest.raises(CorpusError, match=r"c.tsv: a folder, not a file; corpus= takes a .tsv, .jsonl or .parquet file"):
        read_corpus_file(tmp_path / "c.tsv")
    os.symlink(tmp_path / "gone.tsv", tmp_path / "d.tsv")
    with pytest.raises(CorpusError, match=r"d.tsv: a link to nothing \(.*gone.tsv\)$"):
        read_corpus_file(tmp_path / "d.tsv")


def test_an_empty_corpus_file_is_said_to_be_empty(tmp_path):
    """An empty jsonl said "missing column(s) ['id', 'text']; found []" (and one holding a byte-order mark alone
    "every line was skipped {'not_json': 1}"); an empty tsv, or one of its header line alone, "no passage with a
    non-empty text" (a probe)."""
    for name, data in (("empty.jsonl", b""), ("blank.jsonl", b"\n \n"), ("bom.jsonl", b"\xef\xbb\xbf\n")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CorpusError, match=rf"{name}: the file holds no line; a line is one JSON object$"):
            read_corpus_file(tmp_path / name)
    (tmp_path / "empty.tsv").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"empty.tsv: the file holds no line; a line is id<TAB>text$"):
        read_corpus_file(tmp_path / "empty.tsv")
    (tmp_path / "header.tsv").write_bytes(b"\xef\xbb\xbfid\ttext\r\n")
    with pytest.raises(CorpusError, match=r"header.tsv: the file holds its header line alone; a line is id<TAB>text$"):
        read_corpus_file(tmp_path / "header.tsv")
    import pandas as pd

    pd.DataFrame({"id": pd.Series([], dtype=str), "text": pd.Series([], dtype=str)}).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(CorpusError, match=r"empty.parquet: the file holds no row$"):
        read_corpus_file(tmp_path / "empty.parquet")


def test_a_load_discarded_for_a_replaced_folder_is_let_go_before_the_next(tmp_path, monkeypatch):
    """Searcher.load loads a folder replaced meanwhile again: the discarded load (its index, passages and towers: a
    folder's whole memory) was still held while the next one loaded, twice the load's peak."""
    import weakref

    from two_tower.retrieval import search as search_module

    class Loaded:
        pass

    identities = iter([(1, 1), (1, 2), (1, 2), (1, 2)])  # before and after each attempt: replaced during the first
    monkeypatch.setattr(search_module, "folder_identity", lambda path: next(identities))
    first = []

    def load(*args):
        if first:
            assert first[0]() is None, "the discarded load is still held while the folder loads again"
        loaded = Loaded()
        first.append(weakref.ref(loaded))
        return loaded

    monkeypatch.setattr(Searcher, "_load", classmethod(lambda cls, *args: load(*args)))
    searcher = Searcher.load(tmp_path)
    assert len(first) == 2 and first[1]() is searcher
