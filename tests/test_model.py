"""Towers ignore padding; losses mask duplicates and selected passages; values match hand computations."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from two_tower.model.encoders import RNNEncoder, TwoTower
from two_tower.model.losses import InfoNCELoss, TripletLoss


def make_encoder(cell, pooling, bidirectional, num_layers=1):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8, padding_idx=0)
    return RNNEncoder(emb, cell=cell, hidden_size=16, num_layers=num_layers, bidirectional=bidirectional, pooling=pooling, dim=12).eval()


@pytest.mark.parametrize(
    "cell,pooling,bidirectional", list(itertools.product(["rnn", "gru", "lstm"], ["last", "mean", "max"], [False, True]))
)
def test_padding_does_not_change_vectors(cell, pooling, bidirectional):
    enc = make_encoder(cell, pooling, bidirectional, num_layers=2)
    seqs = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [3]]
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
