"""Fuzz: malformed v1.1 rows never crash loading or batching; each is skipped and counted, good rows survive."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from two_tower.data.batches import TripletBatches
from two_tower.data.msmarco import DataSourceError, validate_rows
from two_tower.data.prepared import PreparedSplit
from two_tower.data.tokenizer import Tokenizer
from two_tower.data.sampling import RandomNegatives

EXAMPLES = 300

text = st.one_of(
    st.text(max_size=40),  # any unicode: combining marks, RTL, emoji, control characters, surrogates
    st.sampled_from(["", " ", "\u200b", "\x00", "naïve café", "日本語のテキスト", "🙂🙂", "a\nb\tc"]),
    st.builds(lambda n: "word " * n, st.integers(5_000, 20_000)),  # enormous passage
)
anything = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(), text, st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def rows(draw):
    n = draw(st.integers(0, 6))
    texts = draw(st.lists(st.one_of(text, anything), min_size=n, max_size=n))
    flags = draw(st.lists(st.one_of(st.sampled_from([0, 1]), anything), min_size=draw(st.sampled_from([n, n, n, max(n - 1, 0), n + 1])), max_size=n + 1))
    passages = draw(st.one_of(st.just({"passage_text": texts, "is_selected": flags}), st.just({"passage_text": texts}), anything))
    row = {"query": draw(st.one_of(text, anything)), "passages": passages}
    if draw(st.booleans()):
        row.pop(draw(st.sampled_from(["query", "passages"])))
    return draw(st.one_of(st.just(row), anything))


def good_row(i):
    return {"query": f"goodquery{i} about rivers", "passages": {"passage_text": [f"river {i} flows", "desert sand", "mountain snow"], "is_selected": [1, 0, 0]}}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(rows(), max_size=12), st.integers(0, 3), st.randoms(use_true_random=False))
def test_malformed_rows_are_skipped_counted_and_good_rows_survive(bad, n_good, random):
    mixed = bad + [good_row(i) for i in range(n_good)]
    random.shuffle(mixed)
    try:
        kept, report = validate_rows(mixed, "train")
    except DataSourceError:
        assert n_good == 0  # only a split with nothing usable may fail, and it fails clearly
        return
    assert report.total == len(mixed)
    assert report.kept + sum(report.skipped.values()) == len(mixed)
    kept_queries = {r.query for r in kept}
    assert {good_row(i)["query"] for i in range(n_good)} <= kept_queries
    for r in kept:  # everything kept is fit for training
        assert r.query.strip() and all(isinstance(t, str) and t.strip() for t in r.passages)
        assert any(r.selected) and not all(r.selected)

    # Tokenizing and batching what was kept never crashes either.
    tokenizer = Tokenizer.build([r.query for r in kept] + [p for r in kept for p in r.passages], min_freq=1, max_passage_len=64)
    split = PreparedSplit.from_rows(kept, tokenizer)
    rows_ = np.arange(split.num_queries)
    rng = np.random.default_rng(0)
    plan = np.concatenate([rows_[:, None], [[int(split.positives[r][0])] for r in rows_], RandomNegatives(1).sample(split, rows_, rng)], axis=1)
    batch = TripletBatches(split)[plan]
    assert batch["passage_ids"].shape[1] <= 64 and (batch["passage_lengths"] >= 1).all()
