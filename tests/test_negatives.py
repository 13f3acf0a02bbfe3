"""Hard-negative mining (BM25, ANN, refresh) and in-batch negatives gathered across processes."""

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import compose_train
from two_tower.data.batches import TripletBatches
from two_tower.data.datamodule import TwoTowerDataModule
from two_tower.data.embeddings import RandomEmbeddings
from two_tower.model.module import TwoTowerModule
from two_tower.negatives import ANNNegatives, BM25Negatives, InBatchNegatives, RandomNegatives
from two_tower.negatives.ann import FileScorer, model_scorer, passage_blocks
from two_tower.negatives.mining import MinedNegatives, WordSets, jaccard, top_k_by_scores
from two_tower.core.metrics import rank_by_scores
from two_tower.data.tokenizer import split_words
from two_tower.data.teacher import TeacherVectors
from two_tower.training.train import train


def prepared(tmp_path, negatives=None, rows=200):
    dm = TwoTowerDataModule(
        RandomEmbeddings(dim=8),
        negatives or InBatchNegatives(),
        synthetic_rows={"train_rows": rows, "val_rows": 40, "seed": 0},
        cache_dir=str(tmp_path / "cache"),
        batch_size=16,
    )
    dm.setup("fit")
    return dm


def test_bm25_negatives_exclude_selected_and_near_duplicates(tmp_path):
    dm = prepared(tmp_path)
    split = dm.train
    # Make passage 1 a near duplicate of query 0's positive: same words but one.
    pos = int(split.positives[0][0])
    words = split.passage_texts[pos].split()
    near = " ".join(words[:-1] + ["zebra"])
    split.passage_texts[1] = near
    miner = BM25Negatives(per_query=2, range_min=0, range_max=10, near_duplicate_jaccard=0.8, cache_dir=str(tmp_path / "cache"))
    miner.prepare(split)
    assert len(miner.pool) == split.num_queries
    for row in range(split.num_queries):
        pool = miner.pool[row].tolist()
        selected = set(split.positives[row].tolist())
        assert pool and not selected & set(pool)
        assert len(pool) <= 10
        for pid in pool:
            for s in selected:
                assert jaccard(set(split_words(split.passage_texts[pid])), set(split_words(split.passage_texts[s]))) < 0.8
    rng = np.random.default_rng(0)
    drawn = miner.sample(split, np.arange(split.num_queries), rng)
    assert drawn.shape == (split.num_queries, 2)
    assert all(d in miner.pool[r] for r, row in enumerate(drawn) for d in row)


def test_bm25_window_is_the_top_of_the_ranking(tmp_path):
    dm = prepared(tmp_path)
    split = dm.train
    miner = BM25Negatives(per_query=1, range_min=2, range_max=5, near_duplicate_jaccard=None, cache_dir=str(tmp_path / "c"))
    scores = miner.scorer(split)(np.arange(3))
    miner.prepare(split)
    for row in range(3):
        order = [p for p in torch.sort(scores[row], descending=True, stable=True).indices.tolist() if p not in set(split.positives[row].tolist())]
        assert miner.pool[row].tolist() == order[2:5]


def test_top_k_by_scores_is_the_stable_sort_including_ties():
    """Few distinct values (ties everywhere, also across rank k), -inf, -0.0 and 0.0: the order of a
    stable descending sort, cut at k."""
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.integers(-3, 4, size=(37, 300)).astype(np.float32) / 2)
    scores[0, :50] = float("-inf")
    scores[1, ::3] = -0.0
    scores[2] = 0.0  # one big tie
    scores[3, 5] = float("inf")
    for k in (1, 7, 64, 300, 400):
        for block in (1, 5, 64):
            assert torch.equal(top_k_by_scores(scores, k, block), rank_by_scores(scores, k))
    assert top_k_by_scores(scores[:0], 5).shape == (0, 5)


def test_word_sets_give_the_jaccard_of_python_sets():
    texts = ["The cat sat on the mat.", "the mat, the cat; sat ON", "a dog", "", "Cat cat CAT dog"]
    words = WordSets(texts)
    for a in range(len(texts)):
        for b in range(len(texts)):
            assert words.jaccard(a, b) == jaccard(set(split_words(texts[a])), set(split_words(texts[b])))


