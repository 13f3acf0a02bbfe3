"""train.py on a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv): every split ranks the folder's one
corpus, validation reproduces evaluate.py, a labelled test split is scored after training, and bad input is one
line. The folder is made here from synthetic rows (no ../shared data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from two_tower.core import per_query
from two_tower.core.errors import BeirError, ConfigError, DataSourceError
from two_tower.data.prepared import PreparedSplit
from two_tower.data.synthetic import make_rows
from two_tower.training.train import train

from test_retrieval import compose_retrieval

DEV_ONLY_WORD = "zyxdevonly"  # in one dev query only: never in the vocabulary
CORPUS_ONLY_WORD = "qorpusword"  # in one document no query judges: not in the vocabulary (validation and test rank it)
TRAIN_DOC_WORD = "trainjudgedword"  # in one document a training query judges relevant: in the vocabulary


def write_beir_folder(root: Path, train: int = 200, dev: int = 40, test: int = 40, judged_negatives: bool = False) -> dict:
    """A BEIR folder of synthetic rows: the corpus is every row's passages (one document each, ids d0..), a query
    is a row's query (ids q0..), its selected passages are relevant (score 1, one of them graded 2 in dev); the
    splits take consecutive rows. Also: a document no query judges, one a training query judges besides its own, a
    dev query with a word of its own, and a training query whose only relevant document is not in the corpus. ``judged_negatives``: a training query's
    unselected passages are judged too, score 0 (not relevant). Returns {split: [query ids]}."""
    rows = make_rows(train + dev + test, seed=5)
    corpus: dict[str, str] = {}
    for row in rows:
        for text in row["passages"]["passage_text"]:
            corpus.setdefault(text, f"d{len(corpus)}")
    corpus[f"{CORPUS_ONLY_WORD} a page {CORPUS_ONLY_WORD} nobody asks about"] = f"d{len(corpus)}"
    corpus[f"{TRAIN_DOC_WORD} a page {TRAIN_DOC_WORD} a training query asks about"] = train_doc = f"d{len(corpus)}"
    queries = {f"q{i}": row["query"] for i, row in enumerate(rows)}
    queries[f"q{train}"] = f"{queries[f'q{train}'].rstrip('?')} {DEV_ONLY_WORD}"
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for text, cid in corpus.items():
            f.write(json.dumps({"_id": cid, "title": "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    bounds = {"train": range(0, train), "dev": range(train, train + dev), "test": range(train + dev, len(rows))}
    for split, numbers in bounds.items():
        lines = ["query-id\tcorpus-id\tscore"]
        for i in numbers:
            passages = rows[i]["passages"]
            for text, selected in zip(passages["passage_text"], passages["is_selected"]):
                if selected:
                    lines.append(f"q{i}\t{corpus[text]}\t{2 if split == 'dev' and i == train else 1}")
                elif judged_negatives and split == "train":
                    lines.append(f"q{i}\t{corpus[text]}\t0")
        if split == "train":
            lines.append(f"q2\t{train_doc}\t1")
            lines.append("q0\tnot_in_corpus\t1")  # a second relevant document, absent: q0 still trains
            lines[1:] = [line for line in lines[1:] if not line.startswith("q1\t")] + ["q1\tabsent_too\t1"]  # q1: none in the corpus
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return {split: [f"q{i}" for i in numbers] for split, numbers in bounds.items()}


@pytest.fixture(scope="module")
def beir_run(tmp_path_factory):
    """One tiny run on a BEIR folder (stemmed bag path, BM25-mined negatives), validating on its dev split."""
    from conftest import compose_train

    root = tmp_path_factory.mktemp("beir_run")
    ids = write_beir_folder(root / "data")
    cfg = compose_train(root, ["data=local", f"data.path={root / 'data'}", "data.val_split=dev", "encoder.bag_dim=16",
                               "encoder.bag_stemmer=english", "negatives=bm25"])
    metrics = train(cfg)
    ckpt = next((Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt"))
    return {"cfg": cfg, "metrics": metrics, "ckpt": ckpt, "data": root / "data", "ids": ids}


def test_training_on_a_beir_folder_ranks_its_whole_corpus_and_evaluate_reproduces_validation(beir_run, tmp_path):
    cfg, ids = beir_run["cfg"], beir_run["ids"]
    run = Path(cfg.paths.output_dir)
    prepared = next(Path(cfg.paths.cache_dir, "prepared").iterdir())
    meta = json.loads((prepared / "meta.json").read_text())
    # q1's only relevant document is not in the corpus: left out of training, and counted
    assert meta["reports"]["train"] == {"total": 200, "kept": 199, "skipped": {"no_relevant_document_in_corpus": 1}}
    train_split, val = PreparedSplit.load(prepared / "train"), PreparedSplit.load(prepared / "validation")
    corpus_size = sum(1 for _ in open(beir_run["data"] / "corpus.jsonl"))
    assert train_split.num_passages == val.num_passages == corpus_size  # the whole corpus, in both
    assert train_split.query_ids == [q for q in ids["train"] if q != "q1"] and val.query_ids == ids["dev"]
    assert len(train_split.positives[0]) == 1  # q0's absent document is no positive
    # the dev split keeps its graded gains (one query's document scored 2), as evaluate.py reads them
    assert sorted(set(val.gains.values.tolist())) == [1.0, 2.0] and val.passage_ids[:3] == ["d0", "d1", "d2"]
    # The vocabulary is the training queries' words and the corpus's, never a validation query's
    vocabulary = set(json.loads((prepared / "tokenizer.json").read_text())["words"])
    assert TRAIN_DOC_WORD in vocabulary and CORPUS_ONLY_WORD not in vocabulary and DEV_ONLY_WORD not in vocabulary

    # Validation, query by query, is what evaluate.py gives the checkpoint on the folder's dev split (graded nDCG too)
    from two_tower.retrieval.evaluate import evaluate

    out = tmp_path / "eval"
    metrics = evaluate(compose_retrieval("evaluate", [f"ckpt={beir_run['ckpt']}", f"data.path={beir_run['data']}", "split=dev",
                                                      f"out={out}", "retriever=[dense]"]))["dense"]
    val_best = per_query.read(run / "per_query" / "val_best.parquet", "mrr@10")
    dense = per_query.read(out / "per_query" / "dense.parquet", "mrr@10")
    joined = dense.merge(val_best, on="qid", suffixes=("", "_val"))
    assert sorted(joined["qid"]) == sorted(ids["dev"])  # the collection's own query ids in both
    for name in ("mrr@10", "ndcg@10", "recall@100"):
        assert joined[name].to_numpy() == pytest.approx(joined[f"{name}_val"].to_numpy(), abs=1e-6)
    assert metrics["mrr@10"] == pytest.approx(beir_run["metrics"]["val/mrr@10"], abs=1e-6)
    assert "rerank_mrr@10" not in metrics and "rerank_mrr@10" not in val_best.columns  # no candidate lists in a BEIR split
    # The labelled test split is scored after training, over the same corpus, by the same rule
    test = per_query.read(run / "per_query" / "test.parquet", "mrr@10")
    assert sorted(test["qid"]) == sorted(ids["test"])
    scored = evaluate(compose_retrieval("evaluate", [f"ckpt={beir_run['ckpt']}", f"data.path={beir_run['data']}", "split=test",
                                                     f"out={tmp_path / 'eval_test'}", "retriever=[dense]"]))["dense"]
    assert scored["ndcg@10"] == pytest.approx(beir_run["metrics"]["test/ndcg@10"], abs=1e-6)


def test_a_missing_split_names_its_setting_and_random_negatives_need_candidates(tmp_path, tiny_cfg):
    from conftest import compose_train

    write_beir_folder(tmp_path / "data")
    cfg = compose_train(tmp_path, ["data=local", f"data.path={tmp_path / 'data'}"])  # data.val_split=validation: no such qrels
    with pytest.raises(BeirError, match=r"qrels/validation\.tsv: no such qrels file \(split=validation; this folder has \['dev', 'test', 'train'\]\); "
                                        r"name another with data\.val_split=NAME"):
        train(cfg)
    cfg = compose_train(tmp_path, ["data=local", f"data.path={tmp_path / 'data'}", "data.val_split=dev", "negatives=random"])
    with pytest.raises(ConfigError, match=r"negatives=random draws each training query's unselected candidates, and 199 of the 199 "
                                          r"training queries have none \(in a BEIR folder, the documents its training qrels judge not relevant"):
        train(cfg)
    # mined negatives: a query whose window the filters empty has no candidate to fall back on (a ValueError traceback)
    cfg = compose_train(tmp_path, ["data=local", f"data.path={tmp_path / 'data'}", "data.val_split=dev", "negatives=bm25", "negatives.margin=1000"])
    with pytest.raises(ConfigError, match=r"^199 of the 199 training queries have no bm25 negative left \(.*negatives\.margin=1000; .*no unselected "
                                          r"candidate to fall back on"):
        train(cfg)


def test_documents_judged_not_relevant_are_a_training_querys_candidates(tmp_path):
    """negatives=random draws a BEIR training query's documents judged not relevant (score 0), as it draws an MS MARCO
    row's unselected passages; queries without such judgements are the refusal's count."""
    from conftest import compose_train

    from two_tower.data import beir

    rows = make_rows(260, seed=5)
    write_beir_folder(tmp_path / "data", train=200, dev=40, test=20, judged_negatives=True)
    split = beir.prepared_split(beir.load_beir(tmp_path / "data", "train"), for_training=True)
    position = {text: i for i, text in enumerate(split.passage_texts)}
    q0 = rows[0]["passages"]
    unselected = [position[t] for t, chosen in zip(q0["passage_text"], q0["is_selected"]) if not chosen]
    assert len(unselected) >= 3 and split.negatives()[0].tolist() == list(dict.fromkeys(unselected))  # qrels order
    cfg = compose_train(tmp_path, ["data=local", f"data.path={tmp_path / 'data'}", "data.val_split=dev", "negatives=random"])
    metrics = train(cfg)
    assert metrics["train/negatives_per_query"] > 32 and 0 <= metrics["val/mrr@10"] <= 1  # the batch's others and its own one


def test_a_prepared_split_keeps_its_gains_and_ids(tmp_path):
    from two_tower.data import beir

    ids = write_beir_folder(tmp_path / "data", train=6, dev=4, test=2)
    split = beir.prepared_split(beir.load_beir(tmp_path / "data", "dev"))
    split.save(tmp_path / "split")
    loaded = PreparedSplit.load(tmp_path / "split")
    assert loaded.query_ids == ids["dev"] and loaded.passage_ids == split.passage_ids
    assert loaded.gains.values.dtype.kind == "f" and loaded.gains.values.tolist() == split.gains.values.tolist()
    assert loaded.relevance(loaded.evaluated_queries()) == split.relevance(split.evaluated_queries())
    # an MS MARCO split has neither: loaded as before
    from two_tower.data.msmarco import CleanRow

    plain = PreparedSplit.from_rows([CleanRow("a query", ["its passage", "another"], [True, False])])
    plain.save(tmp_path / "plain")
    again = PreparedSplit.load(tmp_path / "plain")
    assert again.gains is None and again.query_ids is None and again.passage_ids is None


def test_a_query_judged_in_training_and_in_validation_or_test_is_left_out_of_training(tmp_path):
    """A query id in qrels/train.tsv and in dev.tsv (or test.tsv) is a validation (test) query: training leaves it out,
    counted, so its words are not in the vocabulary and its metrics do not measure memorisation. It was trained on, its
    words in the vocabulary (a probe: the only sign was the text-based leakage warning, none for a test query)."""
    from conftest import compose_train
    from two_tower.training.train import build_datamodule

    ids = write_beir_folder(tmp_path / "data", train=60, dev=10, test=10)
    qrels = tmp_path / "data" / "qrels"
    dev_query, test_query = ids["dev"][0], ids["test"][0]  # the dev one has DEV_ONLY_WORD
    copied = [line for split in ("dev", "test") for line in (qrels / f"{split}.tsv").read_text().splitlines()[1:]
              if line.split("\t")[0] in (dev_query, test_query)]
    with open(qrels / "train.tsv", "a") as f:
        f.write("\n".join(copied) + "\n")
    cfg = compose_train(tmp_path, ["data=local", f"data.path={tmp_path / 'data'}", "data.val_split=dev", "negatives=in_batch",
                                   "data.tokenizer.min_freq=1"])
    dm = build_datamodule(cfg)
    dm.setup()
    assert dev_query not in dm.train.query_ids and test_query not in dm.train.query_ids
    assert dev_query in dm.val.query_ids and test_query in dm.test.query_ids
    assert dm.meta["reports"]["train"] == {"total": 62, "kept": 59, "skipped": {
        "also_a_validation_query": 1, "also_a_test_query": 1, "no_relevant_document_in_corpus": 1}}
    assert list(dm.meta["reports"]) == ["train", "validation", "test"]
    assert DEV_ONLY_WORD not in dm.tokenizer.words

    # Validating on the training split itself leaves nothing to train on: one line saying why
    cfg = compose_train(tmp_path / "same", ["data=local", f"data.path={tmp_path / 'data'}", "data.val_split=train", "negatives=in_batch"])
    with pytest.raises(DataSourceError, match=r"train\.tsv: no training query has a relevant document in the corpus and is not a validation or test query "
                                            r"\(left out: 62 judged in the validation split too\)$"):
        build_datamodule(cfg).setup()


def test_the_splits_of_a_beir_folder_hold_its_corpus_once_when_loaded(tmp_path):
    """setup() reads the corpus's texts once for every split: validation and test share the training split's lists,
    without reading their own copies first. It read all three (Python strings, the corpus's size each) and then dropped
    two, so loading peaked at three times the corpus (a probe: 1434 MB -> 1185 MB at 300k documents)."""
    import random
    import sys
    import tracemalloc

    from conftest import compose_train
    from two_tower.training.train import build_datamodule

    write_beir_folder(tmp_path / "data", train=60, dev=10, test=10)
    words, rng = [f"filler{i}" for i in range(2000)], random.Random(0)
    with open(tmp_path / "data" / "corpus.jsonl", "a") as f:
        for i in range(20000):
            f.write(json.dumps({"_id": f"extra{i}", "title": "", "text": " ".join(rng.choices(words, k=60))}) + "\n")
    cfg = compose_train(tmp_path, ["data=local", f"data.path={tmp_path / 'data'}", "data.val_split=dev", "negatives=in_batch"])
    build_datamodule(cfg).prepare_data()  # the cache, built by another process in a real run

    dm = build_datamodule(cfg)
    tracemalloc.start()
    try:
        dm.setup()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dm.val.passage_texts is dm.train.passage_texts and dm.test.passage_texts is dm.train.passage_texts
    assert dm.val.passage_tokens is dm.train.passage_tokens
    corpus = sys.getsizeof(dm.train.passage_texts) + sum(map(sys.getsizeof, dm.train.passage_texts))
    assert peak < 2 * corpus, (peak, corpus)


def test_a_test_split_judging_no_query_relevant_is_skipped_not_fatal(tmp_path, caplog):
    """qrels/test.tsv whose judgements are all 0 (or a header alone) is a test split without labels: skipped with a
    warning, as data.test_split documents it (and as an MS MARCO test split without a selected passage is). It ended
    the run before training: 'error: .../qrels/test.tsv: no query with a relevant document in the corpus' (a probe)."""
    from conftest import compose_train
    from two_tower.training.train import build_datamodule

    write_beir_folder(tmp_path / "data", train=60, dev=10, test=10)
    test = tmp_path / "data" / "qrels" / "test.tsv"
    test.write_text("".join(line.rsplit("\t", 1)[0] + "\t0\n" if i else line + "\n" for i, line in enumerate(test.read_text().splitlines())))
    cfg = compose_train(tmp_path, ["data=local", f"data.path={tmp_path / 'data'}", "data.val_split=dev", "negatives=in_batch"])
    for run in ("cache miss", "cache hit"):  # said on both
        caplog.clear()
        dm = build_datamodule(cfg)
        dm.setup()
        assert dm.test is None and dm.val.num_queries == 10 and list(dm.meta["reports"]) == ["train", "validation"]
        assert [r.levelname for r in caplog.records if "test split skipped (no labelled query to score)" in r.getMessage()] == ["WARNING"], run


def test_absent_documents_are_reported_as_what_becomes_of_them(tmp_path, caplog):
    """Training leaves a judgement of a document not in the corpus out; evaluation counts it relevant, never retrieved."""
    from two_tower.data import beir

    write_beir_folder(tmp_path / "data", train=6, dev=4, test=2)
    with caplog.at_level("WARNING"):
        beir.load_beir(tmp_path / "data", "train", for_training=True)
        beir.load_beir(tmp_path / "data", "train")
    said = [r.getMessage().split(": ", 1)[1] for r in caplog.records if "not in the corpus" in r.getMessage()]
    assert said == ["2 relevance judgements name documents not in the corpus (or without a usable text): left out of training",
                    "2 relevance judgements name documents not in the corpus (or without a usable text): counted as relevant and "
                    "never retrieved, as BEIR scores them"]
