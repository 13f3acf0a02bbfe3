"""Open vocabulary: no word is unknown (extension rows, hashed ids), stable hashes, corpus IDF, BEIR data."""

import json
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from two_tower.data import beir
from two_tower.data.tokenizer import PAD, UNK, UNK_ID, Tokenizer, stable_hash
from two_tower.data.embeddings import EmbeddingsError, FileEmbeddings, extension_rows, restore_tokenizer
from two_tower.model.bag import BagOfWords, vocabulary_keys
from two_tower.model.embedding import CRC_ROWS, OpenEmbedding
from two_tower.model.encoders import RNNEncoder, TwoTower
from two_tower.model.vocabulary import attach_vocabulary
from two_tower.core.metrics import ranking_metrics


@pytest.fixture
def vectors_file(tmp_path):
    """A small word2vec text file standing in for GloVe: the words the training text never has extend it."""
    words = ["cat", "dog", "fish", "bird", "zebra", "aircraft", "wing"]
    rng = np.random.default_rng(0)
    path = tmp_path / "vectors.txt"
    path.write_text(f"{len(words)} 4\n" + "".join(f"{w} " + " ".join(f"{v:.4f}" for v in rng.normal(size=4)) + "\n" for w in words))
    return path


def open_tokenizer(vectors_file, train=("cat cat dog", "cat fish")):
    source = FileEmbeddings(str(vectors_file))
    vectors = source.load([])
    tok = Tokenizer.build(list(train), min_freq=2, pretrained_words=set(vectors.words), extension_words=vectors.words, extension_source=source.extension_config())
    return tok, vectors


def test_words_with_a_vector_are_never_unknown_and_others_hash(vectors_file):
    tok, vectors = open_tokenizer(vectors_file)
    assert tok.words == [PAD, UNK, "cat", "dog", "fish"]  # training words only: nothing from other text
    assert tok.extension_words == ["bird", "zebra", "aircraft", "wing"]  # the vectors' other words, in their order
    ids = tok.encode("zebra xj-17b cat xj-17b", 10)
    assert ids[0] == tok.index["zebra"] == 6 and tok.word_of(ids[0]) == "zebra"
    assert ids[1] == ids[3] == tok.hashed_id("xj-17b") >= tok.vocab_size  # identical strings meet
    assert tok.word_of(ids[1]) is None and UNK_ID not in ids
    assert tok.id_ranges(np.array([0, 1, *ids])) == {"training vocabulary": 0.25, "extension": 0.25, "hashed": 0.5}
    assert tok.hashed_id("xj-17c") != tok.hashed_id("xj-17b")

    # Saved without the extension's words; restored from the vectors source, checked by its CRC.
    state = json.loads(json.dumps(tok.state_dict()))
    assert "bird" not in json.dumps(state)
    again = restore_tokenizer(state)
    assert again.encode("zebra xj-17b cat", 10) == ids[:3] and again.fingerprint() == tok.fingerprint()
    table, rows = extension_rows(again)
    np.testing.assert_array_equal(table[rows][1], vectors.vectors[vectors.index["zebra"]])

    # The source changed since training: refused in one line.
    vectors_file.write_text(vectors_file.read_text().replace("wing ", "tail "))
    from two_tower.data.embeddings import _load_extension_source

    _load_extension_source.cache_clear()
    with pytest.raises(EmbeddingsError, match="the vectors source changed"):
        restore_tokenizer(state)
    # A closed-vocabulary tokenizer from before this change: refused in one line.
    with pytest.raises(EmbeddingsError, match="closed-vocabulary"):
        restore_tokenizer({"words": [PAD, UNK, "cat"], "max_query_len": 4, "max_passage_len": 8, "keep_punctuation": False})


def test_hash_is_stable_across_processes_and_hash_seeds():
    words = ["xj-17b", "naïve", "東京", "a"]
    script = f"from two_tower.data.tokenizer import stable_hash; print([stable_hash(w) for w in {words!r}])"
    runs = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
        for seed in ("1", "2")
    }
    assert runs == {f"{[stable_hash(w) for w in words]}\n"}
    # A fixed value, so another Python or machine gives the same ids (BLAKE2b of the UTF-8 bytes).
    assert stable_hash("xj-17b") == int.from_bytes(__import__("hashlib").blake2b(b"xj-17b", digest_size=8).digest(), "little") >> 1


def test_open_embedding_rows_and_what_is_saved():
    emb = OpenEmbedding(num_words=5, dim=3, extension_size=2, buckets=4)
    emb.load_words(torch.arange(15, dtype=torch.float32).view(5, 3))
    extension = np.array([[100, 101, 102], [200, 201, 202]], dtype=np.float32)
    emb.load_extension(extension)
    ids = torch.tensor([[2, 5, 6, 7 + 9]])
    out = emb(ids)[0]
    torch.testing.assert_close(out[0], torch.tensor([6.0, 7.0, 8.0]))
    torch.testing.assert_close(out[1], torch.from_numpy(extension[0]))
    torch.testing.assert_close(out[2], torch.from_numpy(extension[1]))
    torch.testing.assert_close(out[3], emb.buckets.weight[9 % 4])
    state = emb.state_dict()
    assert "extension" not in state and "extension_crc" in state  # 80 MB of GloVe rows stay out of checkpoints
    fresh = OpenEmbedding(num_words=5, dim=3, extension_size=2, buckets=4)
    fresh.load_state_dict(state)
    with pytest.raises(RuntimeError, match="not loaded"):
        fresh(ids)
    with pytest.raises(ValueError, match="not the ones the model was trained with"):
        fresh.load_extension(extension + 1)
    fresh.load_extension(extension)
    torch.testing.assert_close(fresh(ids), emb(ids))