def reference_pools(split, scores_of, range_min, range_max, threshold, margin=None):
    """Mining written plainly: a full stable sort of every score row (the whole ranking: the window reads as deep as it
    must to fill), passages scored -inf (not matched) never kept, Python sets of words."""
    fallback, pools = split.negatives(), []
    scores = scores_of(np.arange(split.num_queries))
    for row in range(split.num_queries):
        top = [p for p in torch.sort(scores[row], descending=True, stable=True).indices.tolist() if scores[row, p] > float("-inf")]
        selected = set(split.positives[row].tolist())
        best = max(float(scores[row, s]) for s in selected)
        kept = [
            p for p in top
            if p not in selected
            and not (threshold is not None and any(jaccard(set(split_words(split.passage_texts[p])), set(split_words(split.passage_texts[s]))) >= threshold
                                                   for s in selected))
            and not (margin is not None and float(scores[row, p]) > best - margin)
        ]
        pools.append(kept[range_min:range_max] or fallback[row].tolist())
    return pools


@pytest.mark.parametrize("margin", [None, 0.5])
def test_mined_pools_equal_the_reference_mining(tmp_path, margin):
    """The bounded-memory mining (top-k keys, word-id sets, chunks) keeps exactly the pools of the
    straightforward version, on BM25 scores (many exact ties) with a near-duplicate planted."""
    split = prepared(tmp_path).train
    pos = int(split.positives[0][0])
    split.passage_texts[1] = " ".join(split.passage_texts[pos].split()[:-1] + ["zebra"])
    miner = BM25Negatives(per_query=1, range_min=1, range_max=12, near_duplicate_jaccard=0.8, margin=margin, chunk=7, cache_dir=str(tmp_path / "c"))
    scorer = miner.scorer(split)
    pool = miner.mine(split, scorer)
    assert [pool[r].tolist() for r in range(split.num_queries)] == reference_pools(split, scorer, 1, 12, 0.8, margin)
    miner.max_score_mb = 0  # one query a step: the same pools
    one_by_one = miner.mine(split, scorer)
    assert np.array_equal(one_by_one.values, pool.values) and np.array_equal(one_by_one.offsets, pool.offsets)


