"""A labelled test split is scored once, after training, with the best-on-validation checkpoint; each
query's values are kept beside the aggregates (per_query/*.parquet)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from two_tower.core import per_query
from two_tower.data.synthetic import make_rows
from two_tower.training.train import train


def _metrics_csv(cfg) -> pd.DataFrame:
    return pd.read_csv(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")


def test_test_split_logged_once_with_the_best_checkpoint(tiny_cfg):
    cfg = tiny_cfg("logger=csv", "trainer.max_epochs=2", "data.synthetic_rows.test_rows=80")
    metrics = train(cfg)
    csv = _metrics_csv(cfg)
    assert "test/mrr@10" in csv.columns
    rows = csv[csv["test/mrr@10"].notna()]
    assert len(rows) == 1  # once
    assert metrics["test/mrr@10"] == pytest.approx(float(rows["test/mrr@10"].iloc[0]), abs=1e-6)
    assert 0.0 < metrics["test/mrr@10"] <= 1.0

    out = cfg.paths.output_dir + "/per_query"
    test = per_query.read(out + "/test.parquet", "mrr@10")
    assert len(test) == 80  # every synthetic row has a selected passage
    assert test["mrr@10"].mean() == pytest.approx(metrics["test/mrr@10"], abs=1e-6)
    best_ckpt = next((Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt")).name
    assert set(test["checkpoint"]) == {best_ckpt}  # scored with the best-on-validation checkpoint
    # Validation per query: the best epoch (by val/mrr@10) and the last, each the mean logged that epoch.
    val = csv[csv["val/mrr@10"].notna()].drop_duplicates("epoch", keep="last")
    best, last = per_query.read(out + "/val_best.parquet", "mrr@10"), per_query.read(out + "/val_last.parquet", "mrr@10")
    assert int(last["epoch"].iloc[0]) == int(val["epoch"].iloc[-1])
    best_row = val.loc[val["val/mrr@10"].idxmax()]
    assert int(best["epoch"].iloc[0]) == int(best_row["epoch"])
    assert best["mrr@10"].mean() == pytest.approx(float(best_row["val/mrr@10"]), abs=1e-6)
    assert test["checkpoint"].iloc[0].startswith(f"epoch{int(best_row['epoch']):02d}-")
    # Every metric is kept per query, with the query id and text (compare checks paired runs scored the same queries).
    assert set(test.columns) >= {"qid", "query", "mrr@10", "recall@10", "ndcg@10", "rerank_mrr@10"}


def _write_local(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / f"{name}-00000-of-00001.parquet", index=False)


def test_unlabelled_test_split_is_skipped_with_one_line(tmp_path, tiny_cfg, caplog):
    rows = make_rows(420, seed=3)
    data = tmp_path / "data"
    _write_local(data, "train", rows[:300])
    _write_local(data, "validation", rows[300:360])
    unlabelled = [{**r, "passages": {**r["passages"], "is_selected": [0] * len(r["passages"]["is_selected"])}} for r in rows[360:]]
    _write_local(data, "test", unlabelled)
    cfg = tiny_cfg("data=local", f"data.path={data}", "logger=csv", "data.batch_size=32", "data.tokenizer.min_freq=1")
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    assert not any(k.startswith("test/") for k in metrics)
    assert "test/mrr@10" not in _metrics_csv(cfg).columns
    assert "val/mrr@10" in metrics
    skipped = [r for r in caplog.records if "test split skipped" in r.getMessage()]
    assert len(skipped) == 1


def test_val_best_is_the_epoch_the_checkpoint_keeps_whatever_the_optimized_metric(tiny_cfg):
    """optimized_metric chooses the checkpoint (what sweeps maximise and test scores) and val_best.parquet:
    one epoch, the first with the best logged value, and fit_ended.json says training ended."""
    cfg = tiny_cfg("logger=csv", "trainer.max_epochs=4", "optimized_metric=val/recall@100", "data.synthetic_rows.test_rows=40")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    val = _metrics_csv(cfg).dropna(subset=["val/recall@100"]).drop_duplicates("epoch", keep="last")
    first_best = int(val.loc[val["val/recall@100"].idxmax(), "epoch"])  # idxmax: the first of ties
    best = per_query.read(out / "per_query" / "val_best.parquet", "recall@100")
    assert int(best["epoch"].iloc[0]) == first_best
    assert next((out / "checkpoints").glob("epoch*.ckpt")).name.startswith(f"epoch{first_best:02d}-")
    assert per_query.read(out / "per_query" / "test.parquet", "mrr@10")["checkpoint"].iloc[0].startswith(f"epoch{first_best:02d}-")
    ended = json.loads((out / "per_query" / per_query.FIT_ENDED).read_text())
    # the rows trained and validated on, by content, as the checkpoints record them (compare splits runs on other rows)
    assert set(ended["data"]) == {"train", "validation"} and all(len(d) >= 12 for d in ended["data"].values()), ended


def test_a_resumed_run_is_unfinished_until_it_ends_again(tmp_path):
    from types import SimpleNamespace

    from two_tower.training.callbacks import PerQueryWriter

    writer = PerQueryWriter(str(tmp_path))
    (tmp_path / per_query.FIT_ENDED).write_text("{}")  # it had ended; now resumed to train on
    writer.on_fit_start(SimpleNamespace(is_global_zero=True), None)
    assert not (tmp_path / per_query.FIT_ENDED).exists()
    writer.on_fit_end(SimpleNamespace(is_global_zero=True, current_epoch=3, global_step=30), None)
    assert (tmp_path / per_query.FIT_ENDED).is_file()


def test_the_carve_script_reads_every_train_shard_and_never_writes_into_its_source(tmp_path):
    """experiments/comparisons/carve_test_split.py read the first train shard only (a second shard's rows were lost), and
    given its source as the output it rewrote the source's train shard, then failed with a traceback (a probe)."""
    import subprocess
    import sys

    import datasets
    import pyarrow.parquet as pq

    from tests.conftest import ROOT

    source = tmp_path / "source"
    source.mkdir()
    rows = make_rows(30, seed=4)
    datasets.Dataset.from_list(rows[:20]).to_parquet(str(source / "train-00000-of-00002.parquet"))
    datasets.Dataset.from_list(rows[20:]).to_parquet(str(source / "train-00001-of-00002.parquet"))
    datasets.Dataset.from_list(make_rows(5, seed=5)).to_parquet(str(source / "validation-00000-of-00001.parquet"))
    script = [sys.executable, "experiments/comparisons/carve_test_split.py"]
    done = subprocess.run([*script, str(source), str(tmp_path / "out"), "--rows", "4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    train, test = (pq.read_table(tmp_path / "out" / f"{s}-00000-of-00001.parquet").to_pylist() for s in ("train", "test"))
    assert len(train) == 26 and len(test) == 4
    assert sorted(r["query"] for r in train + test) == sorted(r["query"] for r in rows)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    refused = subprocess.run([*script, str(source), str(source), "--rows", "4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "the source folder or a folder inside it" in refused.stderr
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_test_split_null_means_no_test_split_with_generated_rows_too(tiny_cfg):
    """data=synthetic with test_rows scored a test split whatever data.test_split said (null: never; a probe)."""
    from two_tower.training.train import build_datamodule

    cfg = tiny_cfg("data.synthetic_rows.test_rows=20", "data.test_split=null")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert dm.test is None
    cfg = tiny_cfg("data.synthetic_rows.test_rows=20")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert dm.test is not None and dm.test.num_queries == 20