def test_open_embedding_holds_the_sources_table_not_a_copy_and_float16_rows_as_they_are():
    """The extension's rows: the vectors source's whole table, shared (not gathered into a copy), a row map for the
    extension's ids, float16 tables kept float16 (the distilled vectors' 400k x 256 rows: a 0.36 GB float32 gather
    and a 0.36 GB zero placeholder were in every model load). Lookups and the CRC are those of the float32 rows."""
    table = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float16)
    rows = np.array([4, 1, 5])  # the extension's words are a subset of the source's, in its order or not
    gathered = table[rows].astype(np.float32)  # what the extension rows were before: a float32 copy
    emb = OpenEmbedding(num_words=5, dim=3, extension_size=3)
    assert emb.extension.numel() == 0  # no full-size placeholder before the rows are given
    emb.load_extension(table, rows)
    assert emb.extension.dtype == torch.float16 and np.shares_memory(emb.extension.numpy(), table)
    out = emb(torch.tensor([[5, 6, 7]]))[0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.from_numpy(gathered), rtol=0, atol=0)
    # the CRC checkpoints saved (of the float32 gather) is the one the shared float16 table gives, block by block too
    assert OpenEmbedding.crc(table, rows) == OpenEmbedding.crc(gathered) == zlib.crc32(gathered.tobytes())
    big = np.random.default_rng(1).normal(size=(CRC_ROWS * 2 + 5, 2)).astype(np.float16)
    assert OpenEmbedding.crc(big) == zlib.crc32(big.astype(np.float32).tobytes())
    # a model saved with the float32 rows loads against the float16 table; another table is refused
    saved = OpenEmbedding(num_words=5, dim=3, extension_size=3)
    saved.load_extension(gathered)
    fresh = OpenEmbedding(num_words=5, dim=3, extension_size=3)
    fresh.load_state_dict(saved.state_dict())
    with pytest.raises(ValueError, match="not the ones the model was trained with"):
        fresh.load_extension(table, rows[::-1].copy())
    with pytest.raises(ValueError, match="outside the source's 6 rows"):
        fresh.load_extension(table, np.array([0, 1, 6]))
    fresh.load_extension(table, rows)
    torch.testing.assert_close(fresh(torch.tensor([[5, 6, 7]])), emb(torch.tensor([[5, 6, 7]])), rtol=0, atol=0)


def brute_force_bag(texts, keys_of, idf_of, signature_of):
    """sum over distinct keys of (1 + log count) * idf * signature, normalised."""
    out = []
    for text in texts:
        keys = [keys_of(t) for t in text if t > 1]
        want = sum((1 + math.log(keys.count(k))) * idf_of(k) * signature_of(k) for k in set(keys))
        out.append(want / want.norm())
    return torch.stack(out)


