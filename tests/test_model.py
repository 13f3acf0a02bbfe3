"""Towers ignore padding; losses mask duplicates and selected passages; values match hand computations."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from two_tower.data.tokenizer import PAD, UNK
from two_tower.model.bag import TermStatistics, vocabulary_keys
from two_tower.model.embedding import OpenEmbedding
from two_tower.model.encoders import RNNEncoder, TwoTower
from two_tower.model.losses import InfoNCELoss, TripletLoss


def attach_bags(towers_or_encoder, words, stats=None):
    """Vocabulary keys and (default: empty) corpus statistics for every bag-of-words path."""
    bags = towers_or_encoder.bags() if hasattr(towers_or_encoder, "bags") else [towers_or_encoder.bag]
    stats = stats or TermStatistics(np.zeros(0, np.int64), np.zeros(0, np.int64), 10)
    for bag in bags:
        bag.set_vocabulary(words)
        bag.set_statistics(stats)


def make_encoder(cell, pooling, bidirectional, num_layers=1, bag_dim=0):
    torch.manual_seed(0)
    emb = OpenEmbedding(50, 8)
    encoder = RNNEncoder(emb, cell=cell, hidden_size=16, num_layers=num_layers, bidirectional=bidirectional, pooling=pooling, dim=12, bag_dim=bag_dim).eval()
    if bag_dim:
        attach_bags(encoder, [PAD, UNK] + [f"w{i}" for i in range(48)])
    return encoder


@pytest.mark.parametrize(
    "cell,pooling,bidirectional", list(itertools.product(["rnn", "gru", "lstm"], ["last", "mean", "max"], [False, True]))
)
def test_padding_does_not_change_vectors(cell, pooling, bidirectional):
    enc = make_encoder(cell, pooling, bidirectional, num_layers=2, bag_dim=10 if pooling == "mean" else 0)
    seqs = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [3], [4, 4, 9, 4]]
    with torch.no_grad():
        alone = torch.cat([enc(torch.tensor([s]), torch.tensor([len(s)])) for s in seqs])
        for extra in (0, 5):  # pad to the longest, and to the longest + 5
            width = max(map(len, seqs)) + extra
            ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
            batched = enc(ids, torch.tensor([len(s) for s in seqs]))
            torch.testing.assert_close(batched, alone, atol=1e-6, rtol=1e-5)
    assert torch.allclose(alone.norm(dim=-1), torch.ones(len(seqs)))


def test_shared_and_separate_towers():
    def factory(**kw):
        return RNNEncoder(cell="gru", hidden_size=8, dim=4, **kw)

    shared = TwoTower(20, 6, factory, shared_towers=True)
    separate = TwoTower(20, 6, factory, shared_towers=False)
    assert shared.query_encoder is shared.passage_encoder
    assert separate.query_encoder is not separate.passage_encoder
    assert separate.query_encoder.embedding is separate.passage_encoder.embedding
    frozen = TwoTower(20, 6, factory, freeze_embeddings=True)
    assert not frozen.embedding.weight.requires_grad


def test_bag_towers_share_signatures_and_split_the_score():
    def factory(**kw):
        return RNNEncoder(cell="gru", hidden_size=8, dim=4, bag_dim=12, bag_mix=0.3, **kw)

    separate = TwoTower(40, 6, factory, shared_towers=False)
    q, p = separate.query_encoder, separate.passage_encoder
    assert q.output_dim == 16
    attach_bags(separate, [PAD, UNK] + [f"w{i}" for i in range(38)])
    ids, lengths = torch.tensor([[4, 5, 6]]), torch.tensor([3])
    with torch.no_grad():
        qv, pv = q(ids, lengths), p(ids, lengths)
        score = (qv * pv).sum()
        rnn_cos = (qv[0, :4] * pv[0, :4]).sum() / 0.7
        bag_cos = (qv[0, 4:] * pv[0, 4:]).sum() / 0.3
    assert qv.norm().item() == pytest.approx(1.0, abs=1e-6)
    # Separate towers draw the same signatures from the same keys, so their bags are comparable.
    assert bag_cos.item() == pytest.approx(1.0, abs=1e-5)  # same text, same weights: identical bags
    assert score.item() == pytest.approx((0.7 * rnn_cos + 0.3 * bag_cos).item(), abs=1e-5)


def test_passage_tower_weighs_bag_words_by_the_passage_idf_power():
    words = [PAD, UNK] + [f"w{i}" for i in range(38)]
    ids, lengths = torch.tensor([[4, 5, 6, 6]]), torch.tensor([4])
    for power in (1.0, 0.5):
        torch.manual_seed(0)
        towers = TwoTower(40, 6, lambda **kw: RNNEncoder(cell="gru", hidden_size=8, dim=4, bag_dim=32, bag_passage_idf_power=power, **kw))
        keys = np.sort(vocabulary_keys(words)[[4, 5, 6]])
        attach_bags(towers, words, TermStatistics(keys, np.array([1, 3, 9]), 10))  # three different IDFs
        with torch.no_grad():
            q, p = towers.encode_queries(ids, lengths), towers.encode_passages(ids, lengths)
        torch.testing.assert_close(q[:, :4], p[:, :4])  # the RNN part does not depend on the role
        bag = towers.bags()[0]
        with torch.no_grad():
            torch.testing.assert_close(p[:, 4:] / p[:, 4:].norm(), bag(ids, lengths, passages=True))
            torch.testing.assert_close(q[:, 4:] / q[:, 4:].norm(), bag(ids, lengths))
        assert torch.allclose(q, p) == (power == 1.0)


def unit(x):
    return F.normalize(torch.tensor(x, dtype=torch.float32), dim=-1)


def test_infonce_masks_selected_and_duplicate_passages():
    q = unit([[1.0, 0.0], [0.0, 1.0]])
    p = unit([[1.0, 0.1], [0.1, 1.0], [0.7, 0.7]])
    positive_column = torch.tensor([0, 1])
    # Passage 2 is selected for query 0 too (a second positive): it must not be a negative for row 0.
    negative_mask = torch.tensor([[False, True, False], [True, False, True]])
    loss = InfoNCELoss(temperature=0.1)(q, p, positive_column, negative_mask, torch.zeros(2, 0, dtype=torch.long))
    sim = q @ p.T / 0.1
    row0 = -torch.log_softmax(sim[0, [0, 1]], 0)[0]
    row1 = -torch.log_softmax(sim[1, [0, 1, 2]], 0)[1]
    assert loss["loss"].item() == pytest.approx(((row0 + row1) / 2).item(), rel=1e-6)


def test_triplet_with_explicit_negatives_matches_formula():
    q = unit([[1.0, 0.0], [0.0, 1.0]])
    p = unit([[1.0, 0.2], [0.3, 1.0], [1.0, 1.0], [0.0, 1.0]])
    out = TripletLoss(margin=0.5)(q, p, torch.tensor([0, 1]), torch.ones(2, 4, dtype=torch.bool) & ~torch.eye(2, 4, dtype=torch.bool), torch.tensor([[2], [3]]))
    d = 1 - q @ p.T
    want = (F.relu(d[0, 0] - d[0, 2] + 0.5) + F.relu(d[1, 1] - d[1, 3] + 0.5)) / 2
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)


def test_triplet_in_batch_hardest_and_all():
    q = unit([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    p = unit([[1.0, 0.1], [0.1, 1.0], [0.9, 1.0]])
    mask = ~torch.eye(3, dtype=torch.bool)
    none = torch.zeros(3, 0, dtype=torch.long)
    d = 1 - q @ p.T
    hardest = TripletLoss(margin=1.0, in_batch="hardest")(q, p, torch.arange(3), mask, none)["loss"]
    want_hardest = torch.stack([F.relu(d[i, i] - d[i][mask[i]].min() + 1.0) for i in range(3)]).mean()
    assert hardest.item() == pytest.approx(want_hardest.item(), rel=1e-6)
    everything = TripletLoss(margin=1.0, in_batch="all")(q, p, torch.arange(3), mask, none)["loss"]
    want_all = torch.cat([F.relu(d[i, i] - d[i][mask[i]] + 1.0) for i in range(3)]).mean()
    assert everything.item() == pytest.approx(want_all.item(), rel=1e-6)


def test_row_without_any_valid_negative_contributes_nothing():
    q = unit([[1.0, 0.0]])
    p = unit([[1.0, 0.0]])
    out = TripletLoss(margin=0.2)(q, p, torch.tensor([0]), torch.zeros(1, 1, dtype=torch.bool), torch.zeros(1, 0, dtype=torch.long))
    assert out["loss"].item() == 0.0