def test_a_mined_row_with_no_negative_and_no_candidate_is_one_line_or_keeps_its_negatives_in_a_refresh(tmp_path):
    """A BEIR training query has no unselected candidate unless its qrels judge a document not relevant: where the
    filters (here negatives.margin) leave its window empty there is nothing to fall back on, and drawing from it was
    a ValueError traceback in the first batch holding it. Mined first: one line saying how many and which settings;
    in a refresh: the row keeps the negatives it had (an MS MARCO row falls back on its candidates, as before)."""
    from two_tower.core.errors import ConfigError
    from two_tower.data.prepared import PreparedSplit, Ragged

    texts = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta", "iota kappa", "lambda mu"]
    positives = Ragged.from_lists([[0], [5], [5]])
    candidates = Ragged.from_lists([[0], [5, 4], [5]])  # row 1: an unselected candidate (as every MS MARCO row has)
    split = PreparedSplit.untokenized(["q0", "q1", "q2"], texts, positives, candidates)
    scores = torch.arange(6, dtype=torch.float32).flip(0).repeat(3, 1)  # passage 0 first, then 1, ...: rows 1 and 2's positive last
    miner = MinedNegatives(per_query=1, range_max=3, margin=0.5, cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^1 of the 3 training queries have no mined negative left \(negatives.range_min=0, "
                                          r"negatives.range_max=3, negatives.near_duplicate_jaccard=0.9, negatives.margin=0.5; .*negatives=in_batch$"):
        miner.mine(split, lambda rows: scores[rows])
    pool = MinedNegatives(per_query=1, range_max=3, cache_dir=str(tmp_path)).mine(split, lambda rows: scores[rows])  # no margin: all rows have some
    assert [pool[r].tolist() for r in range(3)] == [[1, 2, 3], [0, 1, 2], [0, 1, 2]]
    miner.pool = pool  # a refresh: row 2 keeps its negatives, row 1 falls back on its candidate
    refreshed = miner.mine(split, lambda rows: scores[rows])
    assert [refreshed[r].tolist() for r in range(3)] == [[1, 2, 3], [4], [0, 1, 2]]


def test_mining_is_cached(tmp_path, monkeypatch, caplog):
    dm = prepared(tmp_path)
    BM25Negatives(per_query=1, cache_dir=str(tmp_path / "cache")).prepare(dm.train)
    monkeypatch.setattr(MinedNegatives, "mine", lambda *a, **k: pytest.fail("mined again"))
    with caplog.at_level(logging.INFO):
        again = BM25Negatives(per_query=1, cache_dir=str(tmp_path / "cache"))
        again.prepare(dm.train)
    assert "cache hit" in caplog.text and len(again.pool) == dm.train.num_queries


def test_a_passage_edited_past_the_token_window_is_mined_again(tmp_path, caplog):
    """The pool's cache key hashed the split's tokens, which stop at max_passage_len, while BM25 and the near-duplicate
    check read whole texts: a passage edited past the window kept the pool mined from its old text (a probe)."""
    import dataclasses

    from two_tower.negatives.mining import split_fingerprint

    dm = prepared(tmp_path)
    texts = list(dm.train.passage_texts)
    texts[3] = texts[3] + " " + " ".join(["tail"] * 500)  # past any window: the tokens are unchanged
    edited = dataclasses.replace(dm.train, passage_texts=texts)
    assert np.array_equal(edited.passage_tokens.values, dm.train.passage_tokens.values)
    assert split_fingerprint(edited) != split_fingerprint(dm.train)
    BM25Negatives(per_query=1, cache_dir=str(tmp_path / "cache")).prepare(dm.train)
    with caplog.at_level(logging.INFO):
        BM25Negatives(per_query=1, cache_dir=str(tmp_path / "cache")).prepare(edited)
    assert "Mined bm25 negatives" in caplog.text and "cache hit" not in caplog.text


def test_a_pool_is_mined_again_when_only_the_candidate_lists_change(tmp_path):
    """A query whose mined window comes out empty falls back to its own candidates, which the pool's cache key did
    not know: the same split with another candidate list got the old list's pool back from the cache (a probe)."""
    import dataclasses

    from two_tower.data.prepared import Ragged

    dm = prepared(tmp_path, rows=60)
    lists = [dm.train.candidates[q].tolist() for q in range(dm.train.num_queries)]
    positives = set(dm.train.positives[0].tolist())
    lists[0] = [p for p in lists[0] if p in positives] + [p for p in lists[0] if p not in positives][:1]
    shorter = dataclasses.replace(dm.train, candidates=Ragged.from_lists(lists))
    settings = {"per_query": 1, "range_min": 5000, "range_max": 5001, "cache_dir": str(tmp_path / "cache")}  # every query falls back
    BM25Negatives(**settings).prepare(dm.train)
    again = BM25Negatives(**settings)
    again.prepare(shorter)
    assert again.pool[0].tolist() == [p for p in lists[0] if p not in positives]


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_run):
    return tiny_run["ckpt"]


def test_ann_negatives_and_refresh_changes_them(tmp_path, tiny_checkpoint):
    dm = prepared(tmp_path)
    miner = ANNNegatives(per_query=1, range_max=10, checkpoint=str(tiny_checkpoint), margin=0.0, cache_dir=str(tmp_path / "cache"))
    miner.prepare(dm.train)
    for row in range(dm.train.num_queries):
        assert not set(dm.train.positives[row].tolist()) & set(miner.pool[row].tolist())
    before = [miner.pool[r].tolist() for r in range(dm.train.num_queries)]
    other = TwoTowerModule(len(dm.tokenizer), 8, {"_target_": "two_tower.model.encoders.RNNEncoder", "cell": "gru", "hidden_size": 16, "dim": 16}, {"_target_": "two_tower.model.losses.InfoNCELoss"}, {"_target_": "torch.optim.Adam", "_partial_": True})
    miner.refresh(model_scorer(other, dm.train, folder=tmp_path / "vectors"), dm.train)
    after = [miner.pool[r].tolist() for r in range(dm.train.num_queries)]
    assert after != before
    assert all(not set(dm.train.positives[r].tolist()) & set(after[r]) for r in range(len(after)))
    assert list((tmp_path / "vectors").iterdir()) == []  # the vectors' files are gone
    assert not list((tmp_path / "cache").glob(".ann-vectors.tmp-*"))


