"""MaxSim rerank (two_tower/retrieval/maxsim.py): the score against a brute-force loop, the idf, the fusion,
evaluate's retriever and its settings. The Searcher side is in test_retrieval.py (same ranking as evaluate)."""

import math

import numpy as np
import pytest
import torch

from two_tower.core.errors import ConfigError
from two_tower.data.embeddings import DistilledEmbeddings
from two_tower.retrieval import maxsim as ms
from two_tower.retrieval.retriever import SplitRetriever


def static_model_over(words: list[str], teacher: str = "tiny", dim: int = 8, seed: int = 0, vectors: dict | None = None) -> dict:
    """A word-level model2vec StaticModel over ``words`` in the default cache (TWO_TOWER_CACHE), where
    ``MaxSimRerank(teacher=teacher, dim=dim)`` finds it; random vectors unless given. Returns word -> vector."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.normalizers import Lowercase
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(words))}}
    tok = HFTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = Lowercase(), Whitespace()
    table = np.random.default_rng(seed).normal(size=(len(vocab), dim)).astype(np.float32)
    for w, v in (vectors or {}).items():
        table[vocab[w]] = v
    StaticModel(table, tok, normalize=False).save_pretrained(str(DistilledEmbeddings(teacher=teacher, dim=dim)._folder()))
    ms.static_tokens.cache_clear()
    return {w: table[i] for w, i in vocab.items()}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TWO_TOWER_CACHE", str(tmp_path))
    ms.static_tokens.cache_clear()
    yield tmp_path
    ms.static_tokens.cache_clear()


def brute_maxsim(table: dict, passages: list[str], query: str, passage: str) -> float:
    """The definition, one token at a time: sum_t |v_t| idf(t) max_s cos(v_t, v_s) / sum_t |v_t| idf(t)."""
    docs = [p.lower().split() for p in passages]
    n = len(docs)

    def idf(w):
        df = sum(w in d for d in docs)
        return math.log((n - df + 0.5) / (df + 0.5) + 1)

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    q = [w for w in query.lower().split() if w in table]
    p = [w for w in passage.lower().split() if w in table]
    weights = [float(np.linalg.norm(table[w])) * idf(w) for w in q]
    best = [max((cos(table[w], table[s]) for s in p), default=-1.0) for w in q]
    return sum(w * b for w, b in zip(weights, best)) / sum(weights)


def test_maxsim_is_the_idf_weighted_best_match_of_every_query_token(cache):
    passages = ["the jet wing", "a cat sat on the mat", "wing of a jet jet", "", "the the the"]
    table = static_model_over("the jet wing a cat sat on mat of".split())
    def texts_of(rows):
        return [passages[r] for r in rows.tolist()]

    corpus = ms.CorpusMaxSim(ms.MaxSimRerank(teacher="tiny", dim=8), texts_of, len(passages))
    assert corpus.idf[corpus.tokens.model.tokenize(["jet"])[0][0]].item() == pytest.approx(math.log((5 - 2 + 0.5) / 2.5 + 1), rel=1e-6)
    # read in chunks, the same idf
    np.testing.assert_array_equal(ms.corpus_idf(corpus.tokens, texts_of, len(passages), 256, chunk=2).numpy(), corpus.idf.numpy())
    ids = corpus.tokens.ids(passages, 256)
    for query in ("jet wing", "the cat", "mat on a wing", "cat cat"):
        got = ms.maxsim(corpus.tokens, corpus.idf, corpus.tokens.ids([query], 256)[0], ids)
        want = [brute_maxsim(table, passages, query, p) for p in passages]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # rerank: the same scores, fused with the first stage's, best first
        rows, fused = corpus.rerank(query, np.arange(5), np.linspace(1, 0, 5))
        want_fused = ms.fuse(np.linspace(1, 0, 5), np.array(want), 0.5)
        assert rows.tolist() == np.argsort(-want_fused, kind="stable").tolist()
        np.testing.assert_allclose(fused, np.sort(want_fused)[::-1], rtol=1e-5, atol=1e-6)
    # A query with no token the model knows scores every passage 0 (the first stage then ranks alone).
    assert ms.maxsim(corpus.tokens, corpus.idf, corpus.tokens.ids(["zebra"], 256)[0], ids).tolist() == [0.0] * 5
    assert corpus.rerank("zebra", np.arange(5), np.linspace(1, 0, 5))[0].tolist() == [0, 1, 2, 3, 4]
    # max_tokens reads a passage's first tokens only.
    assert [len(p) for p in corpus.tokens.ids(passages, 2)] == [2, 2, 2, 0, 2]


def test_a_passage_that_says_it_in_other_words_is_lifted(cache):
    """Near vectors for car / automobile: the passage with the synonym outranks one that shares no meaning."""
    rng = np.random.default_rng(1)
    car = rng.normal(size=8).astype(np.float32)
    static_model_over(["car", "automobile", "price", "cost", "banana", "tree"], vectors={"car": car, "automobile": car + 0.05 * rng.normal(size=8)})
    texts = ["banana tree", "automobile cost"]
    corpus = ms.CorpusMaxSim(ms.MaxSimRerank(teacher="tiny", dim=8, weight=1.0), lambda rows: [texts[r] for r in rows], 2)
    rows, _ = corpus.rerank("car", np.array([0, 1]), np.array([1.0, 0.0]))
    assert rows.tolist() == [1, 0]
    # weight 0: the first stage's order; weight 1: MaxSim's
    first = ms.CorpusMaxSim(ms.MaxSimRerank(teacher="tiny", dim=8, weight=0.0), lambda rows: [texts[r] for r in rows], 2)
    assert first.rerank("car", np.array([0, 1]), np.array([1.0, 0.0]))[0].tolist() == [0, 1]


def test_passages_with_the_same_tokens_score_the_same_wherever_they_stand(cache):
    """Two copies of a passage get bit-identical MaxSim scores at any two positions of the candidate list, so
    their tie goes to the lower row (a reduction vectorised across passages scored the last columns 1 ulp apart)."""
    import random

    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa city river bread cheese guitar".split()
    static_model_over(words, dim=8, seed=3)
    unequal = 0
    for seed in range(60):
        random.seed(seed)
        texts = [" ".join(random.choices(words, k=random.randint(3, 12))) for _ in range(100)]
        texts[97] = texts[3]
        corpus = ms.CorpusMaxSim(ms.MaxSimRerank(teacher="tiny", dim=8), lambda rows, t=texts: [t[r] for r in rows.tolist()], len(texts))
        query = " ".join(random.sample(words, 12))  # a reduction over 8 or more query tokens showed it
        scores = ms.maxsim(corpus.tokens, corpus.idf, corpus.tokens.ids([query], 256)[0], corpus.passage_ids(np.arange(100)))
        unequal += scores[3] != scores[97]
        ranked = corpus.rerank(query, np.arange(100), np.full(100, 0.5, np.float32))[0].tolist()
        assert ranked.index(3) < ranked.index(97)
    assert unequal == 0


def test_fuse_is_the_weighted_sum_of_min_max_normalised_scores():
    first, second = np.array([3.0, 1.0, 2.0]), np.array([0.1, 0.5, 0.3])
    np.testing.assert_allclose(ms.fuse(first, second, 0.25), 0.75 * np.array([1, 0, 0.5]) + 0.25 * np.array([0, 1, 0.5]), rtol=1e-6)
    np.testing.assert_allclose(ms.fuse(first, np.ones(3), 0.5), 0.5 * np.array([1, 0, 0.5]), rtol=1e-6)  # a flat part adds nothing


class FixedScores(SplitRetriever):
    def __init__(self, scores):
        super().__init__()
        self.table = torch.tensor(scores, dtype=torch.float32)

    def scores(self, query_rows):
        return self.table[torch.as_tensor(query_rows)]


class TinySplit:
    passage_texts = ["the jet wing", "a cat sat", "wing of a jet", "cat on the mat", "mat"]
    query_texts = ["jet wing", "cat mat"]


def test_evaluate_retriever_reranks_the_top_depth_and_keeps_the_rest_below_in_order(cache):
    static_model_over("the jet wing a cat sat of on mat".split())
    first = [[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.5, 0.2, 0.4, 0.3]]
    retriever = ms.MaxSimRetriever([FixedScores(first)], depth=3, weight=0.5, teacher="tiny", dim=8)
    retriever.prepare(TinySplit())
    scores = retriever.scores(np.array([0, 1]))
    for q, row in enumerate(first):
        top = np.argsort(-np.array(row), kind="stable")[:3]
        want_rows, want_scores = retriever.corpus.rerank(TinySplit.query_texts[q], top, np.array(row)[top])
        order = torch.argsort(scores[q], descending=True, stable=True).tolist()
        assert order[:3] == want_rows.tolist()
        np.testing.assert_allclose(scores[q, want_rows].numpy(), want_scores, rtol=1e-6)
        rest = [p for p in np.argsort(-np.array(row), kind="stable").tolist() if p not in top]
        assert order[3:] == rest and scores[q, rest].max() < scores[q, want_rows].min()
    with pytest.raises(ConfigError, match="one retriever"):
        ms.MaxSimRetriever([FixedScores(first), FixedScores(first)], teacher="tiny", dim=8)


def test_settings_are_checked_in_one_line():
    assert ms.MaxSimRerank.from_config(None) is None
    assert ms.MaxSimRerank.from_config({"depth": 50, "weight": 0.3}) == ms.MaxSimRerank(depth=50, weight=0.3)
    with pytest.raises(ConfigError, match="rerank.foo: unknown setting"):
        ms.MaxSimRerank.from_config({"foo": 1})
    for bad, name in (({"depth": 0}, "depth"), ({"depth": 1001}, "depth"), ({"depth": 2.5}, "depth"), ({"weight": 1.5}, "weight"), ({"weight": True}, "weight"), ({"max_tokens": -1}, "max_tokens")):
        with pytest.raises(ConfigError, match=f"rerank.{name}="):
            ms.MaxSimRerank(**bad)


def test_evaluate_config_selects_dense_and_hybrid_reranks():
    from hydra import compose, initialize_config_dir

    from two_tower.cli.common import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("evaluate", ["retriever=[maxsim]"])
        search = compose("search", ["rerank=maxsim"])
    retriever = cfg.retriever
    assert list(retriever) == ["dense", "bm25_stemmed", "hybrid_rrf", "hybrid_weighted", "dense_maxsim", "hybrid_maxsim"]
    assert list(retriever.dense_maxsim.parts) == ["dense"] and list(retriever.hybrid_maxsim.parts) == ["hybrid_weighted"]
    settings = {k: v for k, v in retriever.dense_maxsim.items() if k not in ("_target_", "parts")}
    # one setting, two configs: evaluate's rerank is search's (and serve's)
    assert ms.MaxSimRerank(**settings) == ms.MaxSimRerank.from_config(search.rerank) == ms.MaxSimRerank()


def test_evaluate_reranks_share_one_idf_pass_over_the_split(cache, monkeypatch):
    static_model_over("the jet wing a cat sat of on mat".split())
    passes = []
    real = ms.corpus_idf
    monkeypatch.setattr(ms, "corpus_idf", lambda *a, **k: passes.append(1) or real(*a, **k))
    first = [[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.5, 0.2, 0.4, 0.3]]
    dense, hybrid = (ms.MaxSimRetriever([FixedScores(first)], depth=3, teacher="tiny", dim=8) for _ in range(2))
    dense.prepare(TinySplit())
    hybrid.prepare(TinySplit())
    assert len(passes) == 1
    torch.testing.assert_close(dense.corpus.idf, hybrid.corpus.idf)
    fresh = ms.CorpusMaxSim(dense.settings, lambda rows: [TinySplit.passage_texts[r] for r in rows.tolist()], len(TinySplit.passage_texts))
    torch.testing.assert_close(hybrid.corpus.idf, fresh.idf)
    assert ms.texts_key(["ab", "c"]) != ms.texts_key(["a", "bc"]) and ms.texts_key(["x"]) == ms.texts_key(["x"])


def test_candidates_token_ids_are_read_from_the_cache_not_tokenized_at_every_query(cache, monkeypatch):
    """The idf pass keeps every passage's token ids (memory-mapped from the cache entry); a rerank reads its
    candidates' ids there, the same ids tokenizing their texts gives, and never asks for the texts again."""
    static_model_over("the jet wing a cat sat on mat of".split())
    passages = ["the jet wing", "a cat sat on the mat", "", "wing of a jet jet " * 40, "the the the"]
    asked = []

    def texts_of(rows):
        asked.append(rows.tolist())
        return [passages[r] for r in rows.tolist()]

    settings = ms.MaxSimRerank(teacher="tiny", dim=8, max_tokens=50)
    corpus = ms.CorpusMaxSim(settings, texts_of, len(passages), corpus_key="k1")
    assert isinstance(corpus.passage_ids.ids, np.memmap) and corpus.passage_ids.ids.dtype == np.uint16
    want = corpus.tokens.ids(passages, 50)
    for rows in ([0, 1, 2, 3, 4], [3, 0], [2]):
        got = corpus.passage_ids(np.array(rows))
        assert [g.tolist() for g in got] == [want[r].tolist() for r in rows] and all(g.dtype == np.int64 for g in got)
    asked.clear()
    rows, fused = corpus.rerank("jet wing", np.arange(5), np.linspace(1, 0, 5))
    assert asked == []  # no text read at query time
    no_entry = ms.CorpusMaxSim(settings, texts_of, len(passages))  # no corpus key: the idf alone, texts tokenized per query
    assert [p.tolist() for p in no_entry.passage_ids(np.arange(5))] == [w.tolist() for w in want]
    np.testing.assert_array_equal(no_entry.rerank("jet wing", np.arange(5), np.linspace(1, 0, 5))[1], fused)
    # a second start reads the entry: no pass over the texts
    asked.clear()
    again = ms.CorpusMaxSim(settings, texts_of, len(passages), corpus_key="k1")
    assert asked == [] and [p.tolist() for p in again.passage_ids(np.arange(5))] == [w.tolist() for w in want]
    # ids of a vocabulary over 65,536 tokens take 4 bytes
    assert ms.ids_dtype(1 << 16) == np.uint16 and ms.ids_dtype((1 << 16) + 1) == np.uint32