def test_bag_weighs_words_by_corpus_idf_and_matches_unseen_words():
    words = [PAD, UNK, "run", "runs", "cat", "dog"]
    bag = BagOfWords(num_words=len(words), dim=64, stemmer="english")
    bag.set_vocabulary(words)
    keys = vocabulary_keys(words, "english")
    assert keys[2] == keys[3] != keys[4]  # "run" and "runs" share a stem, so a key
    hashed = 1000  # a hashed id: a word outside the vocabulary
    corpus = [[2, 4, 4], [3, hashed], [5], [5, 4]]
    values = np.array([t for p in corpus for t in p])
    offsets = np.cumsum([0] + [len(p) for p in corpus])
    stats = bag.corpus_statistics(values, offsets)
    key_of = lambda t: int(bag.token_keys(torch.tensor([t]))[0])  # noqa: E731
    df = {}
    for passage in corpus:
        for k in {key_of(t) for t in passage}:
            df[k] = df.get(k, 0) + 1
    assert dict(zip(stats.keys.tolist(), stats.df.tolist())) == df and stats.num_passages == 4
    bag.set_statistics(stats)
    idf_of = lambda k: math.log(5 / (df[k] + 0.5)) if k in df else math.log(5 / 0.5)  # noqa: E731
    sig_cache = {}

    def signature_of(k):
        if k not in sig_cache:
            sig_cache[k] = bag.signatures(torch.tensor([k]))[0]
        return sig_cache[k]

    texts = [[2, 3, 4, 0], [hashed, 5, 1, 0], [2000, 2000, 4, 4]]  # 1 = UNK and 0 = PAD are left out
    ids = torch.tensor(texts)
    lengths = torch.tensor([3, 3, 4])
    with torch.no_grad():
        got = bag(ids, lengths)
    want = brute_force_bag([t[:n] for t, n in zip(texts, lengths.tolist())], key_of, idf_of, signature_of)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Passages may weigh words by IDF ** p (encoder.bag_passage_idf_power); queries keep IDF.
    bag.passage_idf_power = 0.25
    with torch.no_grad():
        as_passages, as_queries = bag(ids, lengths, passages=True), bag(ids, lengths)
    texts_cut = [t[:n] for t, n in zip(texts, lengths.tolist())]
    torch.testing.assert_close(as_passages, brute_force_bag(texts_cut, key_of, lambda k: idf_of(k) ** 0.25, signature_of), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(as_queries, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(as_passages, want, atol=1e-3)
    bag.passage_idf_power = 1.0
    # The unseen word (hashed id) in a query meets itself in a passage: their bags agree on it.
    with torch.no_grad():
        query, passage = bag(torch.tensor([[hashed]]), torch.tensor([1])), bag(torch.tensor([[hashed, 5]]), torch.tensor([2]))
    assert (query * passage).sum().item() > 0.5
    signs = signature_of(key_of(4)) * 64**0.5
    assert set(signs.round().tolist()) == {-1.0, 1.0}


def test_bag_keys_are_checked_when_a_model_loads(vectors_file):
    tok, _ = open_tokenizer(vectors_file)

    def towers():
        return TwoTower(len(tok.words), 4, lambda **kw: RNNEncoder(cell="gru", hidden_size=4, dim=4, bag_dim=16, bag_stemmer="english", **kw), extension_size=len(tok.extension_words), hash_buckets=8)

    model = towers()
    attach_vocabulary([model.query_encoder], tok)
    state = model.state_dict()
    assert not any("signatures" in k for k in state)
    fresh = towers()
    attach_vocabulary([fresh.query_encoder], tok)
    fresh.load_state_dict(state)
    state["query_encoder.bag.keys_crc"] = state["query_encoder.bag.keys_crc"] + 1  # as if the stemmer had changed
    with pytest.raises(RuntimeError, match="keys"):
        fresh.load_state_dict(state)
    assert fresh.to(torch.bfloat16).query_encoder.bag.keys_crc.dtype == torch.int64  # casting the model leaves it exact


def write_beir(root, corpus_lines, queries_lines, qrels_lines, split="test"):
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(b"\n".join(corpus_lines) + b"\n")
    (root / "queries.jsonl").write_bytes(b"\n".join(queries_lines) + b"\n")
    (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{line}\n" for line in qrels_lines))


def test_a_beir_corpus_of_no_usable_line_says_why(tmp_path):
    """Every line skipped (ids written as 1.0): the error said "no usable document" alone, and the counts that say why
    were logged after it, so never shown (a probe)."""
    write_beir(tmp_path, [b'{"_id": 1.0, "text": "lift"}', b'{"_id": 2.0, "text": "drag"}'], [b'{"_id": "q1", "text": "lift"}'], ["q1\t1\t1"])
    with pytest.raises(beir.BeirError, match=r"corpus.jsonl: no usable document; skipped \{'no_id': 2\} \(first at line 1 \(no_id\)\)"):
        beir.load_beir(tmp_path, "test")


def test_beir_reader_skips_and_counts_bad_lines(tmp_path, caplog):
    write_beir(
        tmp_path,
        [b'{"_id": "d1", "title": "Wing", "text": "lift of a wing"}', b'{"_id": "d2", "text": "drag"}', b"not json", b'{"title": "no id"}',
         b'{"_id": "d3", "text": "caf\xe9"}', b'{"_id": "d4", "title": "", "text": ""}', b'{"_id": "d5", "text": 5}', b'{"_id": "d6", "text": ["a"]}'],
        [b'{"_id": "q1", "text": "wing lift"}', b'{"_id": "q2", "text": "drag"}', b'{"_id": "q3", "text": "no judgement"}', b'{"_id": "q4", "text": 7}',
         b'{"_id": "q5", "text": "judged not relevant only"}'],
        ["q1\td1\t2", "q1\td2\t0", "q2\td2\t1", "q2\td9\t1", "q9\td1\t1", "q2\td1\tx", "bad line", "q5\td1\t0"],
    )
    with caplog.at_level("WARNING"):
        collection = beir.load_beir(tmp_path, "test")
    # q5 is judged, on non-relevant documents only: left out, and said so (BEIR's evaluation counts it 0)
    assert [r.getMessage() for r in caplog.records if "judged only not relevant" in r.getMessage()] == [
        f"{tmp_path / 'qrels' / 'test.tsv'}: 1 queries judged only not relevant (score <= 0) are left out of the averages; "
        "BEIR's own evaluation counts each as 0, so its figures on this split are lower by that share"
    ]
    assert collection.corpus_ids == ["d1", "d2"] and collection.corpus_texts[0] == "Wing lift of a wing"  # title + " " + text
    assert collection.query_ids == ["q1", "q2"]  # q3 has no relevant document: not evaluated
    assert collection.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}  # score 0: judged, not relevant
    assert collection.unlisted == {"q2": {"d9": 1}}  # relevant but not in the corpus: counted, never retrieved (BEIR's rule)
    # what scripts give ranx: the relevant documents, those outside the corpus too (searcher_ndcg.py left them out: a probe)
    assert collection.relevant() == {"q1": {"d1": 2}, "q2": {"d2": 1, "d9": 1}}
    assert dict(collection.skipped["corpus.jsonl"]) == {"not_json": 1, "not_utf8": 1, "no_id": 1, "empty_text": 1, "text_not_a_string": 2}
    assert dict(collection.skipped["queries.jsonl"]) == {"text_not_a_string": 1}
    assert dict(collection.skipped["qrels/test.tsv"]) == {"unknown_query": 1, "score_not_integer": 1, "not_3_columns": 1}
    # each warning names the first line of each reason (docs/retrieval.md; it gave counts only)
    assert collection.skipped["corpus.jsonl"].first == {"not_json": 3, "no_id": 4, "not_utf8": 5, "empty_text": 6, "text_not_a_string": 7}
    assert (f"{tmp_path / 'qrels' / 'test.tsv'}: skipped {{'unknown_query': 1, 'score_not_integer': 1, 'not_3_columns': 1}} "
            "(first at line 6 (unknown_query), 7 (score_not_integer), 8 (not_3_columns))") in caplog.text  # line 1: the header
    split = beir.prepared_split(collection)
    assert split.relevance([0, 1]) == [{0: 2.0}, {1: 1.0, 2: 1.0}]  # d9: a row past the corpus's end
    assert split.num_passages == 2 and split.passage_ids[2] == "d9"
    with pytest.raises(beir.BeirError, match=r"qrels/dev.tsv: no such qrels file .*\['test'\]"):
        beir.load_beir(tmp_path, "dev")


def test_indexing_a_beir_folder_reads_its_corpus_alone(tmp_path, caplog):
    """index.py data.path=<BEIR folder> with the default split=validation failed on a missing
    qrels/validation.tsv, though indexing needs no queries or judgements; the corpus's bad lines are still
    skipped and counted."""
    from two_tower.retrieval.corpus import split_passages

    root = tmp_path / "beir"
    root.mkdir()
    (root / "corpus.jsonl").write_bytes(b'{"_id": "d1", "title": "Wing", "text": "lift"}\n{"_id": "d2", "text": ""}\nnot json\n{"_id": "d3", "text": "drag"}\n')
    with caplog.at_level("WARNING"):
        passages = split_passages("validation", str(root), "unused", "unused")
    assert (passages.ids, passages.texts) == (["d1", "d3"], ["Wing lift", "drag"])
    assert passages.source == {"kind": "beir", "path": str(root.resolve())}
    assert any("corpus.jsonl: skipped" in r.getMessage() and "empty_text" in r.getMessage() for r in caplog.records)


def test_evaluate_names_a_missing_split_file_before_loading_the_checkpoint(tmp_path, monkeypatch):
    from tests.test_retrieval import compose_retrieval
    from two_tower.core.errors import DataSourceError
    from two_tower.retrieval import evaluate

    write_beir(tmp_path / "beir", [b'{"_id": "d1", "text": "lift"}'], [b'{"_id": "q1", "text": "lift"}'], ["q1\td1\t1"])
    (tmp_path / "marco").mkdir()
    (tmp_path / "marco" / "train-00000-of-00001.parquet").write_bytes(b"")

    def load_checkpoint(cfg):
        raise AssertionError("the checkpoint was loaded first")

    monkeypatch.setattr(evaluate, "build_retrievers", load_checkpoint)
    common = [f"ckpt={tmp_path / 'model.ckpt'}", f"out={tmp_path / 'out'}"]
    with pytest.raises(beir.BeirError, match=r"qrels/dev.tsv: no such qrels file"):
        evaluate.evaluate(compose_retrieval("evaluate", [*common, f"data.path={tmp_path / 'beir'}", "split=dev"]))
    with pytest.raises(DataSourceError, match=r"No 'validation-\*.parquet' \(or .jsonl\) shards in"):
        evaluate.evaluate(compose_retrieval("evaluate", [*common, f"data.path={tmp_path / 'marco'}", "split=validation"]))
    assert not (tmp_path / "out").exists()  # a failed evaluation leaves no empty out= folder (it did)


def test_a_byte_order_mark_opening_each_beir_file_costs_nothing(tmp_path):
    bom = b"\xef\xbb\xbf"
    plain, marked = tmp_path / "plain", tmp_path / "bom"
    for root in (plain, marked):
        write_beir(root, [b'{"_id": "d1", "text": "lift of a wing"}', b'{"_id": "d2", "text": "drag"}'], [b'{"_id": "q1", "text": "wing lift"}'], ["q1\td1\t1"])
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (marked / name).write_bytes(bom + (marked / name).read_bytes())
    a, b = beir.load_beir(plain, "test"), beir.load_beir(marked, "test")
    assert (b.corpus_ids, b.query_ids, b.qrels) == (a.corpus_ids, a.query_ids, a.qrels) == (["d1", "d2"], ["q1"], {"q1": {"d1": 1}})
    assert not any(b.skipped.values())


def test_graded_ndcg_matches_a_hand_computation():
    ranked = np.array([[5, 3, 9, 1]])
    got = ranking_metrics(ranked, [{3: 2.0, 1: 1.0, 7: 3.0}], ks=(1, 10))
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@10"] == pytest.approx(dcg / ideal)
    assert got["mrr@10"] == pytest.approx(1 / 2) and got["recall@10"] == pytest.approx(2 / 3)
    # All gains 1 is the binary case.
    assert ranking_metrics(ranked, [{3: 1.0, 1: 1.0}])["ndcg@10"] == pytest.approx(ranking_metrics(ranked, [[3, 1]])["ndcg@10"])


def test_index_folder_query_encoder_keeps_split_hyphens_and_the_bag_settings(tmp_path):
    """What an index folder saves for its query tower (QueryEncoder.save / load) keeps the tokenizer's
    split_hyphens and the bag's passage IDF power, so search splits "x-ray" as training did."""
    from two_tower.model.bag import TermStatistics
    from two_tower.retrieval.query_encoder import QueryEncoder

    tokenizer = Tokenizer.build(["x-ray scan of the chest", "x-ray"], min_freq=1, split_hyphens=True)
    settings = {"cell": "gru", "hidden_size": 4, "dim": 4, "bag_dim": 16, "bag_passage_idf_power": 0.25}
    config = {
        "encoder": {"_target_": "two_tower.model.encoders.RNNEncoder", **settings},
        "vocab_size": len(tokenizer),
        "embedding_dim": 6,
        "extension_size": 0,
        "hash_buckets": 0,
    }
    torch.manual_seed(0)
    encoder = RNNEncoder(OpenEmbedding(len(tokenizer), 6), **settings)
    attach_vocabulary([encoder], tokenizer)
    QueryEncoder(encoder, tokenizer, config).save(tmp_path / "query_encoder.pt")
    loaded = QueryEncoder.load(tmp_path / "query_encoder.pt")
    loaded.set_statistics(TermStatistics(np.zeros(0, np.int64), np.zeros(0, np.int64), 10))
    assert loaded.tokenizer.split_hyphens and loaded.encoder.bag.passage_idf_power == 0.25
    assert loaded.tokenizer.encode("x-ray", 8) == [tokenizer.index["x"], tokenizer.index["ray"]]
    np.testing.assert_allclose(loaded.encode(["x-ray"]), loaded.encode(["x ray"]))


@pytest.mark.parametrize("shared", [True, False], ids=["shared towers", "separate towers"])
def test_frozen_word_rows_are_derived_again_instead_of_saved(vectors_file, tmp_path, shared):
    """A frozen table's word rows come again from the vectors source: they are in neither a checkpoint
    nor an index folder's query tower, the model loads exactly, and rows that come out different (a
    changed source) are refused in one line. The hashed buckets are saved (torch draws them differently
    on other CPU kernels)."""
    from two_tower.data.embeddings import _load_extension_source
    from two_tower.model import frozen_rows
    from two_tower.retrieval.query_encoder import QueryEncoder

    tok, vectors = open_tokenizer(vectors_file, train=("cat cat dog emu", "cat fish emu"))
    assert "emu" in tok.words and "emu" not in vectors.index  # a training word without a vector: a random row

    def towers(frozen=True):
        return TwoTower(len(tok.words), 4, lambda **kw: RNNEncoder(cell="gru", hidden_size=4, dim=4, **kw), shared_towers=shared,
                        freeze_embeddings=frozen, extension_size=len(tok.extension_words), hash_buckets=8)

    torch.manual_seed(0)
    model = towers()
    model.load_embeddings(vectors.align(tok.words, seed=5)[0])  # seed 5: "emu" gets a row the source's seed-0 alignment does not give
    attach_vocabulary([model.query_encoder, model.passage_encoder], tok)
    ids = torch.tensor([tok.encode("cat emu xj-17b zebra", 8)])  # a training word, one without a vector, a hashed word, an extension word
    assert ids.max() >= tok.vocab_size
    lengths = torch.tensor([ids.shape[1]])
    want = model.encode_queries(ids, lengths).detach(), model.encode_passages(ids, lengths).detach()

    state = model.state_dict()
    derived = frozen_rows.strip(state, model, tok)
    words = [f"{prefix}embedding.words.weight" for prefix in ("", "query_encoder.", "passage_encoder.")]
    assert sorted(derived) == sorted(words) and not set(words) & set(state)
    assert {"embedding.buckets.weight", "query_encoder.embedding.buckets.weight"} <= set(state)  # saved
    # Only the rows the source does not give again are saved: UNK's and the vector-less word's, drawn at random.
    assert derived["embedding.words.weight"]["rows"].tolist() == [UNK_ID, tok.index["emu"]]
    torch.manual_seed(1)
    fresh = towers()
    attach_vocabulary([fresh.query_encoder, fresh.passage_encoder], tok)
    frozen_rows.restore(state, derived, tok, "model.ckpt")
    fresh.load_state_dict(state)
    got = fresh.encode_queries(ids, lengths).detach(), fresh.encode_passages(ids, lengths).detach()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert frozen_rows.strip(fresh.state_dict(), fresh, tok).keys() == derived.keys()  # loaded, it saves small again

    # An index folder's query tower: saved without the rows, loaded exactly.
    config = {"encoder": {"_target_": "two_tower.model.encoders.RNNEncoder", "cell": "gru", "hidden_size": 4, "dim": 4},
              "vocab_size": len(tok.words), "embedding_dim": 4, "extension_size": len(tok.extension_words), "hash_buckets": 8}
    QueryEncoder(model.query_encoder, tok, config).save(tmp_path / "query_encoder.pt")
    assert "embedding.words.weight" not in torch.load(tmp_path / "query_encoder.pt", weights_only=True)["state_dict"]
    np.testing.assert_array_equal(QueryEncoder.load(tmp_path / "query_encoder.pt").encode(["cat emu xj-17b zebra"]), want[0].numpy())
    # The same rows in a process whose torch uses its default CPU kernels (as on ARM), where torch's random
    # draws differ: nothing loaded may depend on them (the buckets are saved, the word rows come from numpy).
    script = (
        "import sys; from two_tower.retrieval.query_encoder import QueryEncoder; from two_tower.model.frozen_rows import crc; "
        "e = QueryEncoder.load(sys.argv[1]).encoder.embedding; print(crc(e.words.weight), crc(e.buckets.weight))"
    )
    env = {**__import__("os").environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "query_encoder.pt")], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == [str(frozen_rows.crc(model.embedding.words.weight)), str(frozen_rows.crc(model.embedding.buckets.weight))]

    # A trained table is saved whole, as before.
    trained = towers(frozen=False)
    trained_state = trained.state_dict()
    assert frozen_rows.strip(trained_state, trained, tok) == {} and set(words) <= set(trained_state)

    # The source changed since training: the rows derived again are refused.
    text = vectors_file.read_text().splitlines()
    text[1] = text[1].split()[0] + " " + " ".join(["0.5"] * 4)  # "cat", a training word: the extension is unchanged
    vectors_file.write_text("\n".join(text) + "\n")
    _load_extension_source.cache_clear()
    with pytest.raises(EmbeddingsError, match=r"^model.ckpt: embedding.words.weight: .* not the ones the model was trained with"):
        frozen_rows.restore(dict(state), derived, tok, "model.ckpt")
    with pytest.raises(EmbeddingsError, match=r"query_encoder.pt: embedding.words.weight: .* not the ones the model was trained with"):
        QueryEncoder.load(tmp_path / "query_encoder.pt")
    # Only word rows are ever derived: anything else in the entry is refused, not guessed at.
    with pytest.raises(EmbeddingsError, match="^model.ckpt: embedding.buckets.weight: saved by a development version"):
        frozen_rows.restore({}, {"embedding.buckets.weight": {"crc": 1, "shape": [8, 4]}}, tok, "model.ckpt")


def test_beir_repeated_judgements_take_the_last_line_and_unreadable_qrels_say_why(tmp_path):
    """A pair judged twice: the last line wins, as BEIR's loader reads it (a later 0 was ignored, a later
    grade kept: two rules), counted; a qrels file none of whose lines is read says why (the counts were
    logged only after the error)."""
    write_beir(tmp_path / "a", [b'{"_id": "d1", "text": "lift"}', b'{"_id": "d4", "text": "drag"}'], [b'{"_id": "q1", "text": "lift"}'],
               ["q1\td1\t1", "q1\td1\t3", "q1\td4\t2", "q1\td4\t0"])
    collection = beir.load_beir(tmp_path / "a", "test")
    assert collection.qrels == {"q1": {"d1": 3}} and collection.skipped["qrels/test.tsv"]["repeated_judgement"] == 2
    write_beir(tmp_path / "b", [b'{"_id": "d1", "text": "lift"}'], [b'{"_id": "q1", "text": "lift"}'], ["q1 0 d1 1", "q1 0 d1 1"])  # TREC's 4 columns
    with pytest.raises(beir.BeirError, match=r"no query with a relevant document in the corpus \(lines skipped: \{'not_3_columns': 2\} \(first at line 2 \(not_3_columns\)\); a line is query-id<TAB>corpus-id<TAB>score\)"):
        beir.load_beir(tmp_path / "b", "test")


def test_a_queries_file_of_no_usable_line_is_named_not_the_qrels(tmp_path):
    """queries.jsonl written as one JSON array (or empty): the error named qrels/test.tsv, its lines skipped as
    unknown_query, with the hint of a qrels line's columns; queries.jsonl and why its lines were skipped were never said
    (logged after the error; a probe)."""
    write_beir(tmp_path, [b'{"_id": "d1", "text": "lift"}'], [b'[{"_id": "q1",', b' "text": "lift"}]'], ["q1\td1\t1"])
    with pytest.raises(beir.BeirError, match=r"queries.jsonl: no usable query; skipped \{'not_json': 2\} \(first at line 1 \(not_json\)\)$"):
        beir.load_beir(tmp_path, "test")
    (tmp_path / "queries.jsonl").write_bytes(b"\n")
    with pytest.raises(beir.BeirError, match=r"queries.jsonl: no usable query \(the file holds no line\)$"):
        beir.load_beir(tmp_path, "test")


def test_a_qrels_line_with_an_empty_id_is_skipped_and_counted(tmp_path):
    """"q1<TAB><TAB>1" judged a document "" relevant: as a document absent from the corpus it was never retrieved and
    scored, so q1 (judged on nothing else) was evaluated at 0 and q2's recall halved, with no word but the count of
    documents not in the corpus (a probe). An empty query or document id is a bad line, skipped and counted."""
    write_beir(tmp_path, [b'{"_id": "d1", "text": "lift"}', b'{"_id": "d2", "text": "drag"}'],
               [b'{"_id": "q1", "text": "lift"}', b'{"_id": "q2", "text": "drag"}'], ["q1\t\t1", "q2\td2\t1", "q2\t \t1", "\td1\t1"])
    collection = beir.load_beir(tmp_path, "test")
    assert collection.query_ids == ["q2"] and collection.qrels == {"q2": {"d2": 1}} and collection.unlisted == {}
    assert dict(collection.skipped["qrels/test.tsv"]) == {"no_id": 3} and collection.skipped["qrels/test.tsv"].first == {"no_id": 2}


def test_a_relevant_document_missing_from_the_corpus_counts_as_bm25_and_beir_count_it(tmp_path):
    """A query judged only on a document the corpus lacks scores 0 (it was left out: MRR 1.0 where BEIR and
    pytrec_eval give 0.667), and a missing relevant document lowers nDCG and recall; qrels.txt keeps it.
    Checked against ranx, which scores the qrels as given."""
    from ranx import Qrels, Run, evaluate as ranx_evaluate

    from tests.test_retrieval import compose_retrieval
    from two_tower.retrieval import evaluate

    write_beir(tmp_path / "beir",
               [b'{"_id": "d1", "text": "wing lift"}', b'{"_id": "d2", "text": "engine drag"}', b'{"_id": "d3", "text": "tail fin"}'],
               [b'{"_id": "q1", "text": "wing lift"}', b'{"_id": "q2", "text": "engine drag"}', b'{"_id": "q3", "text": "rotor blade"}'],
               ["q1\td1\t1", "q1\tdX\t1", "q2\td2\t2", "q3\tdY\t1"])
    out = tmp_path / "out"
    metrics = evaluate.evaluate(compose_retrieval("evaluate", [f"data.path={tmp_path / 'beir'}", "split=test", f"out={out}", "retriever=[bm25]", "save_runs=true"]))["bm25"]
    qrels = {"q1": {"d1": 1, "dX": 1}, "q2": {"d2": 2}, "q3": {"dY": 1}}
    run = {}
    for line in (out / "runs" / "bm25.trec").read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, {})[doc] = float(score)
    for q in qrels:
        run.setdefault(q, {})
    expected = ranx_evaluate(Qrels(qrels), Run(run), ["mrr@10", "ndcg@10", "recall@100"], make_comparable=True)
    assert metrics["mrr@10"] == pytest.approx(expected["mrr@10"]) == pytest.approx(2 / 3)
    assert metrics["ndcg@10"] == pytest.approx(expected["ndcg@10"]) and metrics["recall@100"] == pytest.approx(expected["recall@100"])
    assert "q1 0 dX 1" in (out / "qrels.txt").read_text().splitlines() and "q3 0 dY 1" in (out / "qrels.txt").read_text().splitlines()


