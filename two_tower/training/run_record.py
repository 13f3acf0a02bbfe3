"""A run folder's record (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``) stays true to what
the folder holds when a command on it is refused.

Hydra writes the record of a job before the job's task runs, so ``python train.py encoder=lstm
ckpt_path=last hydra.run.dir=R`` on a GRU run rewrites R's record even though train.py then refuses the
resume, and the comparison (which groups runs by their recorded overrides) mislabels R.
``KeepRunRecord``, a Hydra callback (``hydra.callbacks`` in conf/train.yaml), reads the record files
already in the run folder (or in every job folder of the sweep folder) before Hydra writes them; when
train.py fails before it trains (``kept_if_refused``: a refused resume, a bad setting), they are written
back as they were. Once training starts, the new record stands: the folder's checkpoints are then this
command's.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from two_tower.core.atomic import atomic_write

log = logging.getLogger(__name__)

# Record folder (absolute) -> {file name: bytes before this command}, for the jobs of this process.
_PREVIOUS: dict[str, dict[str, bytes]] = {}


def _read_record(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.yaml")) if p.is_file()}


def _hydra_config_set(config: DictConfig) -> None:
    """Make ``${hydra:...}`` in ``hydra.run.dir`` / ``hydra.sweep.dir`` resolvable before Hydra's own job start
    sets it (the same ``set_config`` Hydra's ``run_job`` makes first)."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(config)


class KeepRunRecord(Callback):
    """Reads the records Hydra is about to overwrite; hands them to the job's process at its start."""

    def __init__(self) -> None:
        self.previous: dict[str, dict[str, bytes]] = {}

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _hydra_config_set(config)
        subdir = config.hydra.output_subdir
        if subdir is not None:
            folder = Path(os.path.abspath(str(config.hydra.run.dir))) / str(subdir)
            if folder.is_dir():
                self.previous[str(folder)] = _read_record(folder)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _hydra_config_set(config)
        subdir = config.hydra.output_subdir
        sweep = Path(os.path.abspath(str(config.hydra.sweep.dir)))
        if subdir is not None and sweep.is_dir():
            for overrides in sweep.rglob(f"{subdir}/overrides.yaml"):
                self.previous[str(overrides.parent)] = _read_record(overrides.parent)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # In the job's process, which a remote launcher (SLURM) runs elsewhere with a copy of this object.
        _PREVIOUS.update(self.previous)


def restore() -> Path | None:
    """Write back the current job's record as it was before this command; its folder, or None if the
    folder had no record before (a new run) or this is not a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    output_dir = OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None, throw_on_missing=False)
    if output_dir is None or hydra_cfg.output_subdir is None:
        return None
    folder = Path(os.path.abspath(str(output_dir))) / str(hydra_cfg.output_subdir)
    saved = _PREVIOUS.get(str(folder))
    if not saved:
        return None
    for name, data in saved.items():
        with atomic_write(folder / name) as f:
            f.write(data)
    return folder


@contextlib.contextmanager
def kept_if_refused():
    """Around what train.py does before it trains: if it fails, the run folder's record is put back."""
    try:
        yield
    except BaseException:
        folder = restore()
        if folder is not None:
            log.info("Left %s as it was: this command did not train", folder)
        raise
