"""ANCE-style refresh: every N epochs, mine the training negatives again with the model being trained."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from two_tower.core.ragged import Ragged
from two_tower.negatives.ann import model_scorer

log = logging.getLogger(__name__)


class NegativeRefresh(L.Callback):
    """Runs before the epoch's batches are drawn (the sampler draws them lazily at the first batch).

    The refreshed pool is part of the checkpoint (this callback's state; int32 ids, about 4 bytes a mined
    negative), so a run resumed in the middle of an epoch draws from the pool that epoch started with, and
    ends at the uninterrupted run's figures. Mining again at resume would use mid-epoch weights."""

    def __init__(self, every_n_epochs: int):
        self.every_n_epochs = every_n_epochs
        self.negatives = None  # the datamodule's sampler, from setup
        self.folder: Path | None = None  # where each refresh writes its vector files, from setup
        self.refreshed = False
        self.restored: dict | None = None

    def setup(self, trainer, pl_module, stage):
        self.negatives = trainer.datamodule.negatives
        # The vector files of each refresh go to the cache folder, unless it refuses writes (a shared cache mounted
        # read-only is read, docs/reliability.md): then the system's temporary folder. The first refresh was a
        # PermissionError traceback after an epoch of training (a probe).
        self.folder = self.negatives.cache_dir
        if not os.access(self.folder, os.W_OK):
            self.folder = Path(tempfile.gettempdir())
            log.warning("%s refuses writes: the vectors of each negatives refresh are written in %s", self.negatives.cache_dir, self.folder)

    def state_dict(self) -> dict:
        pool = getattr(self.negatives, "pool", None)
        if not self.refreshed or pool is None:
            return {}
        return {"values": torch.from_numpy(np.asarray(pool.values, dtype=np.int32)), "offsets": torch.from_numpy(np.asarray(pool.offsets, dtype=np.int64))}

    def load_state_dict(self, state: dict) -> None:
        self.restored = state or None

    def on_train_start(self, trainer, pl_module):
        if self.restored is not None:  # resumed after a refresh: the pool the interrupted epoch drew from
            trainer.datamodule.negatives.pool = Ragged(self.restored["values"].numpy(), self.restored["offsets"].numpy())
            self.refreshed, self.restored = True, None

    def on_train_epoch_start(self, trainer, pl_module):
        epoch = trainer.current_epoch
        if epoch == 0 or epoch % self.every_n_epochs:
            return
        negatives, split = trainer.datamodule.negatives, trainer.datamodule.train
        start = time.perf_counter()
        scorer = model_scorer(pl_module, split, folder=self.folder, **({"passage_block_mb": negatives.passage_block_mb} if hasattr(negatives, "passage_block_mb") else {}))
        negatives.refresh(scorer, split)
        self.refreshed = True
        seconds = time.perf_counter() - start
        log.info("Epoch %d: refreshed hard negatives with the current model in %.1fs", epoch, seconds)
        pl_module.log("negatives/refresh_seconds", seconds, on_step=False, on_epoch=True, batch_size=1)
