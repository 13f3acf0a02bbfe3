"""Run plumbing shared by the entry points: instantiating callbacks and loggers, closing runs cleanly."""

from __future__ import annotations

import functools
import logging
import os

import hydra
from omegaconf import DictConfig

from two_tower.core.errors import TwoTowerError

log = logging.getLogger(__name__)


def in_sweep() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``), not a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def instantiate_group(cfg: DictConfig | None) -> list:
    """Instantiate every entry with a ``_target_`` in a group such as ``callbacks`` or ``logger``."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def task_wrapper(task):
    """Log failures with context and always close the W&B run, so multirun jobs do not leak into each other, with
    the exit code the process ends with (a run stopped by SIGTERM: 143, failed: 1; W&B marks it failed, not finished)."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig):
        exit_code = 1  # the W&B run's: 0 only when the task returned (or exited 0, e.g. at trainer.max_time)
        try:
            result = task(cfg)
            exit_code = 0
            return result
        except TwoTowerError:  # bad input: the entry point prints it as one `error:` line, no traceback
            exit_code = 2  # the entry point's status for it
            if os.environ.get("TWO_TOWER_DEBUG", "") not in ("", "0"):
                log.exception("Run failed")
            raise
        except SystemExit as stop:  # a stop by SIGTERM exits 143 (train.py): its W&B run must not look finished
            exit_code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            raise
        except Exception:
            log.exception("Run failed")
            raise
        finally:
            try:
                import wandb

                if wandb.run is not None:
                    log.info("Closing wandb run (exit code %d)", exit_code)
                    wandb.finish(exit_code=exit_code)
            except ImportError:
                pass

    return wrapped
