"""Ranking metrics against a brute-force computation, including several positives, ties and misses."""

import math

import numpy as np
import pytest
import torch
import torchmetrics.retrieval as tmr

from two_tower.data.prepared import Ragged
from two_tower.data.prepared import PreparedSplit
from two_tower.core.metrics import dense_split_metrics, mean_metrics, per_query_metrics, rank_by_scores, rank_dense, rank_dense_within, ranking_metrics, top_k


def brute_force(scores: np.ndarray, relevant: list[set[int]], allowed: list[list[int]] | None = None):
    """Sort every passage by (-score, index) in plain Python and read the metrics off the list."""
    mrr = ndcg = 0.0
    recall = {1: 0.0, 10: 0.0, 100: 0.0}
    n = 0
    for q, rel in enumerate(relevant):
        if not rel:
            continue
        n += 1
        pool = allowed[q] if allowed else range(scores.shape[1])
        ranking = sorted(pool, key=lambda p: (-scores[q, p], p))
        ranks = [i + 1 for i, p in enumerate(ranking) if p in rel]
        first = min(ranks)
        mrr += 1 / first if first <= 10 else 0
        for k in recall:
            recall[k] += sum(r <= k for r in ranks) / len(rel)
        dcg = sum(1 / math.log2(r + 1) for r in ranks if r <= 10)
        ndcg += dcg / sum(1 / math.log2(i + 1) for i in range(1, min(len(rel), 10) + 1))
    return {"mrr@10": mrr / n, "ndcg@10": ndcg / n, **{f"recall@{k}": v / n for k, v in recall.items()}}


def random_case(seed: int, num_queries=40, num_passages=300, ties=False):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(num_queries, num_passages)).astype(np.float32)
    if ties:  # coarse scores: many exact ties
        scores = np.round(scores * 2) / 2
    relevant = []
    for q in range(num_queries):
        k = int(rng.integers(0, 4))  # 0 positives (skipped), 1, or several
        relevant.append(set(rng.choice(num_passages, size=k, replace=False).tolist()))
    return scores, relevant


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_corpus_metrics_match_brute_force(seed, ties):
    scores, relevant = random_case(seed, ties=ties)
    ranked = rank_dense(torch.eye(scores.shape[0]), torch.from_numpy(scores).T, k=100)
    got = ranking_metrics(ranked, relevant)
    want = brute_force(scores, relevant)
    assert got == pytest.approx(want, abs=1e-12)
    # The random case must exercise positives ranked past 10 and past 100.
    assert want["recall@100"] < 1.0 and want["recall@10"] < want["recall@100"]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_query_metrics_match_brute_force_query_by_query(seed, ties):
    scores, relevant = random_case(seed, ties=ties)
    ranked = rank_dense(torch.eye(scores.shape[0]), torch.from_numpy(scores).T, k=100)
    positions, values = per_query_metrics(ranked, relevant)
    assert positions.tolist() == [q for q, rel in enumerate(relevant) if rel]  # queries without positives skipped
    for i, q in enumerate(positions.tolist()):
        want = brute_force(scores[q : q + 1], [relevant[q]])
        assert {name: v[i] for name, v in values.items()} == pytest.approx(want, abs=1e-12)
    # The aggregate is exactly the mean of the per-query values.
    assert mean_metrics(values) == ranking_metrics(ranked, relevant)
    assert len(set(values["recall@100"])) > 2  # queries differ: the test compares real per-query values


