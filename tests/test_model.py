"""Towers ignore padding; losses mask duplicates and selected passages; values match hand computations."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from two_tower.data.tokenizer import PAD, UNK, stem_groups
from two_tower.model.encoders import BagOfWords, RNNEncoder, TwoTower
from two_tower.model.losses import InfoNCELoss, TripletLoss


def make_encoder(cell, pooling, bidirectional, num_layers=1, bag_dim=0):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8, padding_idx=0)
    return RNNEncoder(emb, cell=cell, hidden_size=16, num_layers=num_layers, bidirectional=bidirectional, pooling=pooling, dim=12, bag_dim=bag_dim).eval()


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


def test_bag_of_words_matches_its_formula():
    bag = BagOfWords(vocab_size=30, dim=6)
    weights = torch.rand(30)
    bag.load_term_weights(weights)
    texts = [[3, 7, 3, 3, 9], [5, 1], [7, 7, 1, 1]]  # 1 = UNK: left out, like padding
    ids = torch.tensor([t + [0] * (5 - len(t)) for t in texts])
    with torch.no_grad():
        out = bag(ids, torch.tensor([len(t) for t in texts]))
        for row, text in zip(out, texts):
            want = sum((1 + math.log(text.count(w))) * weights[w] * bag.signatures[w] for w in set(text) if w > 1)
            torch.testing.assert_close(row, want / want.norm(), atol=1e-6, rtol=1e-5)
    assert bag.weights.weight[:2].abs().sum().item() == 0.0 and not bag.signatures.requires_grad
    # Signatures: +-1/sqrt(dim), nearly orthogonal, zero for PAD and UNK.
    assert set((bag.signatures[2:] * 6**0.5).round().unique().tolist()) == {-1.0, 1.0}
    assert bag.signatures[:2].abs().sum().item() == 0.0


def test_bag_towers_share_signatures_and_split_the_score():
    def factory(**kw):
        return RNNEncoder(cell="gru", hidden_size=8, dim=4, bag_dim=12, bag_mix=0.3, **kw)

    separate = TwoTower(40, 6, factory, shared_towers=False)
    q, p = separate.query_encoder, separate.passage_encoder
    assert q.output_dim == 16
    # Separate towers draw the same random signatures, so their bags are comparable.
    torch.testing.assert_close(q.bag.signatures, p.bag.signatures)
    separate.load_bag(torch.arange(40, dtype=torch.float32))
    assert p.bag.weights.weight[5].item() == 5.0 and q.bag.weights.weight[0].item() == 0.0
    ids, lengths = torch.tensor([[4, 5, 6]]), torch.tensor([3])
    with torch.no_grad():
        qv, pv = q(ids, lengths), p(ids, lengths)
        score = (qv * pv).sum()
        rnn_cos = (qv[0, :4] * pv[0, :4]).sum() / 0.7
        bag_cos = (qv[0, 4:] * pv[0, 4:]).sum() / 0.3
    assert qv.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert bag_cos.item() == pytest.approx(1.0, abs=1e-5)  # same text, same weights: identical bags
    assert score.item() == pytest.approx((0.7 * rnn_cos + 0.3 * bag_cos).item(), abs=1e-5)


def test_stem_groups_share_signatures_and_document_frequency():
    from two_tower.data.prepared import PreparedSplit, Ragged

    words = [PAD, UNK, "run", "runs", "running", "cat", "cats", "dog"]
    groups = stem_groups(words, "english")
    assert groups[0] == 0 and groups[1] == 1
    assert groups[2] == groups[3] == groups[4] and groups[5] == groups[6] != groups[7] != groups[2]
    towers = TwoTower(len(words), 4, lambda **kw: RNNEncoder(cell="gru", hidden_size=4, dim=4, bag_dim=8, **kw))
    split = PreparedSplit(query_texts=["q"], query_tokens=Ragged.from_lists([[2]]), passage_texts=["a", "b", "c"],
                          passage_tokens=Ragged.from_lists([[2, 5], [3, 7], [6]]), positives=Ragged.from_lists([[0]]), candidates=Ragged.from_lists([[0, 1, 2]]))
    idf = split.idf(len(words), groups)
    assert idf[2] == idf[4] == pytest.approx(math.log(4 / 2.5))  # "run" and "runs" are in two passages
    assert idf[5] == pytest.approx(math.log(4 / 2.5)) and idf[7] == pytest.approx(math.log(4 / 1.5))
    towers.load_bag(idf, groups)
    signatures = towers.query_encoder.bag.signatures
    torch.testing.assert_close(signatures[2], signatures[4])
    assert not torch.allclose(signatures[2], signatures[5])
    with torch.no_grad():
        a = towers.query_encoder.bag(torch.tensor([[2]]), torch.tensor([1]))
        b = towers.query_encoder.bag(torch.tensor([[4]]), torch.tensor([1]))
    torch.testing.assert_close(a, b)  # "run" matches "running" exactly in the bag
    with torch.no_grad():  # "run runs cat": the stem "run" is met twice, so it counts 1 + log 2 times
        both = towers.query_encoder.bag(torch.tensor([[2, 3, 5]]), torch.tensor([3]))[0]
    want = (1 + math.log(2)) * idf[2] * signatures[2] + idf[5] * signatures[5]
    torch.testing.assert_close(both, want / want.norm(), atol=1e-6, rtol=1e-5)

    # Frozen signatures are not saved; a fresh model loading the state draws the same ones from the groups.
    state = towers.state_dict()
    assert not any(k.endswith("signatures") for k in state) and any(k.endswith("bag.groups") for k in state)
    fresh = TwoTower(len(words), 4, lambda **kw: RNNEncoder(cell="gru", hidden_size=4, dim=4, bag_dim=8, **kw))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.query_encoder.bag.signatures, signatures)
    state["query_encoder.bag.checksum"] = state["query_encoder.bag.checksum"] + 1  # as if the hash had changed
    with pytest.raises(RuntimeError, match="do not match the saved checksum"):
        fresh.load_state_dict(state)
    assert fresh.to(torch.bfloat16).query_encoder.bag.checksum.dtype == torch.int64  # casting the model leaves it exact


def test_idf_matches_a_count_over_passages():
    from two_tower.data.prepared import PreparedSplit, Ragged

    passages = [[2, 3, 3], [3, 4], [5]]
    split = PreparedSplit(query_texts=["q"], query_tokens=Ragged.from_lists([[2]]), passage_texts=["a", "b", "c"],
                          passage_tokens=Ragged.from_lists(passages), positives=Ragged.from_lists([[0]]), candidates=Ragged.from_lists([[0, 1, 2]]))
    idf = split.idf(vocab_size=7)
    for word in range(1, 7):
        df = sum(word in p for p in passages)
        assert idf[word] == pytest.approx(math.log(4 / (df + 0.5)), rel=1e-6)
    assert idf[0] == 0.0


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
