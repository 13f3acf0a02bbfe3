"""Experiment loggers the configs can choose beyond Lightning's own."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from two_tower.core.atomic import atomic_write

log = logging.getLogger(__name__)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run in the same dir appends to ``metrics.csv``
    instead of deleting the rows logged before the interruption (and, after ``resume()``, without the rows
    the interrupted run logged from the resumed run's first step on, which it logs again)."""

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
        if earlier:
            path.write_bytes(earlier)
            with open(path, newline="") as f:
                experiment.metrics_keys = next(csv.reader(f))
        return experiment

    def resume(self) -> None:
        """This run resumes an interrupted one in the same folder: its first logged row tells from which
        step on the interrupted run's rows are logged again, and those are dropped then (a checkpoint's own
        step counter does not say: one saved at validation end is counted up only when restored)."""
        self._drop_at_first_row = True

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        if getattr(self, "_drop_at_first_row", False) and step is not None:
            self._drop_at_first_row = False
            dropped = self.drop_rows_from(step)
            if dropped:
                log.info("%s: removed %d rows the interrupted run logged from step %d on; this run logs them again", self.log_dir, dropped, step)
        return super().log_metrics(metrics, step)

    @rank_zero_only
    def drop_rows_from(self, step: int) -> int:
        """Remove the rows of ``metrics.csv`` logged at logger step ``step`` or later, but a validation at ``step``
        itself: a run resumed from a checkpoint taken at that step logs them again (a killed run had logged
        beyond its last checkpoint).
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
        def validated_at_step(row):
            return int(float(row["step"])) == step and any(v not in ("", None) for k, v in row.items() if k and k.startswith("val/"))

        kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < step or validated_at_step(row)]
        if len(kept) < len(rows):
            with atomic_write(path, "w") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(kept)
        return len(rows) - len(kept)