# --------------------------------------------------------------------------- words with combining marks
HINDI = "हिन्दी भाषा"  # vowel signs and a virama: combining marks inside both words
CAFE_NFD, CAFE_NFC = "cafe\u0301 au lait", "caf\u00e9 au lait"


def test_words_keep_their_combining_marks_and_composed_and_decomposed_text_split_alike():
    """[^\\W_] leaves combining marks out, so a word was cut at each one ("हिन्दी भाषा" gave ह, न, द, भ, ष) and "café"
    typed with a combining accent was "cafe", another word than the composed "café"."""
    from two_tower.data.tokenizer import split_words

    assert split_words(HINDI) == ["ह", "न", "द", "भ", "ष"]  # the rule of tokenizers saved before (unicode_words absent)
    assert split_words(CAFE_NFD) == ["cafe", "au", "lait"] != split_words(CAFE_NFC)
    for hyphens in (False, True):
        for punctuation in (False, True):
            rule = dict(keep_punctuation=punctuation, split_hyphens=hyphens, unicode_words=True)
            assert split_words(HINDI, **rule) == ["हिन्दी", "भाषा"]
            assert split_words(CAFE_NFD, **rule) == split_words(CAFE_NFC, **rule) == ["café", "au", "lait"]
            assert split_words("தமிழ் நாடு", **rule) == ["தமிழ்", "நாடு"]
            assert split_words("\U0001e900\U0001e944\U0001e901 x", **rule)[0] == "\U0001e922\U0001e944\U0001e923"  # Adlam: a mark above U+FFFF
            assert split_words("“Don't” x-ray 😀 naïve", **rule) == split_words("“Don't” x-ray 😀 naïve", punctuation, hyphens)


