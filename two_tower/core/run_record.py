"""A command refused before it does its work leaves the run folder as it found it.

Hydra makes the run folder and writes the job's record (``.hydra/config.yaml``, ``hydra.yaml``,
``overrides.yaml``) and log before the command's task runs. So ``python train.py encoder=lstm
ckpt_path=last hydra.run.dir=R`` on a GRU run rewrites R's record even though train.py then refuses the
resume, and the comparison (which groups runs by their recorded overrides) mislabels R; and every refused
``train.py`` / ``index.py`` / ``evaluate.py`` left a new ``outputs/.../<time>/`` folder holding only that
record and a log (``compare`` then warned about each as an unfinished run).

``KeepRunRecord``, a Hydra callback (``hydra.callbacks`` in conf/hydra/default.yaml, so every Hydra command
has it), notes before Hydra writes anything whether the run folder exists and reads the record files already
in it (or in every job folder of the sweep folder). When the command fails before it works
(``kept_if_refused``: a refused resume, a bad setting, a missing file), a folder that existed gets its record
back as it was; a folder this command made is removed, with the empty parents it made, if it holds nothing
but the record and the log, the command was refused (bad input, a ``TwoTowerError``: after a crash the log is
kept to read) and its work had not begun (``work_started``: after it, the log records what ran).
Once the work starts, the new record stands: the folder's checkpoints or outputs are then this command's.
Sweeps' job folders are left as they are; a sweep folder's ``multirun.yaml`` is put back when the first job of a
sweep run one job after another is refused.
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
from two_tower.core.errors import TwoTowerError

log = logging.getLogger(__name__)

# Record folder (absolute) -> {file name: bytes before this command}, for the jobs of this process.
_PREVIOUS: dict[str, dict[str, bytes]] = {}
# Run folder (absolute) this command's Hydra run makes -> the outermost folder it makes with it.
_NEW: dict[str, str] = {}
# The sweep folder's record of the command that made it (Hydra's), put back with a job's when a resume is refused.
SWEEP_RECORD = "multirun.yaml"
# Set by work_started(): from then on a refusal keeps the run folder and its log (what ran, for how long).
_WORK_STARTED = False


def work_started() -> None:
    """The command's checks are done and its work (tokenizing, encoding, ranking) begins: a later refusal keeps
    the run folder and its log, which record what ran."""
    global _WORK_STARTED
    _WORK_STARTED = True


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
        self.new: dict[str, str] = {}

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _WORK_STARTED
        _WORK_STARTED = False  # a new command in this process (tests run several)
        _hydra_config_set(config)
        run_dir = Path(os.path.abspath(str(config.hydra.run.dir)))
        if not run_dir.exists():
            outermost = run_dir
            while not outermost.parent.exists() and outermost.parent != outermost:
                outermost = outermost.parent
            self.new[str(run_dir)] = str(outermost)
        subdir = config.hydra.output_subdir
        if subdir is not None:
            folder = run_dir / str(subdir)
            if folder.is_dir():
                self.previous[str(folder)] = _read_record(folder)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _hydra_config_set(config)
        subdir = config.hydra.output_subdir
        sweep = Path(os.path.abspath(str(config.hydra.sweep.dir)))
        if subdir is not None and sweep.is_dir():
            for overrides in sweep.rglob(f"{subdir}/overrides.yaml"):
                self.previous[str(overrides.parent)] = _read_record(overrides.parent)
        if (sweep / SWEEP_RECORD).is_file():  # Hydra rewrites it before the first job, which may refuse a resume
            self.previous[str(sweep)] = {SWEEP_RECORD: (sweep / SWEEP_RECORD).read_bytes()}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # In the job's process, which a remote launcher (SLURM) runs elsewhere with a copy of this object.
        _PREVIOUS.update(self.previous)
        _NEW.update(self.new)


def _job_folder():
    """The current Hydra job's run folder (absolute) and its record subfolder's name, or None outside a job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    output_dir = OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None, throw_on_missing=False)
    if output_dir is None or hydra_cfg.output_subdir is None:
        return None
    return Path(os.path.abspath(str(output_dir))), str(hydra_cfg.output_subdir)


def restore() -> Path | None:
    """Write back the current job's record as it was before this command; its folder, or None if the
    folder had no record before (a new run) or this is not a Hydra job."""
    job = _job_folder()
    if job is None:
        return None
    folder = job[0] / job[1]
    _restore_sweep_record()
    saved = _PREVIOUS.get(str(folder))
    if not saved:
        return None
    for name, data in saved.items():
        with atomic_write(folder / name) as f:
            f.write(data)
    return folder


def _restore_sweep_record() -> None:
    """Write back the sweep folder's multirun.yaml as it was before this command: a refused resume of a sweep
    (``-m seed=2,1 ... ckpt_path=last``) left the sweep recorded as the refused command (a probe)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    # Only the first job of a sweep whose jobs run one after another (Hydra's basic launcher): after a job has worked,
    # or beside jobs running at once (SLURM), the sweep is the new command's (a review: job 1 refused rolled it back
    # after job 0 had trained)
    first = OmegaConf.select(hydra_cfg, "job.num", default=None, throw_on_missing=False) == 0
    basic = str(OmegaConf.select(hydra_cfg, "launcher._target_", default="", throw_on_missing=False) or "").endswith("BasicLauncher")
    sweep = OmegaConf.select(hydra_cfg, "sweep.dir", default=None, throw_on_missing=False)
    saved = _PREVIOUS.get(os.path.abspath(str(sweep))) if sweep is not None and first and basic else None
    if saved:
        with atomic_write(Path(os.path.abspath(str(sweep))) / SWEEP_RECORD) as f:
            f.write(saved[SWEEP_RECORD])


def discard_new() -> Path | None:
    """Remove the current job's run folder if this command made it and it holds nothing but Hydra's record
    (``.hydra/*.yaml``) and the job's log (``*.log``), then the empty folders made with it; returns the
    folder removed, or None (a folder that existed, or one the command wrote anything else into, stays)."""
    job = _job_folder()
    if job is None or str(job[0]) not in _NEW or _WORK_STARTED:
        return None
    folder, subdir = job
    outermost = Path(_NEW[str(folder)])
    try:
        entries = list(folder.iterdir())
        record = folder / subdir
        if any(p.name != subdir and not (p.suffix == ".log" and p.is_file()) for p in entries):
            return None
        if record.exists() and any(not (p.suffix == ".yaml" and p.is_file()) for p in record.iterdir()):
            return None
        for handler in logging.getLogger().handlers[:]:  # the job's log file is open (it cannot be removed on Windows)
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == folder:
                logging.getLogger().removeHandler(handler)
                handler.close()
        for p in (*(record.iterdir() if record.exists() else ()), *(p for p in entries if p.is_file())):
            p.unlink()
        if record.exists():
            record.rmdir()
        removed = folder
        while True:
            folder.rmdir()
            if folder == outermost or any(folder.parent.iterdir()):
                break
            folder = folder.parent
    except OSError:  # another process wrote there meanwhile, a file system that refuses: the folder stays
        return None
    return removed


@contextlib.contextmanager
def kept_if_refused():
    """Around what a command does before its work: if it fails, the run folder's record is put back; if it is
    refused (bad input, a ``TwoTowerError``), a run folder it made for nothing else is removed."""
    try:
        yield
    except BaseException as err:
        folder = restore()
        if folder is not None:
            log.info("Left %s as it was: this command did nothing", folder)
        elif isinstance(err, TwoTowerError):
            discard_new()
        raise
