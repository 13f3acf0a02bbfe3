"""The content cache (two_tower/core/cache.py): an entry is whole or treated as absent. A file deleted or
truncated after the entry was written makes it a miss (rebuilt), never a silently shorter input."""

import errno
import json
import logging

import numpy as np
import pytest

from two_tower.core.cache import FILES, ContentCache
from two_tower.core.errors import NotWritableError


def filled(cache: ContentCache, key: str) -> None:
    with cache.put(key) as tmp:
        (tmp / "a.npy").write_bytes(b"x" * 100)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("hello")


def test_an_entry_records_its_files_and_is_found_whole(tmp_path):
    cache = ContentCache(tmp_path, "kind")
    key = cache.key({"a": 1})
    filled(cache, key)
    assert cache.get(key) == cache.path(key)
    assert json.loads((cache.path(key) / FILES).read_text()) == {"a.npy": 100, "sub/b.txt": 5}


@pytest.mark.parametrize("damage", ["truncate", "delete", "listing"])
def test_a_damaged_entry_is_a_miss_and_is_set_aside(tmp_path, caplog, damage):
    cache = ContentCache(tmp_path, "kind")
    key = cache.key({"a": 1})
    filled(cache, key)
    entry = cache.path(key)
    if damage == "truncate":
        (entry / "a.npy").write_bytes(b"x" * 40)
    elif damage == "delete":
        (entry / "sub" / "b.txt").unlink()
    else:
        (entry / FILES).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
    assert "is damaged" in caplog.text and str(entry) in caplog.text
    assert not entry.exists() and list(cache.folder.iterdir()) == []  # set aside and removed
    filled(cache, key)  # the caller builds it again
    assert cache.get(key) == entry


def test_an_entry_written_before_the_file_list_is_trusted(tmp_path):
    cache = ContentCache(tmp_path, "kind")
    key = cache.key({"a": 1})
    filled(cache, key)
    (cache.path(key) / FILES).unlink()
    assert cache.get(key) == cache.path(key)


def test_a_full_disk_while_writing_an_entry_is_one_error_naming_the_cache(tmp_path):
    cache = ContentCache(tmp_path, "kind")
    with pytest.raises(NotWritableError, match=r"cache folder \(kind\) .*: no space left on the device"):
        with cache.put("k") as tmp:
            (tmp / "a").write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert cache.get("k") is None and list(cache.folder.iterdir()) == []  # nothing partial


def test_a_truncated_tokenized_split_is_prepared_again(tmp_path):
    """The probe's case: the train queries' arrow file cut at a record-batch boundary used to load as a
    shorter split (half the training queries, exit 0)."""
    from tests.test_data import datamodule

    first = datamodule(tmp_path)
    first.setup("fit")
    entry = first._cache_path
    arrow = sorted((entry / "train").rglob("*.arrow"))[0]
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    second = datamodule(tmp_path)
    second.setup("fit")
    assert second.cache_hit is False
    np.testing.assert_array_equal(second.train.query_tokens.values, first.train.query_tokens.values)
    assert second.train.num_queries == first.train.num_queries


def test_constructors_without_a_cache_folder_use_the_one_default_root(tmp_path, monkeypatch):
    """Five constructors defaulted to ./.cache (a folder in whatever the working directory was), not the
    default root the configs use ($TWO_TOWER_CACHE, else ~/.cache/two_tower)."""
    from two_tower.data.embeddings import DistilledEmbeddings, Word2VecEmbeddings
    from two_tower.data.teacher import SentenceTransformerTeacher
    from two_tower.retrieval.teacher import TeacherRetriever

    monkeypatch.setenv("TWO_TOWER_CACHE", str(tmp_path / "root"))
    built = [SentenceTransformerTeacher("m"), Word2VecEmbeddings(), DistilledEmbeddings()]
    assert [b.cache_dir for b in built] == [tmp_path / "root"] * 3
    assert TeacherRetriever().teacher.cache_dir == tmp_path / "root"


