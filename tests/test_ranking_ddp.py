"""Validation on two processes (DDP on CPU, gloo): each ranks its share of the queries against the
gathered passages, the metric sums meet through a torchmetrics Metric, and the numbers (means and each
query's values) are those of one process."""

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from two_tower.training.callbacks import PerQueryWriter
from two_tower.training.train import build_datamodule, build_module


def _validate(cfg, devices: int, out_dir):
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    module = build_module(cfg, dm)
    trainer = L.Trainer(
        # ddp_fork: the processes start from this one, with its modules imported (a spawned one imports torch and
        # Lightning again, most of a test's time); what is checked, the numbers over processes, is the same
        accelerator="cpu", devices=devices, strategy="ddp_fork" if devices > 1 else "auto", logger=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        callbacks=[PerQueryWriter(str(out_dir))], num_sanity_val_steps=0,
    )
    results = trainer.validate(module, datamodule=dm, verbose=False)
    return {k: float(v) for k, v in results[0].items()}, pd.read_parquet(out_dir / "val_last.parquet"), dm


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(tiny_cfg, tmp_path):
    # 60 queries in 4 batches, 2 per process; 480 passages in 30 batches.
    cfg = tiny_cfg("data.synthetic_rows.val_rows=60", "data.eval_batch_size=16", "threads=1")
    one, one_table, dm = _validate(cfg, 1, tmp_path / "one")
    two, two_table, _ = _validate(cfg, 2, tmp_path / "two")
    assert sorted(one) == sorted(f"val/{m}" for m in ("mrr@10", "ndcg@10", "recall@1", "recall@10", "recall@100", "rerank_mrr@10"))
    assert two == one
    # Every evaluated query once, with the same values, whichever process ranked it.
    assert len(two_table) == len(one_table) == len(dm.val.evaluated_queries())
    assert two_table["qid"].is_unique
    key = lambda t: t.sort_values("qid").reset_index(drop=True)
    pd.testing.assert_frame_equal(key(two_table), key(one_table), check_exact=True)
    # Queries differ (an untrained model: low but real rankings), so the comparison is of real values.
    assert 0 < one["val/recall@100"] < 1 and one_table["rerank_mrr@10"].nunique() > 2
    # One process: the logged mean is the float32 of the per-query values' Python sum / count.
    assert np.float32(sum(one_table["ndcg@10"].tolist()) / len(one_table)) == np.float32(one["val/ndcg@10"])


def test_training_batches_over_processes_zero_each_is_refused_and_a_remainder_is_said(tiny_cfg, caplog):
    """Every process trains the same number of batches: batches beyond a multiple of the processes are left out
    (said, once), and data that leaves a process none is one line (it trained nothing and exited 0)."""
    import logging
    from types import SimpleNamespace

    from two_tower.core.errors import ConfigError

    dm = build_datamodule(tiny_cfg("data.synthetic_rows.train_rows=60", "data.batch_size=25"))
    dm.prepare_data()
    dm.setup("fit")
    dm.trainer = SimpleNamespace(global_rank=0, world_size=2, fit_loop=None)
    with caplog.at_level(logging.INFO, logger="two_tower"):
        sampler = dm.train_sampler()
    assert len(sampler) == 1 and "1 of the 3 training batches an epoch are left out: each of the 2 processes trains 1" in caplog.text
    dm.trainer = SimpleNamespace(global_rank=0, world_size=4, fit_loop=None)
    with pytest.raises(ConfigError, match=r"data.batch_size=25: the training split's 60 rows make 3 batch\(es\), fewer than the 4 processes"):
        dm.train_sampler()


def test_every_process_gets_an_evaluation_batch_and_every_item_is_encoded():
    """Each rank's share of a split's passages or queries is at least one batch (Lightning refuses a rank with an
    empty loader), also with fewer items than processes (4 queries over 3 processes left the third none; 1 query
    over 2, the second), and together the shares are every item; a rank with no item of its own repeats one a lower
    rank encodes (the gathers drop it)."""
    from two_tower.data.batches import LengthSortedBatches

    for items, world in [(1, 2), (2, 3), (3, 2), (4, 3), (7, 4), (10, 4), (300, 2), (1000, 3), (5000, 2)]:
        lengths = np.arange(items) % 7 + 1
        shares = [LengthSortedBatches(lengths, 512, rank, world).batches for rank in range(world)]
        assert all(len(share) >= 1 for share in shares), (items, world)
        encoded = [int(i) for share in shares for batch in share for i in batch]
        assert set(encoded) == set(range(items)) and len(encoded) == max(items, world), (items, world)
        assert all(len(batch) <= 512 for share in shares for batch in share)


@pytest.mark.slow
def test_fewer_queries_than_processes_give_the_numbers_of_one(tiny_cfg, tmp_path):
    """One validation query on two processes: the second has none of its own (Lightning's 'DataLoader within local
    rank has zero length' traceback there, a gloo one in the first, exit 1); now it repeats the first's, which the
    gathers drop, and the figures and table are one process's."""
    cfg = tiny_cfg("data.synthetic_rows.val_rows=1", "threads=1")
    one, one_table, _ = _validate(cfg, 1, tmp_path / "one")
    two, two_table, _ = _validate(cfg, 2, tmp_path / "two")
    assert two == one and len(two_table) == 1
    pd.testing.assert_frame_equal(two_table.reset_index(drop=True), one_table.reset_index(drop=True), check_exact=True)


def _epoch_means_in_process(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from two_tower.model.module import epoch_means

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    rows, sums = [(3, {"loss": 3.0, "kl": 0.3}), (1, {"loss": 5.0, "kl": 0.5})][rank]
    means = epoch_means({name: torch.tensor(value) for name, value in sums.items()}, rows)
    torch.save({name: float(value) for name, value in means.items()}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_training_epoch_means_weigh_every_process_rows():
    """train/loss_epoch and the other epoch means are over the rows of every process (each row once): each process
    logged its own share's mean and Lightning kept rank 0's (under its "use sync_dist=True" warning). Rank 0 trained
    3 rows of summed loss 3, rank 1 one of loss 5: the epoch's mean is 8 / 4 = 2 (rank 0's alone: 1; the mean of the
    two means: 3)."""
    import tempfile

    import torch.multiprocessing as mp

    from two_tower.model.module import epoch_means

    with tempfile.TemporaryDirectory() as folder:
        # forked: a spawned process imports torch again (most of the test's time)
        mp.start_processes(_epoch_means_in_process, args=(2, f"{folder}/store", f"{folder}/means"), nprocs=2, start_method="fork")
        got = [torch.load(f"{folder}/means.{rank}") for rank in range(2)]
    assert got[0] == got[1] == {"loss": 2.0, "kl": pytest.approx(0.2)}
    # One process: the sums over its rows, as before (float32, what training_step summed)
    one = epoch_means({"loss": torch.tensor(3.0), "kl": torch.tensor(0.3)}, 3)
    assert one == {"loss": torch.tensor(1.0), "kl": torch.tensor(0.3) / 3} and one["loss"].dtype == torch.float32
