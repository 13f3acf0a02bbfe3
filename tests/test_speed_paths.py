"""The fast paths give the same results as the slow ones: masked vs packed towers, per-epoch statistics
summed in the module vs logged every step, and length bucketing keeps padding small."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import two_tower.training.train as train_mod
from two_tower.data.batches import TripletBatches, TripletBatchSampler, pad_rows
from two_tower.data.datamodule import TwoTowerDataModule
from two_tower.data.prepared import Ragged
from two_tower.data.tokenizer import pad_batch
from two_tower.data.embeddings import RandomEmbeddings
from two_tower.model.encoders import RNNEncoder
from two_tower.model.module import TwoTowerModule
from two_tower.negatives import InBatchNegatives


def encoder(cell, pooling, packing, num_layers=1, bidirectional=False):
    torch.manual_seed(0)
    emb = nn.Embedding(60, 8, padding_idx=0)
    return RNNEncoder(emb, cell=cell, hidden_size=16, num_layers=num_layers, bidirectional=bidirectional, pooling=pooling, dim=12, packing=packing)


@pytest.mark.parametrize("cell,pooling,num_layers", list(itertools.product(["rnn", "gru", "lstm"], ["last", "mean", "max"], [1, 2])))
def test_masks_give_the_packed_vectors_and_gradients(cell, pooling, num_layers):
    torch.manual_seed(1)
    lengths = torch.tensor([3, 9, 1, 6, 9])
    ids = torch.randint(2, 60, (5, 12))
    ids[torch.arange(12)[None, :] >= lengths[:, None]] = 0  # padded past each length (and past the longest)
    results = {}
    for packing in ("packed", "masks"):
        enc = encoder(cell, pooling, packing, num_layers).train()
        out = enc(ids, lengths)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        results[packing] = (out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()})
    torch.testing.assert_close(results["masks"][0], results["packed"][0], atol=1e-6, rtol=1e-5)
    for name, grad in results["packed"][1].items():
        torch.testing.assert_close(results["masks"][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_packing_choice():
    assert not encoder("gru", "mean", "auto").packed  # unidirectional: masks
    assert encoder("gru", "mean", "auto", bidirectional=True).packed  # bidirectional: packed sequences
    assert encoder("lstm", "mean", "packed").packed
    with pytest.raises(ValueError, match="unidirectional"):
        encoder("gru", "mean", "masks", bidirectional=True)
    with pytest.raises(ValueError, match="packing"):
        encoder("gru", "mean", "padded")


class StepLoggingModule(TwoTowerModule):
    """The original training_step: every statistic through self.log on every step."""

    def training_step(self, batch, batch_idx):
        out = self.batch_loss(batch)
        batch_size = batch["query_ids"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        for name, value in out.items():
            if name != "loss":
                self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=batch_size)
        return out["loss"]

    def on_train_epoch_end(self):
        pass


def test_epoch_statistics_are_logged_exactly_as_before(tiny_cfg, monkeypatch):
    overrides = ["trainer.max_epochs=2", "loss=triplet", "negatives=random", "data.synthetic_rows.train_rows=200", "+trainer.limit_val_batches=0",
                 "trainer.num_sanity_val_steps=0", "~callbacks.model_checkpoint", "~callbacks.last_checkpoint"]
    new = train_mod.train(tiny_cfg(*overrides))
    monkeypatch.setattr(train_mod, "TwoTowerModule", StepLoggingModule)
    old = train_mod.train(tiny_cfg(*overrides))
    keys = sorted(k for k in old if k.startswith("train/") and k != "train/loss")  # Lightning's alias of the latest
    assert len(keys) >= 4 and keys == sorted(k for k in new if k.startswith("train/"))
    assert {k: new[k] for k in keys} == {k: old[k] for k in keys}  # bit for bit


def test_length_bucketing_keeps_padding_under_a_fifth(tmp_path):
    # Passage and query lengths spread like MS MARCO's (about 20-100 and 4-8 words).
    spec = {"train_rows": 1500, "val_rows": 10, "passages_per_row": 3, "passage_words": [20, 100], "query_filler": [1, 5], "seed": 0}
    dm = TwoTowerDataModule(RandomEmbeddings(dim=8), InBatchNegatives(), synthetic_rows=spec, cache_dir=str(tmp_path), tokenizer={"min_freq": 1})
    dm.setup("fit")
    collate = TripletBatches(dm.train)

    def padding_share(bucket_batches):
        plans = TripletBatchSampler(dm.train, dm.negatives, 64, seed=0, bucket_batches=bucket_batches).plans()
        padded = real = 0
        for batch in map(collate.__getitem__, plans):
            for ids, lengths in (("query_ids", "query_lengths"), ("passage_ids", "passage_lengths")):
                padded += batch[ids].numel()
                real += int(batch[lengths].sum())
        return 1 - real / padded

    bucketed, unbucketed = padding_share(50), padding_share(0)
    assert bucketed < 0.2 < unbucketed, (bucketed, unbucketed)
    assert np.isfinite(bucketed)


def test_vectorised_padding_matches_row_by_row():
    rng = np.random.default_rng(0)
    ragged = Ragged.from_lists([rng.integers(2, 100, size=n).tolist() for n in rng.integers(0, 12, size=40)])
    for rows in (np.array([3, 3, 17, 0, 39]), rng.permutation(40), np.array([], dtype=np.int64), np.flatnonzero(ragged.lengths == 0)[:2]):
        ids, lengths = pad_rows(ragged, rows)
        want_ids, want_lengths = pad_batch(ragged.gather(rows))
        if len(rows):
            np.testing.assert_array_equal(ids, want_ids)
        assert ids.dtype == want_ids.dtype == np.int64 and ids.shape[1] >= 1
        np.testing.assert_array_equal(lengths, want_lengths)
        assert lengths.dtype == np.int64
        filled, _ = pad_rows(ragged, rows, fill=-1)
        np.testing.assert_array_equal(filled, ragged.padded(rows, fill=-1))
