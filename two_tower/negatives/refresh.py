"""ANCE-style refresh: every N epochs, mine the training negatives again with the model being trained."""

from __future__ import annotations

import logging
import time

import lightning as L

from two_tower.negatives.ann import model_scorer

log = logging.getLogger(__name__)


class NegativeRefresh(L.Callback):
    """Runs before the epoch's batches are drawn (the sampler draws them lazily at the first batch)."""

    def __init__(self, every_n_epochs: int):
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_start(self, trainer, pl_module):
        epoch = trainer.current_epoch
        if epoch == 0 or epoch % self.every_n_epochs:
            return
        negatives, split = trainer.datamodule.negatives, trainer.datamodule.train
        start = time.perf_counter()
        scorer = model_scorer(pl_module, split, folder=negatives.cache_dir, **({"passage_block_mb": negatives.passage_block_mb} if hasattr(negatives, "passage_block_mb") else {}))
        negatives.refresh(scorer, split)
        seconds = time.perf_counter() - start
        log.info("Epoch %d: refreshed hard negatives with the current model in %.1fs", epoch, seconds)
        pl_module.log("negatives/refresh_seconds", seconds, on_step=False, on_epoch=True, batch_size=1)