def test_stored_ids_that_disagree_with_their_offsets_are_one_error(tmp_path):
    np.save(tmp_path / ms.PassageIds.OFFSETS, np.array([0, 2, 5]))
    np.array([1, 2, 3], dtype=np.uint16).tofile(tmp_path / ms.PassageIds.IDS)
    with pytest.raises(ms.TwoTowerError, match="3 token ids where its offsets say 5"):
        ms.PassageIds(tmp_path, 100)


def test_a_cache_that_cannot_take_the_entry_costs_the_stored_ids_only(cache, monkeypatch, caplog):
    """A full (or read-only) cache: the idf alone is computed and held, candidates are tokenized at every query
    (no corpus-sized copy of the ids in memory or in /tmp), with a warning; the rankings are the same."""
    import errno

    static_model_over("the jet wing a cat sat on mat of".split())
    passages = ["the jet wing", "a cat sat on the mat", "wing of a jet jet"]
    texts_of = lambda rows: [passages[r] for r in np.asarray(rows).tolist()]
    settings = ms.MaxSimRerank(teacher="tiny", dim=8)
    want = ms.CorpusMaxSim(settings, texts_of, 3, corpus_key="stored").rerank("jet", np.arange(3), np.zeros(3))
    real = ms.corpus_idf

    def disk_full(*args, ids_to=None, **kwargs):
        if ids_to is not None:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(ms, "corpus_idf", disk_full)
    full = ms.CorpusMaxSim(settings, texts_of, 3, corpus_key="full")
    assert "not cached" in caplog.text and not isinstance(full.passage_ids, ms.PassageIds)
    got = full.rerank("jet", np.arange(3), np.zeros(3))
    assert got[0].tolist() == want[0].tolist() and np.allclose(got[1], want[1])
