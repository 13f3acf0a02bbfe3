"""Semantic towers: word vectors distilled with model2vec, and the skip path that starts from them."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from two_tower.data.tokenizer import PAD, UNK, Tokenizer
from two_tower.data.embeddings import DistilledEmbeddings, DistilledWordVectors, EmbeddingsError
from two_tower.model.embedding import OpenEmbedding
from two_tower.model.encoders import RNNEncoder


@pytest.mark.parametrize("cell,bidirectional", [("lstm", False), ("gru", True), ("rnn", False)])
def test_untrained_skip_tower_is_the_static_mean_of_its_inputs(cell, bidirectional):
    torch.manual_seed(0)
    emb = OpenEmbedding(30, 6)
    encoder = RNNEncoder(emb, cell=cell, hidden_size=9, bidirectional=bidirectional, dim=4, skip=True).eval()
    assert encoder.output_dim == 6  # the word vectors' dimension, whatever encoder.dim says
    seqs = [[5, 6, 7], [8, 9, 10, 11, 12], [3]]
    width = max(map(len, seqs)) + 2
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        out = encoder(ids, torch.tensor([len(s) for s in seqs]))
        expected = F.normalize(torch.stack([emb(torch.tensor(s)).mean(0) for s in seqs]), dim=-1)
    torch.testing.assert_close(out, expected)
    # Training can only add: the RNN's projection gets a gradient from the first step.
    encoder.train()
    loss = -(encoder(ids, torch.tensor([len(s) for s in seqs])) * torch.randn(3, 6)).sum()
    loss.backward()
    assert encoder.projection.weight.grad.abs().sum() > 0 and encoder.skip.weight.grad.abs().sum() > 0


def test_an_encoder_dim_the_skip_path_does_not_use_is_refused_before_any_data(tiny_cfg, tmp_path, monkeypatch):
    """encoder.skip=true: the output has the word vectors' width, so encoder.dim is not used (experiment=best
    encoder.dim=512 trained the model it trains without it, exit 0). It is refused, naming the key, before any data; a
    dim at its default or null passes (the shipped recipes leave it at 128, and runs trained with them resume)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    from two_tower.core.errors import ConfigError
    from two_tower.training import train as train_module
    from two_tower.training.config import check_skip_dim, validate_train_config

    monkeypatch.setattr(train_module, "build_datamodule", lambda cfg: pytest.fail("loaded data"))
    with pytest.raises(ConfigError, match=re.escape("encoder.dim=32 is not used with encoder.skip=true")):
        train_module.train(tiny_cfg("encoder.skip=true"))  # TINY's encoder.dim=32
    for dim in ("null", "128"):
        validate_train_config(tiny_cfg("encoder.skip=true", f"encoder.dim={dim}"))
    validate_train_config(tiny_cfg("encoder.dim=32"))  # without the skip path it is the projection's size
    skips = []
    for name in sorted(p.stem for p in (ROOT / "two_tower" / "conf" / "experiment").glob("*.yaml")):  # as shipped, no TINY
        encoder = compose_plain(f"experiment={name}").encoder
        check_skip_dim(encoder)
        skips += [name] if encoder.skip else []
    assert "best" in skips and "best_rnn" in skips
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "train.py", "experiment=best", "encoder.dim=512", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    message = ("error: encoder.dim=512 is not used with encoder.skip=true (the skip path's output has the word vectors' width, "
               "embeddings.dim): drop it, or set encoder.dim=null")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [message], result.stderr[-2000:]
    # a sweep: refused before its first job
    sweep = tmp_path / "multirun"
    result = subprocess.run([sys.executable, "train.py", "-m", "data=synthetic", "embeddings=random", "logger=none", "trainer.max_epochs=1",
                             "encoder.skip=true", "encoder.dim=null,64", f"hydra.sweep.dir={sweep}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines == [f"error: the sweep's jobs with encoder.dim=64: {message[7:].replace('512', '64')}"], result.stderr[-2000:]
    assert not sweep.exists()


def test_a_run_trained_with_an_encoder_dim_its_skip_path_did_not_use_resumes_without_it():
    """A run trained with encoder.skip=true encoder.dim=512 before that was refused: repeating encoder.dim=512 is refused
    now, and dropping it was refused as a changed setting ("encoder.dim: 512 -> 128"), so the run could not be resumed. The
    dim was never used: it may change where the skip path is on in both; elsewhere it is the projection's size."""
    from two_tower.core.config_key import changed_settings

    trained = {"encoder": {"skip": True, "dim": 512, "hidden_size": 64}}
    assert changed_settings(trained, {"encoder": {"skip": True, "dim": 128, "hidden_size": 64}}) == []
    assert changed_settings(trained, {"encoder": {"skip": True, "dim": None, "hidden_size": 64}}) == []
    assert [n for n, _, _ in changed_settings(trained, {"encoder": {"skip": True, "dim": 128, "hidden_size": 32}})] == ["encoder.hidden_size"]
    assert [n for n, _, _ in changed_settings(trained, {"encoder": {"skip": False, "dim": 128, "hidden_size": 64}})] == ["encoder.dim", "encoder.skip"]
    assert [n for n, _, _ in changed_settings({"encoder": {"dim": 512}}, {"encoder": {"dim": 128}})] == ["encoder.dim"]


def compose_plain(*overrides):
    """The train config of ``overrides`` alone (no TINY)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


def test_a_skip_checkpoint_saved_with_an_unused_encoder_dim_still_loads_indexes_and_searches(tmp_path, monkeypatch, tiny_cfg):
    """Checkpoints trained before encoder.dim was refused with encoder.skip=true hold it (128, or what was given) in
    their hyper-parameters: the refusal is train.py's alone, so index.py, search.py, evaluate.py and serve.py (which load
    with load_checkpoint) still take them, with the word vectors' width."""
    import torch

    from tests.test_retrieval import compose_retrieval
    from two_tower.retrieval.checkpoint import load_checkpoint
    from two_tower.retrieval.indexer import build_index
    from two_tower.retrieval.search import Searcher
    from two_tower.training.train import train

    train(tiny_cfg("encoder.skip=true", "encoder.dim=null", "data.synthetic_rows.train_rows=64", "data.synthetic_rows.val_rows=16"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    state["hyper_parameters"]["encoder"]["dim"] = 512  # what an earlier run's checkpoint says
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    module = load_checkpoint(old)
    assert module.hparams.encoder["dim"] == 512 and module.towers.passage_encoder.output_dim == 16  # TINY's embeddings.dim
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("1\tthe cat sat\n2\ta zebra crossing\n3\tthe jet wing\n")
    folder = tmp_path / "index"
    build_index(compose_retrieval("index", [f"ckpt={old}", f"corpus={corpus}", f"out={folder}"]))
    hits = Searcher.load(folder).search(["zebra"], k=3)[0]
    assert sorted(h.id for h in hits) == ["1", "2", "3"]


def tiny_static_model(folder):
    """A model2vec StaticModel over a tiny word-level vocabulary with known vectors (no teacher, no network)."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.normalizers import Lowercase
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "sat": 3, "jet": 4, "wing": 5, "xj": 6}
    tok = HFTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = Lowercase()
    tok.pre_tokenizer = Whitespace()
    vectors = np.random.default_rng(0).normal(size=(len(vocab), 4)).astype(np.float32)
    StaticModel(vectors, tok, normalize=False).save_pretrained(str(folder))
    return vocab, vectors


def test_distilled_source_gives_every_word_the_static_models_vector(tmp_path, monkeypatch):
    source = DistilledEmbeddings(teacher="tiny", dim=4, cache_dir=str(tmp_path))
    vocab, table = tiny_static_model(source._folder())  # a cache hit: nothing is distilled
    glove = ["the", "cat", "sat", "jet", "zebra"]
    monkeypatch.setattr("two_tower.data.embeddings._glove_words", lambda: list(glove))
    vectors = source.load(["the cat sat on the wing"])
    assert isinstance(vectors, DistilledWordVectors) and vectors.words == glove and vectors.dim == 4
    # Each listed word's vector is the sum of its subword vectors (float16 in the cache, and held float16: half the
    # memory of the 400k-word table, the same values widened); unknown pieces are dropped.
    assert vectors.vectors.dtype == np.float16
    np.testing.assert_allclose(vectors.vectors[1], table[vocab["cat"]], atol=2e-3)
    np.testing.assert_array_equal(vectors.vectors[4], 0.0)  # "zebra": no subword the model knows
    assert len(list(tmp_path.glob("distilled-words/*/glove_words.npy"))) == 1
    # A training word outside the list ("wing", "xj-wing") still gets the model's vector when aligned.
    matrix, oov = vectors.align([PAD, UNK, "cat", "wing", "xj-wing"])
    np.testing.assert_array_equal(matrix[:2], 0.0)
    np.testing.assert_allclose(matrix[3], table[vocab["wing"]], atol=1e-6)
    np.testing.assert_allclose(matrix[4], table[[vocab["xj"], vocab["wing"]]].sum(0), atol=1e-6)  # "xj", "-", "wing": "-" unknown
    assert oov == pytest.approx(2 / 5)
    # The same word list loads again for the vocabulary's extension: the extension is fixed.
    again = DistilledEmbeddings(**{k: v for k, v in source.extension_config().items() if k != "_target_"}, cache_dir=str(tmp_path)).load([])
    assert again.words == vectors.words
    np.testing.assert_array_equal(again.vectors, vectors.vectors)
    tok = Tokenizer.build(["the cat sat", "the cat"], min_freq=1, pretrained_words=set(again.words), extension_words=again.words, extension_source=source.extension_config())
    assert tok.extension_words == ["jet", "zebra"]


def test_distilled_source_errors_are_one_line(tmp_path, monkeypatch):
    source = DistilledEmbeddings(teacher="tiny", dim=8, cache_dir=str(tmp_path))
    tiny_static_model(source._folder())
    monkeypatch.setattr("two_tower.data.embeddings._glove_words", lambda: ["the"])
    with pytest.raises(EmbeddingsError, match="has 4 dims, config says dim=8"):
        source.load([])
    with pytest.raises(EmbeddingsError, match="only 'glove'"):
        DistilledEmbeddings(teacher="tiny", dim=4, words="mine", cache_dir=str(tmp_path)).load([])


def test_distilled_vectors_are_distilled_again_when_the_teacher_folder_changes(tmp_path, monkeypatch):
    """The distilled model, its word table and the tokenization cache (the source's identity) were keyed by the
    teacher's name: a teacher retrained or replaced in place kept the old teacher's vectors without a word (a probe)."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"weights")
    source = DistilledEmbeddings(teacher=str(teacher), dim=4, cache_dir=str(tmp_path / "cache"))
    tiny_static_model(source._folder())
    monkeypatch.setattr("two_tower.data.embeddings._glove_words", lambda: ["the", "cat"])
    source.load([])  # the cached model: nothing distilled
    assert DistilledEmbeddings(teacher=str(teacher), dim=4, cache_dir=str(tmp_path / "cache"))._folder() == source._folder()  # stable
    (teacher / "model.safetensors").write_bytes(b"retrained weights")
    retrained = DistilledEmbeddings(teacher=str(teacher), dim=4, cache_dir=str(tmp_path / "cache"))
    assert retrained._folder() != source._folder() and retrained.identity() != source.identity()
    distilled = []
    monkeypatch.setattr(DistilledEmbeddings, "_distil", lambda self, cache: distilled.append(self.teacher) or tiny_static_model(self._folder()))
    retrained.load([])
    assert distilled == [str(teacher)]


def test_one_teacher_folder_spelled_two_ways_is_distilled_once(tmp_path, monkeypatch):
    """The key held the teacher's name as written: "teacher", "teacher/" and "./teacher" were three distillations
    (85 s each for all-MiniLM-L6-v2) and three tokenization caches of the same vectors (a probe)."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    spellings = [str(teacher), f"{teacher}/", "./teacher", "teacher"]
    sources = [DistilledEmbeddings(teacher=name, dim=4, cache_dir=str(tmp_path / "cache")) for name in spellings]
    assert len({source._folder() for source in sources}) == 1 and len({source.identity() for source in sources}) == 1
    # The training log names the teacher as given, not the fingerprint the key holds.
    assert sources[3].describe() == "distilled:teacher:4"
    assert DistilledEmbeddings(teacher="some/hub-id", dim=4)._key() != DistilledEmbeddings(teacher="other/hub-id", dim=4)._key()


def test_a_distilled_dimension_the_teacher_cannot_give_is_refused_before_distilling(tmp_path, monkeypatch, tiny_cfg):
    """embeddings.dim above the teacher's width: model2vec kept the teacher's width after minutes of distillation, the
    run then failed, and the entry of the wrong width was cached under the key of the asked one (every later run failed
    at once). embeddings.dim=null: a logging traceback, a distillation, then 'config says dim=None' (probes)."""
    import json

    import model2vec.distill

    from two_tower.core.errors import ConfigError
    from two_tower.training.config import validate_train_config

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    monkeypatch.setattr(model2vec.distill, "distill", lambda **kwargs: pytest.fail("distilled"))
    with pytest.raises(ConfigError, match=r"embeddings.dim=16: the teacher .* has 8 dims"):
        DistilledEmbeddings(teacher=str(teacher), dim=16, cache_dir=str(tmp_path / "cache")).load([])
    # A distillation that gives another width than asked is refused and not cached.
    source = DistilledEmbeddings(teacher=str(teacher), dim=4, cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(model2vec.distill, "distill", lambda **kwargs: type("Model", (), {"dim": 8})())
    with pytest.raises(ConfigError, match="distilled .* to 8 dims"):
        source.load([])
    assert not source._folder().exists()
    with pytest.raises(ConfigError, match="embeddings.dim=null: embeddings=distilled needs"):
        validate_train_config(tiny_cfg("embeddings=distilled", "embeddings.dim=null"))


def test_distilled_source_reloads_from_its_extension_config_in_the_default_cache(tmp_path, monkeypatch):
    """A model's extension names no folder: it is found again in TWO_TOWER_CACHE, as conf/paths says."""
    monkeypatch.setenv("TWO_TOWER_CACHE", str(tmp_path))
    monkeypatch.setattr("two_tower.data.embeddings._glove_words", lambda: ["the", "cat"])
    source = DistilledEmbeddings(teacher="tiny", dim=4, cache_dir=str(tmp_path))
    tiny_static_model(source._folder())
    config = source.extension_config()
    assert "cache_dir" not in config
    from two_tower.data.embeddings import extension_source_vectors

    assert extension_source_vectors(config).words == ["the", "cat"]


def distilled_index_folder(tmp_path, monkeypatch):
    """An index folder (tmp_path/index) of a tiny embeddings=distilled model trained here, and the cache it was built
    with (the tiny static model "tiny", 4-d, as the distilled model)."""
    from omegaconf import open_dict

    from tests.conftest import compose_train
    from tests.test_retrieval import compose_retrieval
    from two_tower.data import embeddings as emb
    from two_tower.retrieval.indexer import build_index
    from two_tower.training.train import train

    built = tmp_path / "cache"
    monkeypatch.setenv("TWO_TOWER_CACHE", str(built))
    monkeypatch.setattr(emb, "_PROVIDED", {})
    tiny_static_model(DistilledEmbeddings(teacher="tiny", dim=4, cache_dir=str(built))._folder())
    monkeypatch.setattr(emb, "_glove_words", lambda: ["the", "cat", "jet", "zebra"])
    emb._load_extension_source.cache_clear()
    cfg = compose_train(tmp_path, ["embeddings=distilled", "embeddings.teacher=tiny", "embeddings.dim=4", "encoder.skip=true", "encoder.dim=null"])
    with open_dict(cfg):
        cfg.paths.cache_dir = str(built)
    train(cfg)
    folder = tmp_path / "index"
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("1\tthe cat sat on the jet wing\n2\ta zebra crossing\n3\tthe jet wing xj\n")
    build_index(compose_retrieval("index", [f"ckpt={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", f"corpus={corpus}", f"out={folder}"]))
    return folder, built


def test_an_index_folder_carries_its_distilled_model_and_searches_on_a_machine_without_it(tmp_path, monkeypatch):
    """embeddings=distilled: the folder holds the distilled model its query tower's vocabulary extension comes
    from (static_model/), so a fresh machine (empty cache, no teacher to distil) searches it with the same
    vectors, instead of distilling for minutes (or failing where model2vec's distill extra is absent)."""
    from two_tower.data import embeddings as emb
    from two_tower.retrieval.search import Searcher

    folder, built = distilled_index_folder(tmp_path, monkeypatch)
    assert sorted(p.name for p in (folder / "static_model").iterdir()) == sorted(p.name for p in DistilledEmbeddings(teacher="tiny", dim=4, cache_dir=str(built))._folder().iterdir())
    expected = [[(h.id, round(h.score, 6)) for h in hits] for hits in Searcher.load(folder).search(["jet wing", "zebra"], k=3)]

    # Another machine: an empty cache and no way to distil "tiny".
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("TWO_TOWER_CACHE", str(fresh))
    monkeypatch.setattr(emb, "_PROVIDED", {})
    emb._load_extension_source.cache_clear()
    monkeypatch.setattr(emb.DistilledEmbeddings, "_distil", lambda self, cache: pytest.fail("distilled again"))
    got = [[(h.id, round(h.score, 6)) for h in hits] for hits in Searcher.load(folder).search(["jet wing", "zebra"], k=3)]
    assert got == expected
    assert not (fresh / "distilled").exists()
    emb._load_extension_source.cache_clear()


def test_an_index_folder_without_its_distilled_model_that_cannot_be_distilled_here_says_to_rebuild_it(tmp_path, monkeypatch):
    """A folder of an embeddings=distilled model built before folders carried static_model/ (an upgrade probe: one
    of a0fd2c6) on a machine that cannot distil the teacher: search.py and serve.py said 'embeddings.teacher=...:
    model2vec could not distil it', naming a setting they do not take. Now the line names the folder and says to
    rebuild it with index.py (or install the teacher)."""
    import json
    import shutil

    from two_tower.core.errors import IndexFolderError
    from two_tower.data import embeddings as emb
    from two_tower.retrieval.search import Searcher

    folder, _ = distilled_index_folder(tmp_path, monkeypatch)
    # as written before folders carried the distilled model: no static_model/, in the folder or its manifest
    shutil.rmtree(folder / "static_model")
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["static_model"]
    manifest["files"] = {name: value for name, value in manifest["files"].items() if not name.startswith("static_model/")}
    (folder / "manifest.json").write_text(json.dumps(manifest))

    # Another machine: an empty cache, and the teacher cannot be distilled (not installed, no network)
    monkeypatch.setenv("TWO_TOWER_CACHE", str(tmp_path / "fresh"))
    monkeypatch.setattr(emb, "_PROVIDED", {})
    emb._load_extension_source.cache_clear()

    def cannot(self, cache):
        raise EmbeddingsError(f"embeddings.teacher={self.teacher}: model2vec could not distil it: OSError: no network")

    monkeypatch.setattr(emb.DistilledEmbeddings, "_distil", cannot)
    with pytest.raises(IndexFolderError, match=r"index=.*index: built before index folders carried the distilled model .*\(static_model/\).*no network\): rebuild the folder with .*index"):
        Searcher.load(folder)
    emb._load_extension_source.cache_clear()
