"""Experiment loggers the configs choose: Lightning's CSV and W&B loggers, with the fixes a resumed run and a
model artifact need."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers.utilities import _scan_checkpoints
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from two_tower.core.atomic import atomic_write

log = logging.getLogger(__name__)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run in the same dir appends to ``metrics.csv``
    instead of deleting the rows logged before the interruption (and, after ``resume()``, without the rows
    the interrupted run logged from the resumed run's first step on, which it logs again); after ``start_over()``
    (a run started from the beginning) an earlier ``metrics.csv`` is replaced, as Lightning's logger does."""

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        earlier = path.read_bytes() if path.is_file() else None
        with warnings.catch_warnings():  # "... will be deleted": not here
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            experiment = super().experiment  # Lightning's writer deletes an existing metrics.csv here
        if earlier and getattr(self, "_start_over", False):
            rows = max(earlier.count(b"\n") - 1, 0)
            log.warning("%s held %d rows of an earlier run in this folder that left no checkpoint to resume: this run starts "
                        "from the beginning, and its rows replace them", path, rows)
        elif earlier:
            path.write_bytes(earlier)
            with open(path, newline="") as f:
                experiment.metrics_keys = next(csv.reader(f))
        return experiment

    def start_over(self) -> None:
        """This run starts from the beginning (no checkpoint) in a folder whose ``metrics.csv`` is an earlier run's, one
        that left no checkpoint (killed before its first, or its checkpoints removed): those rows are not this run's,
        and its own replace them (they were kept and this run's appended: each step and epoch in the file twice). Before
        the first use of ``experiment``."""
        self._start_over = True

    def resume(self, saved_step: int | None = None) -> None:
        """This run resumes an interrupted one in the same folder: its first logged row tells from which
        step on the interrupted run's rows are logged again, and those are dropped then (a checkpoint's own
        step counter does not say: one saved at validation end is counted up only when restored).
        ``saved_step``: the checkpoint's ``global_step``, where known: a validation row logged at or after it is the
        run's from after the checkpoint (an older checkpoint of the folder), which this run logs again."""
        self._drop_at_first_row = True
        self._saved_step = saved_step

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        if getattr(self, "_drop_at_first_row", False) and step is not None:
            self._drop_at_first_row = False
            dropped = self.drop_rows_from(step, saved_step=getattr(self, "_saved_step", None))
            if dropped:
                log.info("%s: removed %d rows the interrupted run logged from step %d on; this run logs them again", self.log_dir, dropped, step)
        return super().log_metrics(metrics, step)

    @rank_zero_only
    def drop_rows_from(self, step: int, saved_step: int | None = None) -> int:
        """Remove the rows of ``metrics.csv`` logged at logger step ``step`` or later, but a validation at ``step``
        itself, unless it was logged at or after the checkpoint's ``saved_step`` (when given): a run resumed from a
        checkpoint taken at that step logs them again (a killed run had logged beyond its last checkpoint).
        Returns how many rows were removed; the file is replaced whole."""
        self.experiment  # noqa: B018 (puts an earlier metrics.csv back)
        path = Path(self.log_dir) / "metrics.csv"
        if not path.is_file():
            return 0
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, fields = list(reader), reader.fieldnames
        # A validation at the resumed step itself stays: a run stops after a batch's validation, never in it, and
        # resumes past it (Lightning does not validate that step again), so that row would be lost, not doubled.
        # Not one logged at or after the checkpoint's own step, which this run validates again: a later validation of
        # the folder's run resumed from an older checkpoint of it, or the validation of an epoch whose end a Ctrl-C
        # interrupted (CheckpointOnStop kept the checkpoint from before it); each was in the file twice (probes).
        def validated_at_step(row):
            return bool(row.get("step")) and int(float(row["step"])) == step and (saved_step is None or step < saved_step) and any(v not in ("", None) for k, v in row.items() if k and k.startswith("val/"))

        kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < step or validated_at_step(row)]
        if len(kept) < len(rows):
            with atomic_write(path, "w") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(kept)
        return len(rows) - len(kept)


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, except that with ``log_model=true`` only a checkpoint callback that monitors a metric
    marks its best checkpoint ``best``. Lightning aliased every callback's "best" file ``best``: the ``last_checkpoint``
    callback (``monitor: null``, conf/callbacks/default.yaml) counts ``last.ckpt`` as its best, so ``last.ckpt`` (a
    later, maybe worse epoch) was logged ``best`` after the real best one and took the alias. Here ``last.ckpt`` is
    logged ``latest`` only, and the files of every callback are logged in the order they were written, so ``latest``
    ends on the newest one."""

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status != "success" or self._experiment is None:  # as Lightning's: checkpoints are logged on success only
            return
        found: dict[str, tuple] = {}
        for callback in self._checkpoint_callbacks.values():
            for written, path, score, _tag in _scan_checkpoints(callback, self._logged_model_time):
                # one file of two callbacks (model_checkpoint.save_last=true writes last.ckpt too) is logged once, as the
                # monitoring callback's if it is one of them
                if path not in found or getattr(callback, "monitor", None) is not None:
                    found[path] = (written, path, score, callback)
        for written, path, score, callback in sorted(found.values(), key=lambda item: item[:2]):
            self._log_checkpoint(callback, written, path, score)

    @override
    def _scan_and_log_checkpoints(self, checkpoint_callback) -> None:  # log_model="all", or save_top_k=-1
        for written, path, score, _tag in _scan_checkpoints(checkpoint_callback, self._logged_model_time):
            self._log_checkpoint(checkpoint_callback, written, path, score)

    def _log_checkpoint(self, callback, written: float, path: str, score) -> None:
        import torch
        import wandb

        keys = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only", "_every_n_train_steps")
        metadata = {
            "score": score.item() if isinstance(score, torch.Tensor) else score,
            "original_filename": Path(path).name,
            callback.__class__.__name__: {k: getattr(callback, k) for k in keys if hasattr(callback, k)},
        }
        if not self._checkpoint_name:
            self._checkpoint_name = f"model-{self.experiment.id}"
        artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
        artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
        best = getattr(callback, "monitor", None) is not None and path == getattr(callback, "best_model_path", None)
        self.experiment.log_artifact(artifact, aliases=["latest", "best"] if best else ["latest"])
        self._logged_model_time[path] = written