def test_ascii_text_splits_the_same_with_either_rule():
    import random

    from two_tower.data.tokenizer import split_words

    rng = random.Random(0)
    alphabet = "abcXYZ019 '-_.,!?\t\n"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for punctuation in (False, True):
            for hyphens in (False, True):
                assert split_words(text, punctuation, hyphens, True) == split_words(text, punctuation, hyphens), text


def test_a_new_tokenizer_keeps_marks_and_one_saved_before_splits_as_it_did():
    new = Tokenizer.build([HINDI, HINDI, CAFE_NFC, CAFE_NFC], min_freq=2)
    assert new.unicode_words and {"हिन्दी", "भाषा", "café"} <= set(new.words)
    assert new.encode(CAFE_NFD, 8) == new.encode(CAFE_NFC, 8) and new.encode("हिन्दी", 4) == [new.index["हिन्दी"]]
    state = new.state_dict()
    assert state["unicode_words"] is True and Tokenizer.from_state_dict(state).unicode_words
    before = {k: v for k, v in state.items() if k != "unicode_words"}  # as tokenizers were saved before
    old = Tokenizer.from_state_dict(before)
    assert not old.unicode_words and old.split(HINDI) == ["ह", "न", "द", "भ", "ष"]
    assert old.fingerprint() != new.fingerprint()
    plain = Tokenizer.build(["the cat sat", "the cat sat"], min_freq=2, unicode_words=False)
    assert "unicode_words" not in plain.state_dict()  # absent = False: fingerprints of older tokenizers hold