class FakeTeacherModel:
    """A sentence-transformers stand-in: each text's vector is its length and 1, normalised; counts its calls."""

    calls = 0

    def encode(self, texts, **kwargs):
        FakeTeacherModel.calls += 1
        out = np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def overwrite_same_size(file):
    """Other bytes of the file's size (a disk error, a copy gone wrong): the size check cannot see it."""
    file.write_bytes(b"\0" * file.stat().st_size)


def test_teacher_vectors_overwritten_at_their_size_are_encoded_again(tmp_path, monkeypatch, caplog):
    """A teacher cache entry whose vectors.npz holds other bytes of its size was a traceback (BadZipFile) at every
    run: it is set aside with a warning and encoded again, as a truncated one is."""
    from two_tower.data.teacher import SentenceTransformerTeacher

    monkeypatch.setattr(SentenceTransformerTeacher, "_load", lambda self: FakeTeacherModel())
    FakeTeacherModel.calls = 0
    teacher = SentenceTransformerTeacher("fake", cache_dir=str(tmp_path))
    first = teacher.vectors(["a query", "another query"], ["a passage"])
    [entry] = (tmp_path / "teacher").iterdir()
    overwrite_same_size(entry / "vectors.npz")
    with caplog.at_level(logging.WARNING):
        again = teacher.vectors(["a query", "another query"], ["a passage"])
    assert "unreadable" in caplog.text and FakeTeacherModel.calls == 4  # encoded again: queries and passages
    np.testing.assert_array_equal(again.queries, first.queries)
    np.testing.assert_array_equal(teacher.vectors(["a query", "another query"], ["a passage"]).passages, first.passages)
    assert FakeTeacherModel.calls == 4  # the rebuilt entry is read


def test_a_mined_pool_overwritten_at_its_size_is_mined_again(tmp_path, caplog):
    from two_tower.negatives import BM25Negatives
    from tests.test_negatives import prepared

    dm = prepared(tmp_path, rows=60)
    first = BM25Negatives(per_query=1, cache_dir=str(tmp_path / "cache"))
    first.prepare(dm.train)
    [entry] = (tmp_path / "cache" / "negatives").iterdir()
    overwrite_same_size(entry / "pool.npz")
    with caplog.at_level(logging.INFO):
        again = BM25Negatives(per_query=1, cache_dir=str(tmp_path / "cache"))
        again.prepare(dm.train)
    assert "unreadable" in caplog.text and "Mined bm25 negatives" in caplog.text
    np.testing.assert_array_equal(again.pool.values, first.pool.values)


def test_read_gives_the_readers_value_or_none(tmp_path):
    cache = ContentCache(tmp_path, "kind")
    key = cache.key({"a": 1})
    assert cache.read(key, lambda folder: pytest.fail("no entry to read")) is None
    filled(cache, key)
    assert cache.read(key, lambda folder: (folder / "sub" / "b.txt").read_text()) == "hello"
    assert cache.read(key, lambda folder: np.load(folder / "a.npy")) is None  # not an .npy: set aside
    assert not cache.path(key).exists()


def test_a_distilled_word_table_overwritten_at_its_size_is_computed_again(tmp_path, monkeypatch, caplog):
    from two_tower.data.embeddings import DistilledEmbeddings
    from tests.test_semantic import tiny_static_model

    source = DistilledEmbeddings(teacher="tiny", dim=4, cache_dir=str(tmp_path))
    tiny_static_model(source._folder())
    monkeypatch.setattr("two_tower.data.embeddings._glove_words", lambda: ["the", "cat", "sat"])
    first = source.load([])
    [entry] = (tmp_path / "distilled-words").iterdir()
    overwrite_same_size(entry / "glove_words.npy")
    with caplog.at_level(logging.WARNING):
        again = source.load([])
    assert "unreadable" in caplog.text
    np.testing.assert_array_equal(again.vectors, first.vectors)
    np.testing.assert_array_equal(source.load([]).vectors, first.vectors)  # the table computed again is cached and read
