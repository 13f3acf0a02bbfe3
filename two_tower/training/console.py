"""What a training run prints of Lightning's: each of its lines once, and none of its adverts.

- The ``lightning`` package adds a console handler of its own to its logger when it is imported (its subpackages add
  one only where the root logger has none), and its records also reach the root logger's handlers, which Hydra has
  set by then: every Lightning line ("Seed set to 7", "GPU available: False", "`Trainer.fit` stopped") was printed
  twice on the console, once as ``INFO: ...``. Where the root logger has handlers, that handler is removed.
- Lines that say nothing about the run: the "💡 Tip: ... try installing litlogger" advert at every fit, and the note
  that the configs' ``ModelSummary`` callback replaces Lightning's default one (the configs name it so that the summary
  is plain text that reaches ``train.log``: Lightning's default draws it with rich, where rich is installed, on the
  console only).
- Lightning 2.6's ``FutureWarning`` that ``isinstance(treespec, LeafSpec)`` is deprecated (torch 2.13), raised from
  Lightning's own code at every fit and validation: nothing this project calls (Lightning issue #21326); and torch
  2.13's ``FutureWarning`` that ``torch.distributed.nn.functional.all_gather`` is deprecated, raised in each process
  of a multi-process run by ``LightningModule.all_gather`` and ``model.module.gather_rows`` (the replacement torch
  names, ``torch.distributed._functional_collectives``, is private); and, under DDP, Lightning's advice to log the
  epoch's ``train/*`` and ``time/*`` figures with ``sync_dist=True``: this project reduces them over the processes
  itself, where every process runs (``model.module.epoch_means``, ``training.callbacks._slowest``).
- Warnings of a resume that do not hold here (``resume_warnings_filtered``).
"""

from __future__ import annotations

import contextlib
import logging
import warnings

ADVERTS = ("💡 Tip:", "Trainer already configured with model summary callbacks")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTS)


def quiet_lightning() -> None:
    """Lightning's console lines once each and without adverts, for this process (idempotent)."""
    import lightning

    root, package = logging.getLogger(), logging.getLogger("lightning")
    own = getattr(lightning, "_console", None)
    if root.handlers and own is not None and own in package.handlers:
        package.removeHandler(own)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in rank_zero.filters):
        rank_zero.addFilter(_DropAdverts())


@contextlib.contextmanager
def lightning_warnings_filtered():
    """Inside the block, Lightning's deprecation warning about its own use of torch's ``LeafSpec`` is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        # torch 2.13 deprecates torch.distributed.nn.functional.all_gather, which LightningModule.all_gather calls (and
        # gather_rows, for gradients through the gathered rows); the replacement it names is in a private module
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated", category=FutureWarning)
        # "use sync_dist=True" for the epoch's train/* and time/* figures: every process's already (module.epoch_means,
        # callbacks._slowest); Lightning's own sync, lazy, deadlocked under its rank-0 progress bar
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(train|time)/")
        yield


@contextlib.contextmanager
def resume_warnings_filtered(resuming: bool):
    """Inside the block (``trainer.fit``), Lightning's resume warnings that say otherwise than this project does:
    - a mid-epoch resume "can cause unreliable results" (the DataLoader is not Lightning-stateful): ours resumes by the
      batches counted in the checkpoint (``TripletBatchSampler``'s ``batches_done``) and ends with exactly an
      uninterrupted run's metrics (tests/test_reliability.py);
    - ``resuming``: the run's "Checkpoint directory ... exists and is not empty": a resume writes on into its own
      checkpoints/ (a new run into a folder holding last.ckpt is refused before)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        if resuming:
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        yield
