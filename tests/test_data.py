"""Loading, row validation, tokenization cache and batching, on synthetic rows written as v1.1 shards."""

import copy
import json
import logging
import re

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import numpy as np
import pytest

from two_tower.core.errors import ConfigError
from two_tower.data import msmarco
from two_tower.data.batches import TripletBatches, TripletBatchSampler
from two_tower.data.datamodule import TwoTowerDataModule
from two_tower.data.prepared import PreparedSplit
from two_tower.data.synthetic import make_rows
from two_tower.data.tokenizer import PAD_ID, UNK_ID, Tokenizer, split_words
from two_tower.data.embeddings import RandomEmbeddings
from two_tower.negatives import InBatchNegatives, RandomNegatives


def bad_rows(good: dict) -> dict[str, list]:
    """One malformed variant of a good row per reason the validator counts."""

    ids = iter(range(10_000, 20_000))

    def edit(fn):
        row = copy.deepcopy(good)
        row["query_id"] = next(ids)  # another query, malformed
        fn(row)
        return row

    return {
        "duplicate_query_id": [copy.deepcopy(good)],  # the same query again: the first row of a query_id is kept
        "empty_query": [edit(lambda r: r.update(query="   "))],
        # no word the towers read: validation scored an arbitrary ranking for it (a probe)
        "query_without_a_word": [edit(lambda r: r.update(query="\U0001f600 ??")), edit(lambda r: r.update(query="\u200b\u200b"))],
        "query_not_a_string": [edit(lambda r: r.update(query=None)), edit(lambda r: r.update(query=7))],
        "passages_missing": [edit(lambda r: r.pop("passages")), edit(lambda r: r["passages"].pop("is_selected"))],
        "length_mismatch": [edit(lambda r: r["passages"]["is_selected"].append(0))],
        "passage_not_a_string": [edit(lambda r: r["passages"]["passage_text"].__setitem__(0, None))],
        "empty_passage": [edit(lambda r: r["passages"]["passage_text"].__setitem__(1, ""))],
        "bad_is_selected": [edit(lambda r: r["passages"]["is_selected"].__setitem__(0, 3))],
        "no_selected_passage": [edit(lambda r: r["passages"].update(is_selected=[0] * len(r["passages"]["is_selected"])))],
        "no_unselected_passage": [edit(lambda r: r["passages"].update(is_selected=[1] * len(r["passages"]["is_selected"])))],
        # its unselected passages say what its selected one says (a probe: negatives=random then crashed)
        "unselected_same_as_selected": [edit(lambda r: r["passages"].update(passage_text=[" same text", "same text "], is_selected=[1, 0]))],
    }


def test_validation_skips_and_counts_each_reason():
    good = make_rows(5, seed=1)
    bad = bad_rows(good[0])
    rows = good + [r for rs in bad.values() for r in rs]
    kept, report = msmarco.validate_rows(rows, "train")
    assert [r.query for r in kept] == [g["query"] for g in good]
    assert dict(report.skipped) == {reason: len(rs) for reason, rs in bad.items()}
    assert report.total == len(rows) and report.kept == 5


def test_a_query_whose_first_row_is_unusable_keeps_its_later_usable_row_and_the_first_skipped_row_is_named():
    """The duplicate check counted the unusable first row as the query's, so the usable one was dropped as a duplicate."""
    from two_tower.data.jsonl import UnreadableRow

    good = make_rows(3, seed=3)
    broken = copy.deepcopy(good[1])
    broken["query"] = "   "
    rows = [good[0], broken, UnreadableRow("not_json", "train-0.jsonl", 4), good[1], copy.deepcopy(good[1]), good[2]]
    kept, report = msmarco.validate_rows(rows, "train")
    assert [r.query for r in kept] == [g["query"] for g in good]
    assert dict(report.skipped) == {"empty_query": 1, "not_json": 1, "duplicate_query_id": 1}
    assert report.first == {"empty_query": "row 2", "not_json": "train-0.jsonl line 4", "duplicate_query_id": "row 5"}


def test_an_evaluation_split_with_no_scored_query_says_what_an_evaluation_split_needs():
    """The error asked every split for rows with a selected and an unselected passage, a training row's need: an
    evaluation split keeps and scores rows with no unselected passage, and lacked only a selected one (a probe)."""
    rows = make_rows(3, seed=8)
    for row in rows:
        row["passages"]["is_selected"] = [0] * len(row["passages"]["is_selected"])
    with pytest.raises(msmarco.DataSourceError, match=r"An evaluation split needs a row whose query has a word and at least one selected passage \(is_selected 1\)\.$"):
        msmarco.validate_rows(rows, "validation", for_training=False)
    with pytest.raises(msmarco.DataSourceError, match="with at least one selected and one unselected passage"):
        msmarco.validate_rows(rows, "train")
    for row in rows:  # all selected: a training split has no row, an evaluation split scores each
        row["passages"]["is_selected"] = [1] * len(row["passages"]["is_selected"])
    assert len(msmarco.validate_rows(rows, "validation", for_training=False)[0]) == 3