def test_dense_split_metrics_match_brute_force_with_rerank():
    rng = np.random.default_rng(7)
    q, p, d = 30, 120, 8
    queries = torch.nn.functional.normalize(torch.randn(q, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    passages = torch.nn.functional.normalize(torch.randn(p, d, generator=torch.Generator().manual_seed(1)), dim=-1)
    candidates = [rng.choice(p, size=10, replace=False).tolist() for _ in range(q)]
    positives = [c[: int(rng.integers(1, 3))] for c in candidates]

    split = PreparedSplit(
        query_texts=["q"] * q, query_tokens=Ragged.from_lists([[2]] * q), passage_texts=["p"] * p, passage_tokens=Ragged.from_lists([[2]] * p),
        positives=Ragged.from_lists(positives), candidates=Ragged.from_lists(candidates),
    )
    rows = np.arange(q)
    got = dense_split_metrics(queries, passages, split, rows)
    scores = (queries @ passages.T).numpy()
    want = brute_force(scores, [set(x) for x in positives])
    want_rerank = brute_force(scores, [set(x) for x in positives], allowed=candidates)
    assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-12)
    assert got["rerank_mrr@10"] == pytest.approx(want_rerank["mrr@10"], abs=1e-12)
    assert got["rerank_mrr@10"] > got["mrr@10"]


def test_agrees_with_torchmetrics_without_ties():
    scores, relevant = random_case(3, num_queries=25, num_passages=150)
    keep = [q for q, r in enumerate(relevant) if r]
    ranked = rank_dense(torch.eye(scores.shape[0]), torch.from_numpy(scores).T, k=150)
    ours = ranking_metrics(ranked, relevant)
    preds = torch.from_numpy(scores[keep]).flatten()
    target = torch.tensor([[p in relevant[q] for p in range(150)] for q in keep]).flatten()
    indexes = torch.arange(len(keep)).repeat_interleave(150)
    assert ours["mrr@10"] == pytest.approx(tmr.RetrievalMRR(top_k=10)(preds, target, indexes).item(), abs=1e-6)
    assert ours["recall@10"] == pytest.approx(tmr.RetrievalRecall(top_k=10)(preds, target, indexes).item(), abs=1e-6)
    assert ours["ndcg@10"] == pytest.approx(tmr.RetrievalNormalizedDCG(top_k=10)(preds, target, indexes).item(), abs=1e-6)


def test_hand_checked_example():
    # Query 0: positives at ranks 2 and 5. Query 1: positive at rank 12 (past 10). Query 2: none.
    ranked = np.array([list(range(20)), list(range(20)), list(range(20))])
    relevant = [{1, 4}, {11}, set()]
    m = ranking_metrics(ranked, relevant, ks=(1, 10))
    assert m["mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@1"] == 0
    assert m["recall@10"] == pytest.approx((2 / 2 + 0) / 2)


def test_no_relevant_passage_anywhere_is_an_error():
    with pytest.raises(ValueError, match="no query"):
        ranking_metrics(np.zeros((2, 3), dtype=int), [set(), set()])


# ---------------------------------------------------------------------------------- top-k selection
def brute_force_top(scores: np.ndarray, k: int) -> list[list[int]]:
    """Each row's first k columns of ``sorted(key=(-score, index))``, in plain Python."""
    return [sorted(range(scores.shape[1]), key=lambda p: (-float(row[p]), p))[:k] for row in scores]


def straddling_ties(seed: int, num_queries=12, num_passages=200) -> np.ndarray:
    """Scores where many columns share each row's k-th value for k around 10: a block of equal scores
    straddles rank k (some tied columns belong in the top k, others not), scattered over the row."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(num_queries, num_passages)).astype(np.float32)
    for q in range(num_queries):
        order = np.argsort(-scores[q], kind="stable")
        tied = order[int(rng.integers(0, 5)) : int(rng.integers(15, 60))]  # ranks 0-4 to 15-59 become equal
        scores[q, tied] = scores[q, tied[0]]
    scores[0, :] = 0.0  # a whole row tied
    scores[1, 100:] = 0.0  # ties below a distinct top
    scores[2, ::2] = float("-inf")  # -inf ties straddling k when k > 100
    return scores


@pytest.mark.parametrize("k", [1, 5, 10, 20, 100, 199, 200, 250])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_matches_brute_force_with_ties_at_rank_k(seed, k):
    scores = straddling_ties(seed)
    values, columns = top_k(torch.from_numpy(scores), k)
    want = brute_force_top(scores, k)
    assert columns.tolist() == want
    assert values.tolist() == [[float(scores[q, p]) for p in row] for q, row in enumerate(want)]
    assert rank_by_scores(torch.from_numpy(scores), k).tolist() == want
    # The case really has ties straddling rank k (the k-th score also outside the top k), which topk
    # alone may break the wrong way: in the whole-row tie at least, and in all other rows for k of 5-10.
    if k < scores.shape[1]:
        straddling = sum(scores[q, want[q][-1]] in np.delete(scores[q], want[q]) for q in range(len(scores)))
        assert straddling >= (len(scores) - 3 if 5 <= k <= 10 else 1)


@pytest.mark.parametrize("coarse", [False, True])
@pytest.mark.parametrize("chunks", [(1024, 32768), (5, 7), (3, 64), (1, 1)])
def test_rank_dense_in_query_and_passage_chunks_matches_brute_force(chunks, coarse):
    """Merging each passage block's top k is exact, with ties across block boundaries."""
    gen = torch.Generator().manual_seed(4)
    queries, passages = torch.randn(23, 4, generator=gen), torch.randn(150, 4, generator=gen)
    if coarse:  # few distinct scores: ties everywhere, across blocks
        queries, passages = queries.round(), passages.round()
        passages[40:90] = passages[3]  # 50 identical passages: equal scores straddling every k below
    scores = (queries @ passages.T).numpy()
    for k in (1, 10, 60, 150):
        got = rank_dense(queries, passages, k, chunk=chunks[0], passage_chunk=chunks[1])
        assert got.tolist() == brute_force_top(scores, k)


def test_rank_dense_within_chunks_match_one_block(monkeypatch):
    import two_tower.core.metrics as metrics

    gen = torch.Generator().manual_seed(5)
    queries, passages = torch.randn(9, 4, generator=gen).round(), torch.randn(30, 4, generator=gen).round()
    rng = np.random.default_rng(0)
    candidates = Ragged.from_lists([rng.choice(30, size=int(rng.integers(1, 8)), replace=False).tolist() for _ in range(9)])
    rows = np.arange(9)
    whole = rank_dense_within(queries, passages, candidates, rows)
    monkeypatch.setattr(metrics, "QUERY_CHUNK", 2)
    assert rank_dense_within(queries, passages, candidates, rows).tolist() == whole.tolist()
    scores = (queries @ passages.T).numpy()
    for q in rows:  # ties by position in the candidate list; -1 pads
        cand = candidates[q].tolist()
        want = [cand[i] for i in sorted(range(len(cand)), key=lambda i: (-float(scores[q, cand[i]]), i))]
        assert whole[q].tolist() == want + [-1] * (whole.shape[1] - len(want))


def test_rank_dense_within_gathers_candidates_bounded_in_bytes(monkeypatch):
    """1,024 queries' candidates were gathered at once: [1024, 10, 8448] float32 (346 MB) and their products as much
    again, evaluate.py's largest transient after the passage vectors. At most CANDIDATE_BYTES a gather now, and each
    query's ranking is the same as from one block (its scores the same sums)."""
    import two_tower.core.metrics as metrics

    gathered = []

    class Spy(torch.Tensor):
        def __getitem__(self, index):
            gathered.append(tuple(index.shape))
            return super().__getitem__(index)

    gen = torch.Generator().manual_seed(3)
    queries, passages = torch.randn(300, 64, generator=gen), torch.randn(500, 64, generator=gen)
    rng = np.random.default_rng(1)
    candidates = Ragged.from_lists([rng.choice(500, size=int(rng.integers(1, 11)), replace=False).tolist() for _ in range(300)])
    rows = np.arange(300)
    whole = rank_dense_within(queries, passages.as_subclass(Spy), candidates, rows).as_subclass(torch.Tensor)
    assert gathered == [(300, 10)], gathered  # all at once under the default budget (300 x 10 x 64 floats)
    gathered.clear()
    monkeypatch.setattr(metrics, "CANDIDATE_BYTES", 7 * 10 * 64 * 4, raising=False)
    pieces = rank_dense_within(queries, passages.as_subclass(Spy), candidates, rows).as_subclass(torch.Tensor)
    assert gathered == [(7, 10)] * 42 + [(6, 10)], gathered
    assert torch.equal(pieces, whole)
    monkeypatch.setattr(metrics, "CANDIDATE_BYTES", 1)  # below one query's candidates: one query at a time
    assert torch.equal(rank_dense_within(queries, passages, candidates, rows), whole)
