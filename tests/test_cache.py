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
