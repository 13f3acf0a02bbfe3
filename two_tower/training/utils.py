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
    """Log failures with context and always close the W&B run, so multirun jobs do not leak into each other."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig):
        try:
            return task(cfg)
        except TwoTowerError:  # bad input: the entry point prints it as one `error:` line, no traceback
            if os.environ.get("TWO_TOWER_DEBUG", "") not in ("", "0"):
                log.exception("Run failed")
            raise
        except Exception:
            log.exception("Run failed")
            raise
        finally:
            try:
                import wandb

                if wandb.run is not None:
                    log.info("Closing wandb run")
                    wandb.finish()
            except ImportError:
                pass

    return wrapped