def test_an_evaluation_splits_skipped_rows_are_a_warning_naming_the_first_of_each_reason(tmp_path, caplog):
    """evaluate.py and index.py (load_split_rows) said skipped rows at INFO with their counts alone: the row or line to
    look at was kept in the report but never said (train.py's report has it, and says skipped rows as a warning)."""
    from two_tower.retrieval.corpus import load_split_rows

    good = make_rows(3, seed=7)
    broken = copy.deepcopy(good[1])
    broken["passages"]["is_selected"] = broken["passages"]["is_selected"][:-1]
    lines = [json.dumps(good[0]).encode(), b"\xff not utf-8", json.dumps(broken).encode(), json.dumps(good[1]).encode(), json.dumps(good[2]).encode()]
    (tmp_path / "validation-00000-of-00001.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level("INFO", logger="two_tower"):
        rows = load_split_rows("validation", str(tmp_path), "unused", "unused")
    assert [r.query for r in rows] == [g["query"] for g in good]
    record = next(r for r in caplog.records if "kept 3/5 rows" in r.getMessage())
    assert record.levelname == "WARNING"
    assert record.getMessage() == (f"[validation] kept 3/5 rows; skipped by reason: length_mismatch: 1, not_utf8: 1 (first at row 3 "
                                   f"(length_mismatch), {tmp_path / 'validation-00000-of-00001.jsonl'} line 2 (not_utf8))")


def test_a_row_repeated_without_a_query_id_is_skipped_and_ids_are_compared_as_text():
    """Rows without a query_id were never compared: a shard copied twice kept every query twice (each counted twice in
    every metric); a jsonl writing one id as 123 and as "123" kept both (a probe)."""
    rows = make_rows(4, seed=5)
    for row in rows:
        row.pop("query_id", None)
    other = copy.deepcopy(rows[1])
    other["passages"]["is_selected"] = other["passages"]["is_selected"][::-1]  # the same query, other labels: kept
    kept, report = msmarco.validate_rows([*rows, *copy.deepcopy(rows), other], "validation", for_training=False)
    assert len(kept) == 5 and dict(report.skipped) == {"duplicate_row": 4} and report.first["duplicate_row"] == "row 5"
    numbered = make_rows(2, seed=6)
    numbered[0]["query_id"], numbered[1]["query_id"] = 123, "123"
    kept, report = msmarco.validate_rows(numbered, "train")
    assert len(kept) == 1 and dict(report.skipped) == {"duplicate_query_id": 1}
    # a copy that lost its query_id beside the row that kept it, either first: the same row again (a helper's probe:
    # 60 validation rows and the same 60 without ids were 120 queries); two ids on one content are two queries
    with_ids = make_rows(3, seed=7)
    for i, row in enumerate(with_ids):
        row["query_id"] = 1000 + i
    without = copy.deepcopy(with_ids)
    for row in without:
        row.pop("query_id")
    for order in ([*with_ids, *without], [*without, *with_ids]):
        kept, report = msmarco.validate_rows(copy.deepcopy(order), "validation", for_training=False)
        assert len(kept) == 3 and dict(report.skipped) == {"duplicate_row": 3}
    other_id = copy.deepcopy(with_ids[0])
    other_id["query_id"] = 2000
    kept, report = msmarco.validate_rows([*copy.deepcopy(with_ids), other_id], "validation", for_training=False)
    assert len(kept) == 4 and not report.skipped
    # whichever comes first, a copy without an id is one row with the first id, and another id another query (a review:
    # an id-less row first made every later id a duplicate)
    for order in ([without[0], with_ids[0], other_id], [with_ids[0], without[0], other_id], [with_ids[0], other_id, without[0]]):
        kept, report = msmarco.validate_rows(copy.deepcopy(order), "validation", for_training=False)
        assert len(kept) == 2 and dict(report.skipped) == {"duplicate_row": 1}, order


def test_a_labelled_row_of_a_query_replaces_its_unlabelled_row_kept_for_its_passages():
    """An evaluation split keeps a row with no selected passage for its passages; a later labelled row of the same
    query_id was skipped as its duplicate, so the query was not scored (a helper's probe: 59 of 60 evaluated). Now the
    labelled row takes its place and the unlabelled one is the duplicate named; a labelled row first stays as it was."""
    rows = make_rows(3, seed=1)
    for i, row in enumerate(rows):
        row["query_id"] = i
    unlabelled = copy.deepcopy(rows[1])
    unlabelled["passages"]["is_selected"] = [0] * len(unlabelled["passages"]["is_selected"])
    for order, first in (([rows[0], unlabelled, rows[1], rows[2]], "row 2"), ([rows[0], rows[1], unlabelled, rows[2]], "row 3")):
        kept, report = msmarco.validate_rows(copy.deepcopy(order), "validation", for_training=False)
        assert [any(r.selected) for r in kept] == [True, True, True] and [r.query for r in kept] == [r["query"].strip() for r in rows]
        assert dict(report.skipped) == {"duplicate_query_id": 1} and report.first == {"duplicate_query_id": first} and not report.corpus_only
    # ... unless the labelled row is already kept without an id: then it is that row again (a review: kept twice)
    labelled_no_id = copy.deepcopy(rows[1])
    labelled_no_id.pop("query_id")
    kept, report = msmarco.validate_rows(copy.deepcopy([unlabelled, labelled_no_id, rows[1]]), "validation", for_training=False)
    assert [any(r.selected) for r in kept] == [False, True] and dict(report.skipped) == {"duplicate_row": 1}


def test_evaluation_split_keeps_corpus_only_rows():
    good = make_rows(3, seed=2)
    bad = bad_rows(good[0])
    rows = good + bad["no_selected_passage"] + bad["empty_query"]
    kept, report = msmarco.validate_rows(rows, "validation", for_training=False)
    assert len(kept) == 4  # the row with no selected passage still adds its passages to the corpus
    assert report.skipped == {"empty_query": 1} and report.corpus_only == {"no_selected_passage": 1}
    assert report.kept + sum(report.skipped.values()) == report.total  # a kept row is not also counted as skipped
    # a query without a word: its passages stay in the ranked corpus, and it is not scored (a probe: validation scored
    # an arbitrary ranking for it; a review: dropping the row dropped its passages from everyone's corpus)
    wordless = bad["query_without_a_word"][:1]
    kept, report = msmarco.validate_rows(good + wordless, "validation", for_training=False)
    assert len(kept) == 4 and report.corpus_only == {"query_without_a_word": 1} and not any(kept[3].selected)
    assert kept[3].passages == [t.strip() for t in wordless[0]["passages"]["passage_text"]]


def test_split_with_nothing_usable_fails_clearly():
    bad = bad_rows(make_rows(1)[0])
    with pytest.raises(msmarco.DataSourceError, match="No usable rows in the 'train' split"):
        msmarco.validate_rows(bad["empty_passage"] + bad["no_selected_passage"], "train")


def write_shards(folder, rows_by_split):
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        datasets.Dataset.from_list(rows).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return folder


def test_local_folder_of_parquet_shards_loads(tmp_path):
    folder = write_shards(tmp_path / "marco", {"train": make_rows(20), "validation": make_rows(5, seed=3)})
    ds = msmarco.load_split("validation", str(folder))
    assert len(ds) == 5 and set(ds.column_names) >= {"query", "passages"}
    # a split name is a name: "*" read every split (train and validation rows trained on; a probe)
    assert not msmarco.has_local_split(folder, "*") and msmarco.has_local_split(folder, "train")
    with pytest.raises(msmarco.DataSourceError, match=r"No '\*-\*.parquet'"):
        msmarco.local_split_files(folder, "*")
    assert ds[0]["passages"]["passage_text"]


def test_local_errors_name_the_problem(tmp_path):
    with pytest.raises(msmarco.DataSourceError, match="does not exist"):
        msmarco.load_split("train", str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(msmarco.DataSourceError, match="No 'train-\\*.parquet'"):
        msmarco.load_split("train", str(tmp_path / "empty"))
    folder = tmp_path / "wrong"
    folder.mkdir()
    datasets.Dataset.from_list([{"question": "x"}]).to_parquet(str(folder / "train-0.parquet"))
    with pytest.raises(msmarco.DataSourceError, match="missing required column"):
        msmarco.load_split("train", str(folder))
    # an empty split file: said so, not 'missing required column(s) ... found []' (a probe)
    (tmp_path / "hollow").mkdir()
    (tmp_path / "hollow" / "validation-0.jsonl").write_text("")
    with pytest.raises(msmarco.DataSourceError, match=r"validation-0.jsonl: the 'validation' split's files hold no row"):
        msmarco.load_split("validation", str(tmp_path / "hollow"))
    # a .json shard written as one JSON array (json.dump of the rows): said so, not 'missing columns ... found []'
    array = tmp_path / "array"
    array.mkdir()
    (array / "train-0.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in make_rows(3)) + "\n]\n")
    with pytest.raises(msmarco.DataSourceError, match=r"train-0.json: one JSON array; a split file holds one JSON object a line"):
        msmarco.load_split("train", str(array))


def test_a_shard_replaced_by_another_with_the_same_mtime_is_read_again(tmp_path):
    """datasets keys its cache by path and mtime (cp -p, rsync -t keep it): the old rows came back, and the
    tokenized-data cache, keyed by that fingerprint, with them. Row counts and sizes now tell them apart."""
    import os

    folder = tmp_path / "marco"
    folder.mkdir()
    shard = folder / "train-00000-of-00001.parquet"
    datasets.Dataset.from_list(make_rows(10, seed=1)).to_parquet(str(shard))
    stamp = shard.stat().st_mtime_ns
    first = msmarco.load_split("train", str(folder))
    datasets.Dataset.from_list(make_rows(6, seed=2)).to_parquet(str(shard))
    os.utime(shard, ns=(stamp, stamp))
    second = msmarco.load_split("train", str(folder))
    assert (len(first), len(second)) == (10, 6) and second[0]["query"] == make_rows(6, seed=2)[0]["query"]
    assert second._fingerprint != first._fingerprint


def test_a_shard_edited_in_place_with_the_same_size_and_mtime_is_read_again(tmp_path):
    """The same row count and size too (a probe: an uncompressed shard edited in place, touch -r): datasets' cache,
    keyed by path and mtime, gave the old rows even after TWO_TOWER_CACHE was cleared. Its cache now sits in a
    folder named by the shards' bytes, which is also the split's fingerprint."""
    import os

    import pyarrow as pa

    folder = tmp_path / "marco"
    folder.mkdir()
    shard = folder / "train-00000-of-00001.parquet"
    rows = make_rows(8, seed=1)
    rows[0]["query"] = "what is a marathon"
    pq.write_table(pa.Table.from_pylist(rows), shard, compression="none", use_dictionary=False)
    stamp, size = shard.stat().st_mtime_ns, shard.stat().st_size
    first = msmarco.load_split("train", str(folder))
    data = shard.read_bytes()
    assert data.count(b"what is a marathon") >= 1  # the value, and the column statistics
    shard.write_bytes(data.replace(b"what is a marathon", b"zqzq is a marathon"))
    os.utime(shard, ns=(stamp, stamp))
    assert shard.stat().st_size == size
    second = msmarco.load_split("train", str(folder))
    assert first[0]["query"] == "what is a marathon" and second[0]["query"] == "zqzq is a marathon"
    assert second._fingerprint != first._fingerprint


def test_a_split_reads_its_own_shards_only_and_leaves_out_empty_ones(tmp_path, caplog):
    """train* read train_heldout-*.parquet into train, and val* read validation-* into val (a probe); a 0-row shard
    made datasets fail on every file ('BatchSize must be greater than 0')."""
    folder = tmp_path / "marco"
    folder.mkdir()
    datasets.Dataset.from_list(make_rows(5, seed=1)).to_parquet(str(folder / "train-00000-of-00002.parquet"))
    datasets.Dataset.from_list(make_rows(3, seed=2)).to_parquet(str(folder / "train_heldout-00000-of-00001.parquet"))
    datasets.Dataset.from_list(make_rows(4, seed=3)).to_parquet(str(folder / "val-00000-of-00001.parquet"))
    datasets.Dataset.from_list(make_rows(2, seed=4)).to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    pq.write_table(pq.read_table(folder / "train-00000-of-00002.parquet").slice(0, 0), folder / "train-00001-of-00002.parquet")
    with caplog.at_level("WARNING"):
        assert len(msmarco.load_split("train", str(folder))) == 5
    assert "1 shard(s) of the 'train' split hold no rows, left out: train-00001-of-00002.parquet" in caplog.text
    assert len(msmarco.load_split("train_heldout", str(folder))) == 3
    assert (len(msmarco.load_split("val", str(folder))), len(msmarco.load_split("validation", str(folder)))) == (4, 2)


def test_parquet_shards_of_one_split_must_share_a_schema(tmp_path):
    """datasets casts every shard to the first one's schema: is_selected as strings ("0"/"1") in one shard
    was read as numbers after an int shard (a guess the rules forbid) and refused whole before it."""
    numbers = make_rows(6, seed=1)
    strings = copy.deepcopy(make_rows(6, seed=2))
    for row in strings:
        row["passages"]["is_selected"] = [str(v) for v in row["passages"]["is_selected"]]
    for order in ((numbers, strings), (strings, numbers)):
        folder = tmp_path / f"mixed{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for i, rows in enumerate(order):
            datasets.Dataset.from_list(rows).to_parquet(str(folder / f"train-0000{i}-of-00002.parquet"))
        with pytest.raises(msmarco.DataSourceError, match=r"train-00001-of-00002.parquet: its schema differs from .*train-00000-of-00002.parquet's \(field passages"):
            msmarco.load_split("train", str(folder))
    folder = tmp_path / "same"
    folder.mkdir()
    for i in range(2):
        datasets.Dataset.from_list(make_rows(6, seed=i)).to_parquet(str(folder / f"train-0000{i}-of-00002.parquet"))
    assert len(msmarco.load_split("train", str(folder))) == 12


def test_unreachable_hub_fails_at_once_naming_alternatives(monkeypatch):
    import time

    monkeypatch.setattr(msmarco, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(msmarco.DataSourceError) as err:
        msmarco.load_split("validation", None, hub_name="two-tower-tests/not-a-dataset")
    assert time.perf_counter() - start < 30
    assert "data.path=DIR" in str(err.value) and "data=synthetic" in str(err.value)


def test_tokenizer_words_punctuation_and_vocabulary():
    assert split_words("Don't STOP: e-mail 3.5 U.S.") == ["don't", "stop", "e-mail", "3", "5", "u", "s"]
    assert split_words("a, b!", keep_punctuation=True) == ["a", ",", "b", "!"]
    tok = Tokenizer.build(["cat cat dog", "cat fish"], min_freq=2, pretrained_words={"fish", "bird"}, max_query_len=2)
    assert tok.words[:2] == ["<pad>", "<unk>"]
    assert set(tok.words[2:]) == {"cat", "fish"}  # dog: rare and no vector; bird: not in the training text
    assert tok.encode("cat zebra dog", tok.max_query_len) == [tok.index["cat"], tok.hashed_id("zebra")]
    assert tok.hashed_id("zebra") >= tok.vocab_size
    assert tok.encode("", 5) == [UNK_ID] and tok.encode("?!", 5) == [UNK_ID]
    assert Tokenizer.from_state_dict(tok.state_dict()).words == tok.words
    assert PAD_ID == 0


def test_tokenizer_split_hyphens_is_saved_and_older_tokenizers_keep_hyphens():
    text = "X-ray's well-known e-mail, don't"
    assert split_words(text, split_hyphens=True) == ["x", "ray's", "well", "known", "e", "mail", "don't"]
    assert split_words(text, keep_punctuation=True, split_hyphens=True) == ["x", "-", "ray's", "well", "-", "known", "e", "-", "mail", ",", "don't"]
    tok = Tokenizer.build(["x-ray x-ray scan"], min_freq=1, split_hyphens=True)
    assert set(tok.words[2:]) == {"x", "ray", "scan"}
    assert tok.encode("x-ray", 8) == [tok.index["x"], tok.index["ray"]]  # the same ids as "x ray": they match
    loaded = Tokenizer.from_state_dict(tok.state_dict())
    assert loaded.split_hyphens and loaded.encode("x-ray", 8) == tok.encode("x-ray", 8)
    # A tokenizer saved without the key (before the setting existed) keeps hyphenated words whole, and
    # its fingerprint (cache keys, checkpoints) is unchanged.
    old = Tokenizer.build(["x-ray x-ray scan"], min_freq=1)
    assert "split_hyphens" not in old.state_dict() and not Tokenizer.from_state_dict(old.state_dict()).split_hyphens
    assert old.encode("x-ray", 8) == [old.index["x-ray"]]


def datamodule(tmp_path, negatives=None, **kw):
    return TwoTowerDataModule(
        embeddings=RandomEmbeddings(dim=8),
        negatives=negatives or InBatchNegatives(),
        synthetic_rows={"train_rows": 200, "val_rows": 40, "seed": 0},
        cache_dir=str(tmp_path / "cache"),
        batch_size=16,
        **kw,
    )


def test_tokenization_is_cached(tmp_path, caplog, monkeypatch):
    first = datamodule(tmp_path)
    first.setup("fit")
    assert first.cache_hit is False
    # A second run must not tokenize again: make tokenizing impossible and check it still loads.
    monkeypatch.setattr(PreparedSplit, "from_rows", classmethod(lambda *a, **k: pytest.fail("re-tokenized")))
    monkeypatch.setattr(Tokenizer, "build", classmethod(lambda *a, **k: pytest.fail("rebuilt vocabulary")))
    with caplog.at_level(logging.INFO):
        second = datamodule(tmp_path)
        second.setup("fit")
    assert second.cache_hit is True
    assert "cache hit" in caplog.text
    np.testing.assert_array_equal(second.train.query_tokens.values, first.train.query_tokens.values)
    assert second.tokenizer.words == first.tokenizer.words
    # Different tokenizer settings are a different cache entry.
    monkeypatch.undo()
    third = datamodule(tmp_path, tokenizer={"max_passage_len": 7})
    third.setup("fit")
    assert third.cache_hit is False and third.train.passage_tokens.lengths.max() <= 7


def test_bad_rows_are_counted_in_the_prepared_data(tmp_path, caplog):
    good = make_rows(50, seed=4)
    bad = bad_rows(good[0])
    folder = write_shards(tmp_path / "marco", {"train": good + bad["length_mismatch"] + bad["empty_query"], "validation": make_rows(10, seed=5)})
    dm = TwoTowerDataModule(RandomEmbeddings(dim=8), InBatchNegatives(), path=str(folder), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level("INFO", logger="two_tower"):
        dm.setup("fit")
    assert dm.meta["reports"]["train"] == {"total": 52, "kept": 50, "skipped": {"length_mismatch": 1, "empty_query": 1},
                                           "first_skipped": {"length_mismatch": "row 51", "empty_query": "row 52"}}
    levels = {r.message.split("]")[0]: r.levelname for r in caplog.records if "] rows:" in r.message}
    assert levels == {"[train": "WARNING", "[validation": "INFO"}  # skipped rows were an INFO line like any other
    assert dm.train.num_queries == 50


def test_validation_queries_repeating_training_queries_are_a_warning_except_synthetic(tmp_path, caplog):
    train = make_rows(30, seed=4)
    val = make_rows(10, seed=5)
    val[0]["query"], val[1]["query"] = train[3]["query"].upper(), "  " + train[7]["query"]  # case and spaces ignored
    val[2]["passages"]["passage_text"][0] = train[5]["passages"]["passage_text"][1]  # a training passage in validation
    folder = write_shards(tmp_path / "marco", {"train": train, "validation": val})
    dm = TwoTowerDataModule(RandomEmbeddings(dim=8), InBatchNegatives(), path=str(folder), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert dm.val_train_overlap == 2
    assert [r.levelname for r in caplog.records if "also appear in the training split" in r.message] == ["WARNING"]
    # passages shared with training are said in an info line (a probe: nothing said so; marco7k shares 4,905 of 5,054)
    shared = [r.getMessage() for r in caplog.records if "validation passages are training passages too" in r.getMessage()]
    expected = sum(t in set(dm.train.passage_texts) for t in dm.val.passage_texts)
    assert dm.check_passage_overlap() == expected
    assert expected >= 1 and len(shared) == 1 and shared[0].startswith(f"{expected} of {dm.val.num_passages} validation passages")
    caplog.clear()
    synthetic = TwoTowerDataModule(RandomEmbeddings(dim=8), InBatchNegatives(), synthetic_rows={"train_rows": 2000, "val_rows": 300, "num_topics": 200, "seed": 0}, cache_dir=str(tmp_path / "cache"))
    with caplog.at_level("INFO"):  # data=synthetic's sizes
        synthetic.setup("fit")
    assert synthetic.val_train_overlap > 0 and not [r for r in caplog.records if r.levelname == "WARNING"]


def test_test_queries_repeating_training_or_validation_queries_are_a_warning(tmp_path, caplog):
    """Only validation was compared with training: a test split of training rows (or of validation's) was scored, the
    number to report, without a word (a helper's probe). Now the counts are a warning; and a test split named as the
    training or validation split is refused (data.test_split=validation scored the selection's own rows)."""
    from two_tower.core.errors import ConfigError
    from tests.conftest import compose_train
    from two_tower.training.config import validate_train_config

    train, val, test = make_rows(30, seed=4), make_rows(10, seed=5), make_rows(8, seed=6)
    test[0]["query"], test[1]["query"], test[2]["query"] = train[3]["query"], " " + train[4]["query"].upper(), val[0]["query"]
    folder = write_shards(tmp_path / "marco", {"train": train, "validation": val, "test": test})
    dm = TwoTowerDataModule(RandomEmbeddings(dim=8), InBatchNegatives(), path=str(folder), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert dm.test is not None and dm.test_overlap == (2, 1)
    warned = [r.getMessage() for r in caplog.records if "test queries also appear" in r.getMessage()]
    assert warned == [warned[0]] and warned[0].startswith("2 of 8 test queries also appear in the training split and 1 in the validation split")
    for split, which in (("validation", "the validation split"), ("train", "the training split")):
        with pytest.raises(ConfigError, match=f"data.test_split={split} is {which}"):
            validate_train_config(compose_train(tmp_path, ["data=local", f"data.path={folder}", f"data.test_split={split}"]))
    validate_train_config(compose_train(tmp_path, ["data=msmarco", "data.val_split=test"]))  # the Hub: no test split is read


def test_sampler_is_deterministic_covers_every_row_and_buckets(tmp_path):
    dm = datamodule(tmp_path, negatives=RandomNegatives(per_query=2))
    dm.setup("fit")
    sampler = TripletBatchSampler(dm.train, dm.negatives, batch_size=16, seed=3, bucket_batches=4)
    epoch0 = sampler.plans()
    assert [p.tolist() for p in epoch0] == [p.tolist() for p in sampler.plans()]
    sampler.set_epoch(1)
    assert [p.tolist() for p in epoch0] != [p.tolist() for p in sampler.plans()]
    rows = np.concatenate([p[:, 0] for p in epoch0])
    assert sorted(rows.tolist()) == list(range(dm.train.num_queries))
    negatives = dm.train.negatives()
    for plan in epoch0:
        for row, pos, *negs in plan.tolist():
            assert pos in dm.train.positives[row]
            assert all(n in negatives[row] for n in negs)
    # Bucketing: padded tokens are a smaller share than with random batches.
    def padding_share(plans):
        lengths = dm.train.passage_tokens.lengths
        real = sum(lengths[p[:, 1]].sum() for p in plans)
        padded = sum(lengths[p[:, 1]].max() * len(p) for p in plans)
        return 1 - real / padded

    unbucketed = TripletBatchSampler(dm.train, dm.negatives, batch_size=16, seed=3, bucket_batches=0).plans()
    assert padding_share(epoch0) < padding_share(unbucketed)
    # Two ranks split the batches between them.
    shards = [TripletBatchSampler(dm.train, dm.negatives, 16, seed=3, rank=r, world_size=2).plans() for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(epoch0) // 2


def test_batch_deduplicates_passages_and_marks_selected(tmp_path):
    dm = datamodule(tmp_path)
    dm.setup("fit")
    split = dm.train
    pos0 = int(split.positives[0][0])
    # Rows 0 and 1 both bring passage pos0 (row 1 as its explicit negative): it is encoded once.
    neg0, pos1 = int(split.negatives()[0][0]), int(split.positives[1][0])
    plan = np.array([[0, pos0, neg0], [1, pos1, pos0]])
    batch = TripletBatches(split)[plan]
    pids = batch["passage_pids"].tolist()
    assert sorted(pids) == sorted({pos0, neg0, pos1})
    assert pids[batch["positive_column"][0]] == pos0
    assert pids[batch["negative_columns"][1, 0]] == pos0
    assert batch["query_ids"].shape[0] == 2 and (batch["passage_lengths"] > 0).all()


def test_word2vec_is_trained_once_cached_and_centered(tmp_path, caplog):
    from two_tower.data.embeddings import Word2VecEmbeddings

    texts = [" ".join(r["passages"]["passage_text"]) for r in make_rows(100, seed=1)]
    w2v = Word2VecEmbeddings(dim=8, epochs=1, workers=1, cache_dir=str(tmp_path))
    vectors = w2v.load(texts)
    assert vectors.dim == 8 and len(vectors.words) > 50
    np.testing.assert_allclose(vectors.vectors.mean(axis=0), 0, atol=1e-5)
    with caplog.at_level(logging.INFO):
        again = w2v.load(texts)
    assert "cache hit" in caplog.text
    np.testing.assert_array_equal(again.vectors, vectors.vectors)


# ---------------------------------------------------------------------------------- preparation at size
def test_encode_ragged_equals_per_text_encoding_in_one_or_two_processes(monkeypatch):
    import two_tower.data.tokenizer as tokenizer_module

    rows = make_rows(30, seed=6, passage_words=(40, 80))
    texts = [p for r in rows for p in r["passages"]["passage_text"]] + ["", "xj-17b unseen words"]
    tok = Tokenizer.build(texts[:100], min_freq=2, max_passage_len=50)
    want = tok.encode_passages(texts)
    monkeypatch.setattr(tokenizer_module, "_ENCODE_CHUNK", 37)  # several chunks, so several worker tasks
    for workers in (1, 2):
        values, offsets = tok.encode_ragged(texts, tok.max_passage_len, workers=workers)
        assert values.dtype == np.int32 and offsets.dtype == np.int64
        assert [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))] == want
    assert any(len(w) == 50 for w in want) and want[-2] == [UNK_ID]  # truncation and an empty text were exercised


def test_synthetic_rows_stream_in_ranges_as_the_list_slices():
    from two_tower.data.datamodule import _RowStream
    from two_tower.data.synthetic import iter_rows

    rows = make_rows(50, seed=2)
    stream = _RowStream(lambda: iter_rows(50, seed=2))
    assert list(stream.rows(0, 30)) == rows[:30]
    assert list(stream.rows(30, 40)) == rows[30:40]
    first = iter(stream.rows(40, 50))
    assert next(first) == rows[40]  # a range left unfinished (a row limit) ...
    assert list(stream.rows(45, 50)) == rows[45:]  # ... and the next one starts where it should
    assert list(stream.rows(5, 8)) == rows[5:8]  # going back restarts the stream


def test_passage_words_setting_makes_longer_passages(tmp_path):
    lengths = {}
    for words in ((12, 40), (40, 80)):
        dm = TwoTowerDataModule(
            RandomEmbeddings(dim=8), InBatchNegatives(), synthetic_rows={"train_rows": 40, "val_rows": 10, "seed": 0, "passage_words": list(words)},
            cache_dir=str(tmp_path), tokenizer={"min_freq": 1, "max_passage_len": 200},
        )
        dm.setup("fit")
        lengths[words] = dm.train.passage_tokens.lengths
    # filler words in [low, high) plus 3 keywords; the text ends in a full stop (not a token)
    assert lengths[(12, 40)].min() >= 15 and lengths[(12, 40)].max() <= 42
    assert lengths[(40, 80)].min() >= 43 and lengths[(40, 80)].max() <= 82


def test_too_many_synthetic_topics_is_one_error_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, TINY

    cmd = [sys.executable, "train.py", *TINY, "data.synthetic_rows.num_topics=40000", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the synthetic vocabulary has 168181 words, fewer than the 200000 asked for") and "num_topics" in last
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"num_topics": 0}, "data.synthetic_rows.num_topics=0: must be a whole number >= 4"),
        ({"keywords_per_topic": 2}, "data.synthetic_rows.keywords_per_topic=2: must be a whole number >= 3"),
        ({"query_words": 6}, "data.synthetic_rows.query_words=6: at most keywords_per_topic (5)"),
        ({"passage_words": [5, 2]}, "data.synthetic_rows.passage_words=[5, 2]: must be [low, high) word counts"),
        ({"query_filler": [3]}, "data.synthetic_rows.query_filler=[3]: must be [low, high) word counts"),
    ],
)
def test_synthetic_row_settings_are_checked_before_generating(spec, message):
    from two_tower.data.synthetic import check_synthetic_rows, make_rows

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_synthetic_rows(spec)
    check_synthetic_rows({"num_topics": 4, "keywords_per_topic": 3, "query_words": 3, "passage_words": [0, 1], "query_filler": [2, 3]})
    assert len(make_rows(5, num_topics=4, keywords_per_topic=3, query_words=3, passage_words=(0, 1), query_filler=(2, 3))) == 5


def test_eval_batches_give_every_process_a_batch_and_cover_each_item_once():
    """300 validation queries in one 512-row batch left the second of 2 processes with an empty loader
    (Lightning stops the run); batches shrink until every rank has one."""
    from two_tower.data.batches import LengthSortedBatches

    lengths = np.random.default_rng(0).integers(1, 30, size=300)
    for world in (1, 2, 3):
        ranks = [LengthSortedBatches(lengths, 512, rank, world) for rank in range(world)]
        assert all(len(r) >= 1 for r in ranks)
        seen = np.concatenate([b for r in ranks for b in r])
        assert sorted(seen.tolist()) == list(range(300))
    assert [len(b) for b in LengthSortedBatches(lengths, 128, 0, 1)] == [128, 128, 44]  # one process: as before


@pytest.mark.parametrize("source", ["random", "file"])
def test_a_seed_draws_the_same_rows_whichever_seed_built_the_cache(tmp_path, source):
    """The tokenization cache is shared by every seed: it holds no seeded numbers. Seed 2 on a cache that
    seed 1 built starts from the matrix seed 2 gets on an empty cache (it got seed 1's rows before), and
    words with a pre-trained vector keep it under every seed."""
    from two_tower.data.embeddings import FileEmbeddings

    vectors = tmp_path / "vectors.txt"
    words = ["the", "of", "and", "was", "that", "floor"]  # words of the synthetic rows; the others are drawn
    vectors.write_text("".join(f"{w} " + " ".join(str((i * 7 + j) % 5 / 10) for j in range(8)) + "\n" for i, w in enumerate(words)))

    def matrix(cache: str, seed: int):
        embeddings = RandomEmbeddings(dim=8) if source == "random" else FileEmbeddings(str(vectors), dim=8)
        dm = TwoTowerDataModule(embeddings=embeddings, negatives=InBatchNegatives(), synthetic_rows={"train_rows": 200, "val_rows": 40, "seed": 0},
                                cache_dir=str(tmp_path / cache), batch_size=16, seed=seed)
        dm.setup("fit")
        return dm.embedding_matrix, dm.tokenizer

    first, _ = matrix("shared", 1)
    warm, tokenizer = matrix("shared", 2)  # a cache hit: built by seed 1
    cold, _ = matrix("fresh", 2)
    np.testing.assert_array_equal(warm, cold)
    assert not np.array_equal(first, warm)
    assert np.all(first[0] == 0) and np.all(warm[0] == 0)  # PAD
    if source == "file":
        known = [tokenizer.index[w] for w in words if w in tokenizer.index]
        assert known and np.array_equal(first[known], warm[known])


def test_a_file_of_another_width_is_refused_also_on_a_cache_hit(tmp_path):
    """embeddings=file embeddings.dim=8 on 4-d vectors: refused on a fresh cache, and also after a run of the
    same file without dim built the cache (that entry was served before, the setting silently ignored)."""
    from two_tower.data.embeddings import EmbeddingsError, FileEmbeddings

    vectors = tmp_path / "v.txt"
    vectors.write_text("".join(f"{w} 0.1 0.2 0.3 0.4\n" for w in ["the", "of", "and", "was"]))

    def setup(dim):
        dm = TwoTowerDataModule(embeddings=FileEmbeddings(str(vectors), dim=dim), negatives=InBatchNegatives(),
                                synthetic_rows={"train_rows": 200, "val_rows": 40, "seed": 0}, cache_dir=str(tmp_path / "cache"), batch_size=16)
        dm.setup("fit")
        return dm

    assert setup(None).embedding_matrix.shape[1] == 4
    with pytest.raises(EmbeddingsError, match="vectors have 4 dims, config says dim=8"):
        setup(8)


def test_a_damaged_parquet_shard_and_a_missing_validation_split_are_one_line_each(tmp_path, capsys):
    """A truncated parquet shard: one line naming the file (datasets logged it twice at ERROR before our
    line); a folder with a train split only: the line says so (it cited train-00000-of-00001.parquet as the
    expected name, which is what the folder held)."""
    folder = write_shards(tmp_path / "marco", {"train": make_rows(20), "validation": make_rows(5, seed=3)})
    shard = folder / "validation-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(msmarco.DataSourceError, match=r"validation-00000-of-00001.parquet: not a readable parquet file \(ArrowInvalid"):
        msmarco.load_split("validation", str(folder))
    assert "Failed to read schema" not in capsys.readouterr().err
    shard.unlink()
    with pytest.raises(msmarco.DataSourceError, match="it has a train split but no validation split"):
        msmarco.load_split("validation", str(folder))


def test_shards_of_one_split_in_several_folders_are_a_warning(tmp_path, caplog):
    """A train-*.parquet in an old/ subfolder was merged into the split without a word (a probe: 200 + 100 rows)."""
    folder = write_shards(tmp_path / "marco", {"train": make_rows(20, seed=4)})
    (folder / "old").mkdir()
    (folder / "train-00000-of-00001.parquet").rename(folder / "old" / "train-00000-of-00001.parquet")
    write_shards(folder, {"train": make_rows(10, seed=6)})
    with caplog.at_level("WARNING", logger="two_tower"):
        files = msmarco.local_split_files(folder, "train")
    assert len(files) == 2 and "the 'train' split's 2 files are in 2 folders (., old), all read as one split" in caplog.text
    caplog.clear()
    msmarco.local_split_files(folder / "old", "train")
    assert "folders" not in caplog.text


def test_explicit_negatives_are_drawn_without_replacement_and_uniformly():
    """per_query=3 gave a row of 3+ candidates the same negative twice (1,525 of marco7k's 4,980 rows: a probe).
    Now k values from a row of k or more are distinct, every value as likely (counted over many draws), a shorter
    row gives each of its values before any again, and k=1 draws exactly as before."""
    from two_tower.core.ragged import Ragged
    from two_tower.data.sampling import sample_from

    pool = Ragged.from_lists([[10, 11, 12, 13, 14], [20, 21, 22], [30, 31], [40]])
    rows = np.arange(4)
    rng = np.random.default_rng(0)
    counts = {v: 0 for v in range(10, 15)}
    for _ in range(4000):
        drawn = sample_from(pool, rows, rng, 3)
        assert drawn.shape == (4, 3)
        assert len(set(drawn[0])) == 3 and sorted(drawn[1]) == [20, 21, 22]
        assert set(drawn[2][:2]) == {30, 31} and drawn[2][2] == drawn[2][0] and drawn[3].tolist() == [40, 40, 40]
        for v in drawn[0]:
            counts[int(v)] += 1
    # each of the 5 values is in 3/5 of the draws: 2,400 of 4,000 (binomial sd ~31)
    assert all(abs(c - 2400) < 200 for c in counts.values()), counts
    # k=1: one uniform number a row, as before this change (the recipes' per_query=1 draws the same negatives)
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    old = pool.values[pool.offsets[rows] + (b.random((4, 1)) * pool.lengths[rows][:, None]).astype(np.int64)[:, 0]]
    assert sample_from(pool, rows, a, 1)[:, 0].tolist() == old.tolist()


def test_a_shard_that_is_no_file_is_named_and_a_missing_shard_is_said(tmp_path, caplog):
    """A shard's name on a link to nothing (its disk not mounted) or on a folder was left out without a word, and so was
    a shard that hub-style names say exists (validation-00000-of-00002 alone): half the split evaluated as all of it (a probe)."""
    import os

    folder = tmp_path / "marco"
    folder.mkdir()
    datasets.Dataset.from_list(make_rows(5, seed=1)).to_parquet(str(folder / "validation-00000-of-00002.parquet"))
    with caplog.at_level("WARNING"):
        assert len(msmarco.load_split("validation", str(folder))) == 5
    assert "the 'validation' split's shard names say it has 2 shards, and 1 of them are not in" in caplog.text and "(shard number 1)" in caplog.text
    os.symlink(tmp_path / "elsewhere.parquet", folder / "validation-00001-of-00002.parquet")
    with pytest.raises(msmarco.DataSourceError, match=r"validation-00001-of-00002.parquet: a shard of the 'validation' split that is a link to nothing$"):
        msmarco.load_split("validation", str(folder))
    (folder / "validation-00001-of-00002.parquet").unlink()
    (folder / "validation-00001-of-00002.parquet").mkdir()
    with pytest.raises(msmarco.DataSourceError, match=r"validation-00001-of-00002.parquet: a shard of the 'validation' split that is a folder$"):
        msmarco.load_split("validation", str(folder))


def test_a_jsonl_line_giving_a_key_twice_is_a_bad_row(tmp_path):
    """json.loads keeps the last of a repeated key: {"query": "a b c", "query": "d e f"} was the query "d e f", and a
    BEIR line {"_id": "dz", "_id": "d1"} the document d1, without a word (a probe). Such a line is skipped and counted
    (repeated_key), at any depth, by every jsonl reader."""
    from two_tower.data.jsonl import UnreadableRow, read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 1, "a": 2}\n{"b": {"c": 1, "c": 1}}\n[{"d": 1}, {"d": 2}]\n')
    rows = list(read_jsonl(path, numbered=True))
    assert rows[0] == (1, {"a": 1}) and rows[3] == (4, [{"d": 1}, {"d": 2}])
    assert [(n, r.reason) for n, r in rows[1:3]] == [(2, "repeated_key"), (3, "repeated_key")] and all(isinstance(r, UnreadableRow) for _, r in rows[1:3])
    good = json.dumps(make_rows(3, seed=0)[0])
    folder = tmp_path / "marco"
    folder.mkdir()
    (folder / "validation-00000-of-00001.jsonl").write_text(good + "\n" + good.replace('"query": ', '"query": "x y z", "query": ', 1) + "\n")
    _, report = msmarco.validate_rows(msmarco.load_split("validation", str(folder)), "validation", for_training=False)
    assert dict(report.skipped) == {"repeated_key": 1} and report.first["repeated_key"].endswith("validation-00000-of-00001.jsonl line 2")


def test_a_jsonl_line_nested_past_the_recursion_limit_is_a_bad_row(tmp_path):
    """A line of 100,000 nested arrays raised RecursionError, which no reader caught: a BEIR corpus.jsonl ended
    evaluate.py in a traceback, and a split shard or a corpus= file was refused whole for one line (a probe)."""
    from two_tower.data.jsonl import read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n' + "[" * 100_000 + "]" * 100_000 + '\n{"b": 2}\n')
    rows = list(read_jsonl(path, numbered=True))
    assert rows[0] == (1, {"a": 1}) and rows[2] == (3, {"b": 2}) and (rows[1][0], rows[1][1].reason) == (2, "nested_too_deep")


def test_a_split_of_empty_shards_is_one_error_without_a_warning_before_it(tmp_path, caplog):
    """Every shard of 0 rows: a warning that they were left out, then the error that every shard holds none (two lines
    saying one thing; a probe)."""
    folder = tmp_path / "marco"
    folder.mkdir()
    datasets.Dataset.from_list(make_rows(2, seed=1)).to_parquet(str(folder / "all.parquet"))
    pq.write_table(pq.read_table(folder / "all.parquet").slice(0, 0), folder / "validation-00000-of-00001.parquet")
    with caplog.at_level("WARNING"), pytest.raises(msmarco.DataSourceError, match="every shard of the 'validation' split holds no rows$"):
        msmarco.load_split("validation", str(folder))
    assert "hold no rows, left out" not in caplog.text


def test_a_ragged_array_of_more_than_2_31_values_goes_to_arrow_and_back(tmp_path):
    """A corpus of over 2**31 - 1 tokens: ``to_arrow`` cast its offsets to int32, which wrapped (ArrowInvalid 'Negative
    offsets in list array' when a split's cache was written, after its tokenizing). Now a large list (64-bit offsets)
    that ``from_arrow`` reads back. The values are a sparse file, memory-mapped: never read, so no 8 GB is held."""
    from two_tower.core.ragged import Ragged

    total = 2**31 + 8
    path = tmp_path / "values.bin"
    with open(path, "wb") as f:  # sparse: only the first row's bytes are written
        f.write(np.arange(1, 9, dtype=np.int32).tobytes())
        f.truncate(4 * total)
    values = np.memmap(path, dtype=np.int32, mode="r", shape=(total,))
    ragged = Ragged(values, np.array([0, 8, total], dtype=np.int64))
    array = ragged.to_arrow()
    assert len(array) == 2 and array.offsets[-1].as_py() == total
    back = Ragged.from_arrow(array)
    assert back.offsets.tolist() == [0, 8, total] and back[0].tolist() == list(range(1, 9))
    # a split of fewer values keeps a plain list (its cache files as they were)
    assert Ragged.from_lists([[1, 2], [3]]).to_arrow().type == pa.list_(pa.int32())