def test_vectors_left_by_a_killed_mining_are_removed_by_the_next(tmp_path):
    """The ANN scorer's vector files sat in a mkdtemp folder under the cache root that only a finalizer removed: a
    mining killed (SIGKILL; SIGTERM before training, which stops a process without finalizers) left them for good."""
    import subprocess
    import sys

    from two_tower.negatives.ann import new_file_scorer

    killed = subprocess.run([sys.executable, "-c", (
        "import os, sys; from two_tower.negatives.ann import new_file_scorer; "
        f"s = new_file_scorer({str(tmp_path)!r}, 100, 8, 10, 8, 1); s.passages[0] = [[1.0] * 8]; os._exit(0)")], check=True)
    assert killed.returncode == 0
    [left] = list(tmp_path.iterdir())
    assert (left / "passages.f32").is_file()
    scorer = new_file_scorer(tmp_path, 100, 8, 10, 8, 1)
    assert list(tmp_path.iterdir()) == [scorer.folder]  # the killed one's folder is gone, ours is there
    scorer.close()
    assert list(tmp_path.iterdir()) == []


def test_an_ann_pool_is_keyed_by_the_checkpoints_bytes(tmp_path, tiny_checkpoint):
    """The key knew the checkpoint's path, size and time: another checkpoint of the same configuration (same size)
    copied over it with the old time (cp -p, touch -r, rsync -a) got the old checkpoint's pool from the cache (a probe)."""
    import os
    import shutil

    ckpt = tmp_path / "mine.ckpt"
    shutil.copy(tiny_checkpoint, ckpt)
    before = ANNNegatives(checkpoint=str(ckpt), cache_dir=str(tmp_path)).identity()
    stat = ckpt.stat()
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # other weights, the same size
    ckpt.write_bytes(bytes(data))
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ANNNegatives(checkpoint=str(ckpt), cache_dir=str(tmp_path)).identity() != before