def test_bm25_finds_words_with_marks_and_a_folder_saved_before_tokenizes_as_it_was_built(tmp_path):
    import bm25s

    from two_tower.retrieval.bm25 import BM25Scorer

    passages = [f"{HINDI} पुस्तक", CAFE_NFC, "the garden castle", "a quiet river"]
    scorer = BM25Scorer(stopwords=None).index(passages)
    assert scorer.query_tokens([HINDI, CAFE_NFD]) == [["हिन्दी", "भाषा"], ["café", "au", "lait"]]
    scores = scorer.scores(scorer.query_tokens(["हिन्दी", CAFE_NFD]))
    assert scores[0].argmax() == 0 and scores[0, 0] > 0 and scores[1].argmax() == 1 and scores[1, 1] > 0
    # bm25s's own pattern: no token in a Hindi query, and the decomposed café is "cafe"
    assert BM25Scorer(stopwords=None, unicode_words=False).query_tokens([HINDI, CAFE_NFD]) == [[], ["cafe", "au", "lait"]]
    adlam = "\U0001e900\U0001e944\U0001e901"  # a mark above U+FFFF: a corpus with one is split with those marks too
    assert BM25Scorer(stopwords=None).query_tokens([f"{adlam} 😀 ab", "😀 ab"]) == [["\U0001e922\U0001e944\U0001e923", "ab"], ["ab"]]
    # Text without marks: bm25s's tokens exactly
    texts = ["The x-ray of a_b c 42 i o", "don't stop; 3.14 pi", "ünïcode “quotes” — dash", ""]
    assert scorer.query_tokens(texts) == bm25s.tokenize(texts, stopwords=None, return_ids=False, show_progress=False)

    scorer.save(tmp_path / "new")
    assert BM25Scorer.load(tmp_path / "new").unicode_words
    old = BM25Scorer(stopwords=None, unicode_words=False).index(passages)
    old.save(tmp_path / "old")
    settings = json.loads((tmp_path / "old" / "settings.json").read_text())
    assert "unicode_words" not in settings  # as folders were saved before the option
    loaded = BM25Scorer.load(tmp_path / "old")
    assert not loaded.unicode_words and loaded.query_tokens([CAFE_NFD]) == [["cafe", "au", "lait"]]


