"""Experiment loggers the configs can choose beyond Lightning's own."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run in the same dir appends to ``metrics.csv``
    instead of deleting the rows logged before the interruption."""

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