def test_passage_blocks_cover_the_passages_without_a_short_tail():
    for n in (1, 63, 64, 65, 127, 128, 1000, 4097):
        for rows in (0, 1, 64, 100, 256, 5000):
            blocks = passage_blocks(n, rows)
            assert blocks[0][0] == 0 and blocks[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            size = max(64, rows // 64 * 64)
            assert all(stop - start == size for start, stop in blocks[:-1])
            assert len(blocks) == 1 or size <= blocks[-1][1] - blocks[-1][0] < 2 * size


@pytest.fixture
def one_torch_thread():
    """torch with one intra-op thread (as training runs by default, ``threads=1``), put back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("passages,dim", [(1000, 8), (777, 300), (4097, 40), (65, 16)])
def test_file_scorer_is_bit_for_bit_the_single_product(tmp_path, passages, dim, one_torch_thread):
    """Vectors written in shuffled batches to files and multiplied a passage block at a time: exactly
    ``queries[rows] @ passages.T`` of the matrices in memory, for single rows and odd steps, and with
    tied passages (repeated vectors) and zero rows (never written). With one thread: with several, the matrix
    routines split a product by its shape and its last bits can differ (two cases failed under ``pytest -n 0`` on 2
    cores, where the tests' workers otherwise run one thread each)."""
    gen = torch.Generator().manual_seed(passages)
    P, Q = torch.randn(passages, dim, generator=gen), torch.randn(50, dim, generator=gen)
    P[1::7] = P[0]  # ties
    Q[3] = 0.0
    for block_mb in (1e-9, 64 * 4 * dim / 2**20 * 3.5, 1000):
        folder = tmp_path / f"v{block_mb}"
        folder.mkdir()
        scorer = FileScorer(folder, passages, dim, len(Q), dim, block_mb)
        order = torch.randperm(passages, generator=gen)
        for start in range(0, passages, 37):
            index = order[start : start + 37]
            scorer.passages[index] = P[index]
        written = [r for r in range(len(Q)) if r != 3]
        scorer.queries[np.array(written)] = Q[written]
        assert (len(scorer.blocks) > 1) == (block_mb < 1 and passages > 127)
        for rows in (np.arange(50), np.array([3]), np.array([5]), np.arange(7, 30), np.array([49, 0, 12])):
            assert torch.equal(scorer(rows), Q[rows] @ P.T)
        scorer.close()
        assert not folder.exists()


def in_memory_ann_scorer(checkpoint, split):
    """ANN scores as they were first computed: every vector in memory, one product a step."""
    from two_tower.retrieval.dense import DenseRetriever

    retriever = DenseRetriever(str(checkpoint))
    retriever.prepare(split)
    return retriever.scores


@pytest.mark.parametrize("chunk", [7, 512])
def test_ann_pools_equal_the_in_memory_mining(tmp_path, tiny_checkpoint, chunk):
    """Vectors in files, passages a block at a time: the same pools as with the whole matrices in memory,
    with tied scores planted (repeated passages) and a near duplicate of a positive."""
    split = prepared(tmp_path).train
    for dup in range(10, 60, 5):
        split.passage_texts[dup + 1] = split.passage_texts[dup]
    pos = int(split.positives[0][0])
    split.passage_texts[1] = " ".join(split.passage_texts[pos].split()[:-1] + ["zebra"])
    miner = ANNNegatives(per_query=1, range_min=1, range_max=12, near_duplicate_jaccard=0.8, chunk=chunk, checkpoint=str(tiny_checkpoint), passage_block_mb=1e-9, cache_dir=str(tmp_path / "c"))
    expected = miner.mine(split, in_memory_ann_scorer(tiny_checkpoint, split))
    scorer = miner.scorer(split)
    assert len(scorer.blocks) > 1 and list((tmp_path / "c").glob(".ann-vectors.tmp-*"))
    scores = scorer(np.arange(split.num_queries))
    assert torch.equal(scores, in_memory_ann_scorer(tiny_checkpoint, split)(np.arange(split.num_queries)))
    assert (scores[:, 11:60:5] == scores[:, 10:60:5]).all()  # the planted ties
    scorer.close()
    miner.prepare(split)
    assert np.array_equal(miner.pool.values, expected.values) and np.array_equal(miner.pool.offsets, expected.offsets)
    assert not list((tmp_path / "c").glob(".ann-vectors.tmp-*"))


def test_ann_requires_a_checkpoint():
    with pytest.raises(ValueError, match="negatives.checkpoint"):
        ANNNegatives(per_query=1, checkpoint=None)


def test_training_with_bm25_and_refreshed_ann(tmp_path, tiny_checkpoint):
    metrics = train(compose_train(tmp_path / "bm25", ["negatives=bm25", "trainer.max_epochs=1"]))
    assert np.isfinite(metrics["val/mrr@10"])
    metrics = train(compose_train(tmp_path / "ann", ["negatives=ann", f"negatives.checkpoint={tiny_checkpoint}", "negatives.refresh_every_n_epochs=1", "trainer.max_epochs=2", "loss=triplet"]))
    assert metrics["negatives/refresh_seconds"] > 0


def test_refreshing_negatives_over_a_read_only_cache_writes_its_vectors_elsewhere(tmp_path):
    """A cache that refuses writes is read (docs/reliability.md), and a pool mined before is a cache hit; the first
    refresh then wrote its vector files into that cache and failed with a PermissionError traceback after an epoch
    of training (a probe)."""
    import os
    import subprocess

    cfg = compose_train(tmp_path, ["negatives=bm25", "negatives.refresh_every_n_epochs=1", "trainer.max_epochs=2"])
    train(cfg)  # mines the pool into the cache
    root = Path(cfg.paths.cache_dir)
    root.chmod(0o555)
    immutable = False
    try:
        if os.access(root, os.W_OK):  # root ignores modes: an immutable folder refuses it too, where chattr works
            immutable = subprocess.run(["chattr", "+i", str(root)], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("cannot make a folder refuse this user's writes here")
        cfg.paths.output_dir = str(tmp_path / "again")
        metrics = train(cfg)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(root)], check=True)
        root.chmod(0o755)
    assert metrics["negatives/refresh_seconds"] > 0


def test_a_refreshed_pool_is_in_the_checkpoint_and_restored_on_resume(tmp_path):
    """A mid-epoch resume must draw from the pool its epoch started with (mining again would use mid-epoch
    weights): NegativeRefresh keeps the refreshed pool as its checkpoint state and puts it back at train start."""
    from types import SimpleNamespace

    from two_tower.negatives.refresh import NegativeRefresh

    cfg = compose_train(tmp_path, ["negatives=bm25", "negatives.refresh_every_n_epochs=1", "trainer.max_epochs=2"])
    train(cfg)
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    saved = next(v for k, v in state.items() if k.startswith("NegativeRefresh"))
    assert saved["values"].dtype == torch.int32 and len(saved["offsets"]) > 1
    callback = NegativeRefresh(every_n_epochs=1)
    callback.load_state_dict(saved)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(negatives=SimpleNamespace(pool=None)))
    callback.on_train_start(trainer, None)
    pool = trainer.datamodule.negatives.pool
    assert np.array_equal(pool.values, saved["values"].numpy()) and np.array_equal(pool.offsets, saved["offsets"].numpy())
    assert NegativeRefresh(every_n_epochs=1).state_dict() == {}  # before any refresh: nothing to keep


# ---------------------------------------------------------------------------------- across devices
def _ddp_worker(rank, world, init_file, cache_dir, states, plans, out_file):
    """Each loss in turn, in one process group (``states``: loss name -> the weights to start from)."""
    torch.set_num_threads(1)  # a forked process must not reuse the parent's OpenMP pool (as DataLoader workers do)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dm = _split_for_ddp(cache_dir)
        results = {}
        for loss_name, state in states.items():
            module = _module_for_ddp(dm, loss_name, gather=True)
            module.load_state_dict(state)
            out = module.batch_loss(TripletBatches(dm.train, _teacher_for_ddp(dm, loss_name), _labelled_rows(loss_name))[plans[rank]])
            out["loss"].backward()
            loss = out["loss"].detach().clone()
            dist.all_reduce(loss)
            grads = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
            dist.all_reduce(grads)  # what DDP does, before dividing by the world size
            results[loss_name] = {"loss": loss / world, "grads": grads / world}
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def _split_for_ddp(cache_dir):
    dm = TwoTowerDataModule(RandomEmbeddings(dim=8), RandomNegatives(per_query=1), synthetic_rows={"train_rows": 60, "val_rows": 10, "seed": 0}, cache_dir=cache_dir)
    dm.setup("fit")
    return dm


def _teacher_for_ddp(dm, loss_name):
    """loss=distill: made-up teacher vectors (the same in every process)."""
    if not loss_name.startswith("distill"):
        return None
    rng = np.random.default_rng(0)
    unit = lambda n: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(rng.normal(size=(n, 6)).astype(np.float32))
    return TeacherVectors(unit(dm.train.num_queries), unit(dm.train.num_passages))


def _labelled_rows(loss_name):
    """distill_pseudo: rows from 5 on are pseudo-queries, so the first process's half of the batch has 4 labelled
    rows and the second's 1 (the labelled cross-entropy must average over the 5, not over each process's)."""
    return 5 if loss_name == "distill_pseudo" else None


def _module_for_ddp(dm, loss_name, gather):
    torch.manual_seed(0)
    loss = {
        "infonce": {"_target_": "two_tower.model.losses.InfoNCELoss", "temperature": 0.1},
        "triplet": {"_target_": "two_tower.model.losses.TripletLoss", "margin": 0.5},
        "distill": {"_target_": "two_tower.model.losses.DistillLoss", "temperature": 0.1, "teacher_temperature": 0.1, "label_weight": 0.3},
        # + each query against every process's other queries (loss.query_relation_weight)
        "distill_relations": {"_target_": "two_tower.model.losses.DistillLoss", "temperature": 0.1, "teacher_temperature": 0.1, "label_weight": 0.3, "query_relation_weight": 1.0},
        "distill_pseudo": {"_target_": "two_tower.model.losses.DistillLoss", "temperature": 0.1, "teacher_temperature": 0.1, "label_weight": 0.5},
    }[loss_name]
    module = TwoTowerModule(len(dm.tokenizer), 8, {"_target_": "two_tower.model.encoders.RNNEncoder", "cell": "gru", "hidden_size": 8, "dim": 8}, loss, {"_target_": "torch.optim.Adam", "_partial_": True}, gather_across_devices=gather)
    module.towers.load_embeddings(dm.embedding_matrix)
    return module


DDP_LOSSES = ["infonce", "triplet", "distill", "distill_relations", "distill_pseudo"]


@pytest.fixture(scope="module")
def ddp_batch(tmp_path_factory):
    """One batch split over 2 gloo processes, every loss's gathered loss and gradients (one spawn for all
    the losses: starting the processes is most of the cost), and what each loss needs to redo it in one
    process."""
    tmp = tmp_path_factory.mktemp("ddp")
    cache_dir = str(tmp / "cache")
    dm = _split_for_ddp(cache_dir)
    split = dm.train
    rows = np.arange(8)
    positives = np.array([split.positives[r][0] for r in rows])
    negatives = np.array([split.negatives()[r][0] for r in rows])
    negatives[6] = positives[1]  # a passage on both processes: must count once, and never for row 1
    plan = np.stack([rows, positives, negatives], axis=1)
    states = {name: _module_for_ddp(dm, name, gather=False).state_dict() for name in DDP_LOSSES}
    out_file = tmp / "ddp.pt"
    # Forked, not spawned: the workers start with this process's imports instead of importing them again.
    mp.start_processes(_ddp_worker, args=(2, str(tmp / "init"), cache_dir, states, [plan[:4], plan[4:]], str(out_file)), nprocs=2, join=True, start_method="fork")
    return dm, plan, states, torch.load(out_file)


@pytest.mark.parametrize("loss_name", DDP_LOSSES)
def test_gathered_in_batch_negatives_equal_one_process_on_the_whole_batch(ddp_batch, loss_name):
    dm, plan, states, gathered = ddp_batch
    module = _module_for_ddp(dm, loss_name, gather=False)
    module.load_state_dict(states[loss_name])
    out = module.batch_loss(TripletBatches(dm.train, _teacher_for_ddp(dm, loss_name), _labelled_rows(loss_name))[plan])
    out["loss"].backward()
    want_grads = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])

    got = gathered[loss_name]
    torch.testing.assert_close(got["loss"], out["loss"].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["grads"], want_grads, rtol=1e-4, atol=1e-6)