def test_a_stemmed_bm25_folder_is_the_same_bytes_whatever_the_hash_seed(tmp_path):
    """bm25s numbers stems in a set's order, which follows the string-hash seed: the same corpus saved different
    files in two processes. ``sorted_vocabulary`` numbers them in sorted order, so every process writes the same."""
    script = (
        "import sys; from pathlib import Path; from two_tower.retrieval.bm25 import BM25Scorer\n"
        "passages = ['the running runners ran', 'aeroelastic models obey similarity laws', 'foxes and dogs', "
        "'a dog runs after foxes', 'laws of similarity in models']\n"
        "BM25Scorer(stemmer='english').index(passages).save(Path(sys.argv[1]))"
    )
    folders = []
    for seed in ("1", "2", "3"):
        folder = tmp_path / seed
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        folders.append({p.name: p.read_bytes() for p in sorted(folder.iterdir())})
    assert folders[0] == folders[1] == folders[2] and "vocab.index.json" in folders[0]
    vocab = json.loads(folders[0]["vocab.index.json"])
    stems = sorted((i, word) for word, i in vocab.items() if word)  # bm25s adds "" (an empty query's token) last
    assert [word for _, word in stems] == sorted(vocab.keys() - {""}) and "aeroelast" in vocab  # numbered in sorted order
    # and it scores as before: the query's stems find their passages
    from two_tower.retrieval.bm25 import BM25Scorer

    scorer = BM25Scorer.load(tmp_path / "1")
    scores = scorer.scores(scorer.query_tokens(["similarity laws", "running dogs"]))
    assert scores[0].argmax() in (1, 4) and scores[0, 2] == 0 and scores[1, [0, 2, 3]].min() > 0


