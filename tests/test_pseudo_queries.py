"""Pseudo-queries: crops of training passages, added as rows that learn from the teacher only."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_distill import TopicTeacherModel
from two_tower.data.batches import TripletBatches
from two_tower.data.prepared import PreparedSplit, Ragged
from two_tower.data.pseudo_queries import crop_queries, with_pseudo_queries
from two_tower.data.tokenizer import Tokenizer
from two_tower.core.errors import ConfigError
from two_tower.model.losses import DistillLoss
from two_tower.data.teacher import SentenceTransformerTeacher
from two_tower.training.train import build_datamodule, train

PASSAGES = ["the quick brown fox jumps over the lazy dog near the river bank", "a b", "", "one two three four five six seven eight", "-- ... !!"]


def test_crops_are_spans_of_their_source_passage_within_the_word_range():
    texts, sources = crop_queries(PASSAGES, 200, 3, 5, seed=7)
    assert len(texts) == 200 and set(sources.tolist()) <= {0, 1, 2, 3, 4}
    for text, source in zip(texts, sources):
        words, passage = text.split(), PASSAGES[source].split()
        expected = min(3, len(passage))  # a passage shorter than min_words gives all its words
        assert expected <= len(words) <= 5 or (not passage and not words)
        starts = [i for i in range(len(passage) - len(words) + 1) if passage[i : i + len(words)] == words]
        assert starts, (text, source)  # contiguous, in order
    again, again_sources = crop_queries(PASSAGES, 200, 3, 5, seed=7)
    assert again == texts and (again_sources == sources).all()  # deterministic in the seed
    assert crop_queries(PASSAGES, 200, 3, 5, seed=8)[0] != texts
    with pytest.raises(ValueError, match="min_words"):
        crop_queries(PASSAGES, 5, 6, 5, seed=0)


def test_pseudo_rows_are_appended_after_the_labelled_rows_with_their_source_as_positive():
    tokenizer = Tokenizer.build(PASSAGES + ["what jumps"], min_freq=1)
    split = PreparedSplit(
        query_texts=["what jumps"], query_tokens=Ragged.from_lists(tokenizer.encode_queries(["what jumps"])),
        passage_texts=PASSAGES, passage_tokens=Ragged.from_lists(tokenizer.encode_passages(PASSAGES)),
        positives=Ragged.from_lists([[0]]), candidates=Ragged.from_lists([[0, 1]]),
    )
    out = with_pseudo_queries(split, tokenizer, count=30, min_words=2, max_words=4, seed=1)
    texts, sources = crop_queries(PASSAGES, 30, 2, 4, seed=1)
    # the empty passage and one of punctuation alone give no query (a crop of "-- ... !!" was a query of no token)
    kept = [i for i, t in enumerate(texts) if t and int(sources[i]) != 4]
    assert len(kept) < len([t for t in texts if t])
    assert out.num_queries == 1 + len(kept) and out.query_texts[0] == "what jumps"
    assert out.query_texts[1:] == [texts[i] for i in kept]
    assert out.query_tokens[0].tolist() == split.query_tokens[0].tolist()
    assert out.candidates[0].tolist() == [0, 1]
    for row, i in enumerate(kept, start=1):
        source = int(sources[i])
        assert out.positives[row].tolist() == [source]
        # the candidates of the labelled query listing the source (source first), else the source alone
        assert out.candidates[row].tolist() == ({0: [0, 1], 1: [1, 0]}.get(source) or [source])
        assert out.query_tokens[row].tolist() == tokenizer.encode_queries([texts[i]])[0]
    assert out.passage_tokens is split.passage_tokens
    batch = TripletBatches(out, labelled_rows=1)[np.array([[0, 0], [1, out.positives[1][0]], [2, out.positives[2][0]]])]
    assert batch["labelled"].tolist() == [True, False, False]


def test_unlabelled_rows_add_only_their_kl_term():
    torch.manual_seed(0)
    q, p = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    mask = torch.rand(4, 6) > 0.3
    teacher = torch.rand(4, 6)
    args = (q, p, torch.tensor([0, 1, 2, 3]), mask, torch.zeros(4, 0, dtype=torch.long))
    loss = DistillLoss(temperature=0.1, label_weight=0.4)
    full = loss(*args, teacher_scores=teacher)
    assert loss(*args, teacher_scores=teacher, labelled=torch.ones(4, dtype=torch.bool))["loss"].item() == pytest.approx(full["loss"].item(), rel=1e-6)
    part = loss(*args, teacher_scores=teacher, labelled=torch.tensor([True, False, True, False]))
    labelled_only = loss(q[[0, 2]], p, torch.tensor([0, 2]), mask[[0, 2]], torch.zeros(2, 0, dtype=torch.long), teacher_scores=teacher[[0, 2]])
    assert part["cross_entropy"].item() == pytest.approx(labelled_only["cross_entropy"].item(), rel=1e-6)
    assert part["kl"].item() == pytest.approx(full["kl"].item(), rel=1e-6)  # every row keeps its KL term
    assert part["loss"].item() == pytest.approx(0.4 * part["cross_entropy"].item() + 0.6 * full["kl"].item(), rel=1e-6)


class TopicTeacherWithDimension(TopicTeacherModel):
    def get_sentence_embedding_dimension(self):
        return self.num_topics


def test_training_with_pseudo_queries_encodes_them_once_in_their_own_cache_entry(tiny_cfg, monkeypatch):
    monkeypatch.setattr(SentenceTransformerTeacher, "_load", lambda self: TopicTeacherWithDimension())
    TopicTeacherModel.calls = 0
    cfg = tiny_cfg("loss=distill", "data.pseudo_queries.count=300", "negatives=random", "trainer.max_epochs=1", "logger=csv")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    labelled = datamodule.num_labelled
    assert labelled == datamodule.meta["reports"]["train"]["kept"]
    assert datamodule.train.num_queries == labelled + 300
    assert datamodule.teacher_vectors.queries.shape[0] == labelled + 300
    assert TopicTeacherModel.calls == 3  # labelled queries, passages, pseudo-queries
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss_epoch"]) and np.isfinite(metrics["train/kl"])
    assert TopicTeacherModel.calls == 3  # the second setup read both cache entries
    entries = list((datamodule.cache_dir / "teacher").glob("*"))
    assert len(entries) == 2


def test_pseudo_queries_need_the_teacher(tiny_cfg):
    with pytest.raises(ConfigError, match="pseudo_queries.count=10.*loss=distill"):
        train(tiny_cfg("data.pseudo_queries.count=10"))
    with pytest.raises(ConfigError, match="min_words"):
        train(tiny_cfg("loss=distill", "data.pseudo_queries.count=10", "data.pseudo_queries.min_words=9", "data.pseudo_queries.max_words=3"))


def test_a_pseudo_query_takes_the_candidates_of_the_first_labelled_query_listing_its_source():
    """Several labelled queries list the source passage: the first one's candidates (source first) are the pseudo row's.
    Written before through numpy's assignment at repeated indices, whose outcome numpy leaves unspecified."""
    tokenizer = Tokenizer.build(PASSAGES + ["what jumps", "who sleeps", "where"], min_freq=1)
    queries = ["what jumps", "who sleeps", "where"]
    split = PreparedSplit(
        query_texts=queries, query_tokens=Ragged.from_lists(tokenizer.encode_queries(queries)),
        passage_texts=PASSAGES, passage_tokens=Ragged.from_lists(tokenizer.encode_passages(PASSAGES)),
        positives=Ragged.from_lists([[0], [2], [3]]), candidates=Ragged.from_lists([[0, 1, 2], [2, 1], [3, 2, 0]]),
    )
    out = with_pseudo_queries(split, tokenizer, count=40, min_words=2, max_words=4, seed=3)
    # query 0 lists passages 0 and 1 first (queries 2 and 1 list them later: theirs would be [0, 3, 2] and [1, 2]); query 2
    # alone lists 3; passages 2 (empty) and 4 (punctuation) give no pseudo-query
    first_listing = {0: [0, 1, 2], 1: [1, 0, 2], 3: [3, 2, 0]}
    sources = {int(out.positives[row][0]) for row in range(3, out.num_queries)}
    assert sources == {0, 1, 3}
    for row in range(3, out.num_queries):
        source = int(out.positives[row][0])
        assert out.candidates[row].tolist() == first_listing.get(source, [source])