def test_mined_negatives_refuse_settings_in_the_config_checks_words():
    """The constructor had messages of its own (and never applied the shared rules): the same words from Python
    as from a config."""
    from two_tower.core.errors import ConfigError
    from two_tower.negatives.bm25 import BM25Negatives

    for settings, words in (({"per_query": 0}, "negatives.per_query=0: this negatives option needs at least 1"),
                            ({"range_min": 5, "range_max": 5}, "negatives.range_min=5 must be below negatives.range_max=5"),
                            ({"per_query": "2"}, "negatives.per_query='2': must be an integer >= 0"),
                            ({"stemmer": "bogus"}, "negatives.stemmer='bogus': must be a PyStemmer language"),
                            ({"near_duplicate_jaccard": 0}, "negatives.near_duplicate_jaccard=0: must be a number > 0"),
                            ({"margin": -1}, "negatives.margin=-1: must be a finite number >= 0, or null"),
                            ({"max_score_mb": -5}, "negatives.max_score_mb=-5: must be a finite number > 0")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            BM25Negatives(**settings)


def test_a_window_reads_down_the_ranking_until_it_fills_and_bm25_never_gives_an_unmatched_passage(tmp_path):
    """Two faults a probe found. A margin that drops more than the first ranks read (range_max + positives + 10) left
    the window empty, and the query fell back to its own candidates although passages further down qualified (186 of
    marco7k's queries with margin=0). And BM25 filled windows with passages sharing no word with the query, in
    passage order (the first training row's passages were negatives of 68-81 queries each)."""
    from two_tower.data.prepared import PreparedSplit, Ragged

    texts = [f"passage number {i} words" for i in range(100)]
    positives, candidates = Ragged.from_lists([[50]]), Ragged.from_lists([[50, 7]])
    split = PreparedSplit.untokenized(["q"], texts, positives, candidates)
    scores = (100 - torch.arange(100, dtype=torch.float32))[None]  # passage p scores 100 - p: the positive ranks 51st
    pool = MinedNegatives(per_query=1, range_max=3, margin=0.0, cache_dir=str(tmp_path)).mine(split, lambda rows: scores[rows])
    assert pool[0].tolist() == [51, 52, 53]  # the first 14 ranks are all above the positive; was [7], its candidate
    unmatched = scores.clone()
    unmatched[0, 52:] = float("-inf")
    pool = MinedNegatives(per_query=1, range_max=3, margin=0.0, cache_dir=str(tmp_path)).mine(split, lambda rows: unmatched[rows])
    assert pool[0].tolist() == [51]  # stops at the first passage not matched

    texts = ["solar wind particles", "the wind farm", "zebra stripes", "lunar craters", "mars rovers", "ocean tides"]
    queries = ["wind", "nothing matches here", "craters"]
    positives = Ragged.from_lists([[0], [4], [3]])
    candidates = Ragged.from_lists([[0, 5], [4, 2], [3, 0]])
    split = PreparedSplit.untokenized(queries, texts, positives, candidates)
    miner = BM25Negatives(per_query=1, range_max=4, cache_dir=str(tmp_path))
    pool = miner.mine(split, miner.scorer(split))
    # "wind": only passage 1 shares a word; no passage shares one with query 1 or "craters" (beyond its positive): their
    # own candidates (were passages 0-3 in passage order)
    assert [pool[r].tolist() for r in range(3)] == [[1], [2], [0]]


def test_a_resume_whose_ann_checkpoint_was_replaced_is_refused(tmp_path, tiny_checkpoint, monkeypatch):
    """negatives.checkpoint is recorded by its path: overwritten with another model, a resume mined its remaining
    epochs' negatives with that model and ended with exit 0 (a probe). Checkpoints now record its content, and the
    refusal comes before the data is prepared (it came after the other model's mining)."""
    import shutil

    from two_tower.core.errors import CheckpointError
    from two_tower.data.datamodule import TwoTowerDataModule

    mined_with = tmp_path / "mine_with.ckpt"
    shutil.copy(tiny_checkpoint, mined_with)
    settings = ["negatives=ann", f"negatives.checkpoint={mined_with}", "loss=triplet"]
    train(compose_train(tmp_path / "run", [*settings, "trainer.max_epochs=1"]))
    train(compose_train(tmp_path / "run", [*settings, "trainer.max_epochs=2", "ckpt_path=last"]))  # the same model: resumes
    shutil.copy(tmp_path / "run" / "run" / "checkpoints" / "last.ckpt", mined_with)  # another model at the same path

    def prepared(self):
        raise AssertionError("the data was prepared (and mined with the other model) before the refusal")

    monkeypatch.setattr(TwoTowerDataModule, "prepare_data", prepared)
    with pytest.raises(CheckpointError, match=r"negatives.checkpoint now holds another model than the one this run mined its hard negatives with"):
        train(compose_train(tmp_path / "run", [*settings, "trainer.max_epochs=3", "ckpt_path=last"]))