def test_a_run_saved_before_words_kept_their_marks_resumes_with_its_own_rule(tmp_path, tiny_run, monkeypatch):
    """A run resumed from a checkpoint saved before: its data is tokenized by the rule it was trained with (with the
    new one, a training word with a mark would change the vocabulary and the resume be refused)."""
    from tests.conftest import TINY_RUN, compose_train
    from two_tower.data import datamodule
    from two_tower.training.train import train

    built = []
    original = datamodule.Tokenizer.build
    monkeypatch.setattr(datamodule.Tokenizer, "build", lambda *a, **k: built.append(k.get("unicode_words")) or original(*a, **k))
    state = torch.load(tiny_run["ckpt"], map_location="cpu", weights_only=False)
    assert state["tokenizer"].get("unicode_words") is True  # a new run
    del state["tokenizer"]["unicode_words"]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    cfg = compose_train(tmp_path / "resumed", [*TINY_RUN, f"ckpt_path={old}", "trainer.max_epochs=2", f"paths.cache_dir={tmp_path / 'cache'}"])
    train(cfg)
    assert built == [False]
    resumed = torch.load(tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["epoch"] >= 1 and "unicode_words" not in resumed["tokenizer"]
    built.clear()
    train(compose_train(tmp_path / "new", [*TINY_RUN, f"paths.cache_dir={tmp_path / 'cache'}"]))
    assert built == [True]


def test_a_resumed_older_run_keys_its_prepared_data_as_before_and_mines_bm25_negatives_by_its_rule(tiny_cfg):
    """A run saved before words kept their marks, resumed: its prepared-data cache key is the one it had (no second
    copy of its data), and negatives=bm25 mines (and keys its pool) by the run's rule."""
    from two_tower.training.train import build_datamodule

    dm = build_datamodule(tiny_cfg("negatives=bm25"))
    assert dm.tokenizer_settings["unicode_words"] is True
    fingerprints = {"train": "t", "validation": "v"}
    new_key = dm.cache_key(fingerprints)
    dm.tokenizer_settings["unicode_words"] = False  # as train() sets it for such a run
    old_key = dm.cache_key(fingerprints)
    del dm.tokenizer_settings["unicode_words"]
    assert dm.cache_key(fingerprints) == old_key != new_key  # as keyed before the setting existed
    dm.tokenizer_settings["unicode_words"] = False
    with_rule = dm.negatives.identity()
    assert with_rule["unicode_words"] is True
    dm.prepare_data()
    dm.setup("fit")
    assert dm.negatives.unicode_words is False and "unicode_words" not in dm.negatives.identity()


def test_word2vec_trains_on_the_runs_word_rule_and_keys_it(tmp_path):
    from two_tower.data.embeddings import Word2VecEmbeddings

    texts = [f"{HINDI} पुस्तक {CAFE_NFD} garden castle river" for _ in range(20)]
    w2v = Word2VecEmbeddings(dim=4, epochs=1, workers=1, min_count=1, cache_dir=str(tmp_path))
    new = w2v.load(texts, unicode_words=True)
    assert {"हिन्दी", "भाषा", "café"} <= set(new.words)
    old = w2v.load(texts)  # a run saved before the rule: its own cache entry, its words as they were split
    assert "ह" in old.words and "cafe" in old.words and "हिन्दी" not in old.words
    assert len(list((tmp_path / "word2vec").iterdir())) == 2


def test_extension_crc_reads_the_rows_in_place():
    """The extension rows' CRC (checked at every model load) is taken over the array itself: it copied them into
    bytes first (0.4 GB more at the load's peak for GloVe at 256 dims). The same CRC as over the copy."""
    import tracemalloc
    import zlib

    from two_tower.model.embedding import OpenEmbedding

    rows = np.random.default_rng(0).normal(size=(20_000, 256)).astype(np.float32)  # 20 MB
    tracemalloc.start()
    try:
        crc = OpenEmbedding.crc(rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert crc == zlib.crc32(rows.tobytes())
    assert peak < rows.nbytes // 10, peak
    assert OpenEmbedding.crc(rows[:, :128]) == zlib.crc32(np.ascontiguousarray(rows[:, :128]).tobytes())  # a view: copied contiguous


def test_a_qrels_score_is_ascii_digits(tmp_path):
    """int() reads "1_0" as 10 and "١" (an Arabic-Indic one) as 1: a score written with an underscore was judged with a
    gain of 10 without a word (a probe). A score is an optional sign and ASCII digits; another line is skipped and counted."""
    write_beir(tmp_path, [b'{"_id": "d1", "text": "lift"}', b'{"_id": "d2", "text": "drag"}', b'{"_id": "d3", "text": "wing"}'],
               [b'{"_id": "q1", "text": "lift"}'], ["q1\td1\t1_0", "q1\td2\t\u0661", "q1\td3\t 2", "q1\td1\t+1"])
    collection = beir.load_beir(tmp_path, "test")
    assert collection.qrels == {"q1": {"d1": 1, "d3": 2}}
    assert dict(collection.skipped["qrels/test.tsv"]) == {"score_not_integer": 2} and collection.skipped["qrels/test.tsv"].first == {"score_not_integer": 2}


def test_a_beir_id_of_true_is_no_id(tmp_path):
    """{"_id": true} was the document "True" (a bool is an int to Python), while 1.0 was no id (a probe)."""
    write_beir(tmp_path, [b'{"_id": "d1", "text": "lift"}', b'{"_id": true, "text": "drag"}'], [b'{"_id": "q1", "text": "lift"}', b'{"_id": false, "text": "x"}'],
               ["q1\td1\t1"])
    collection = beir.load_beir(tmp_path, "test")
    assert collection.corpus_ids == ["d1"] and collection.query_ids == ["q1"]
    assert dict(collection.skipped["corpus.jsonl"]) == {"no_id": 1} and dict(collection.skipped["queries.jsonl"]) == {"no_id": 1}


def test_a_folder_or_a_dead_link_where_a_beir_file_should_be_is_named_as_such(tmp_path):
    """qrels/test.tsv as a folder said "no such qrels file (split=test; this folder has ['test'])", a queries.jsonl folder or
    a link to nothing "no such file", and a corpus.jsonl folder made the folder MS MARCO shards ("no test-*.parquet"; a probe)."""
    import os

    write_beir(tmp_path, [b'{"_id": "d1", "text": "lift"}'], [b'{"_id": "q1", "text": "lift"}'], ["q1\td1\t1"])
    (tmp_path / "qrels" / "test.tsv").unlink()
    (tmp_path / "qrels" / "test.tsv").mkdir()
    with pytest.raises(beir.BeirError, match=r"qrels/test.tsv: a folder, not a file \(split=test\)$"):
        beir.check_files(tmp_path, "test")
    (tmp_path / "queries.jsonl").unlink()
    os.symlink(tmp_path / "gone.jsonl", tmp_path / "queries.jsonl")
    with pytest.raises(beir.BeirError, match=r"queries.jsonl: a link to nothing \(.*gone.jsonl\) \(a BEIR folder has"):
        beir.check_files(tmp_path, "test")
    (tmp_path / "corpus.jsonl").unlink()
    (tmp_path / "corpus.jsonl").mkdir()
    assert beir.is_beir_folder(tmp_path)
    with pytest.raises(beir.BeirError, match=r"corpus.jsonl: a folder, not a file \(a BEIR folder has"):
        beir.check_files(tmp_path, "test")


def test_a_qrels_score_past_a_c_int_is_skipped_and_counted(tmp_path):
    """A score of 400 digits ended evaluate.py in a traceback (OverflowError: int too large to convert to float), and
    one past float32 would have been an infinite gain (a probe). Scores are C ints, as trec_eval reads them."""
    write_beir(tmp_path, [b'{"_id": "d1", "text": "lift"}', b'{"_id": "d2", "text": "drag"}', b'{"_id": "d3", "text": "wing"}'],
               [b'{"_id": "q1", "text": "lift"}'], ["q1\td1\t2147483647", "q1\td2\t1" + "0" * 400, "q1\td3\t-2147483648"])
    collection = beir.load_beir(tmp_path, "test")
    assert collection.qrels == {"q1": {"d1": 2**31 - 1}}
    assert dict(collection.skipped["qrels/test.tsv"]) == {"score_too_large": 2} and collection.skipped["qrels/test.tsv"].first == {"score_too_large": 3}
    # the gains are float64: the score as it was (float32 made 2**31 - 1 the gain 2**31, past a C int in qrels.txt), no overflow
    assert beir.prepared_split(collection).relevance([0]) == [{0: 2**31 - 1}]


def test_a_qrels_line_with_a_nul_byte_is_skipped_and_counted(tmp_path):
    """"q1<TAB>d\\x002<TAB>1" judged a document "d\\x002" relevant, absent from the corpus, so never retrieved and counted
    as a miss of q1 (a probe); a UTF-16 qrels file was said to be lines of scores that are not integers. A NUL is never
    in a qrels line: its line is skipped and counted."""
    write_beir(tmp_path, [b'{"_id": "d1", "text": "lift"}', b'{"_id": "d2", "text": "drag"}'], [b'{"_id": "q1", "text": "lift"}'],
               ["q1\td1\t1", "q1\td\x002\t1"])
    collection = beir.load_beir(tmp_path, "test")
    assert collection.qrels == {"q1": {"d1": 1}} and collection.unlisted == {}
    assert dict(collection.skipped["qrels/test.tsv"]) == {"nul_byte": 1} and collection.skipped["qrels/test.tsv"].first == {"nul_byte": 3}
    (tmp_path / "qrels" / "test.tsv").write_bytes("query-id\tcorpus-id\tscore\nq1\td1\t1\n".encode("utf-16"))
    with pytest.raises(beir.BeirError, match=r"no query with a relevant document in the corpus \(lines skipped: \{'not_utf8': 1, 'nul_byte': 2\}"):
        beir.load_beir(tmp_path, "test")
