"""``python train.py [group=option ...] [key=value ...]``: train a two-tower retriever (conf/train.yaml)."""

import logging

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from two_tower.cli.common import exit_on_error, hydra_command

log = logging.getLogger(__name__)


class CheckSweepSpace(Callback):
    """At the start of a multirun (``-m``): a search space naming a setting the config lacks, or a listed value
    that makes a job's settings invalid, is one ``error:`` line and exit 2, before any job (hydra.callbacks in
    conf/train.yaml)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.global_hydra import GlobalHydra

        from two_tower.training.config import (check_launcher, check_optimising_sweep, check_sweep_processes, check_sweep_runs,
                                               check_sweep_space, check_sweep_values)

        from two_tower.core.errors import TwoTowerError

        compose = lambda overrides: GlobalHydra.instance().config_loader().load_sweep_config(config, overrides)  # noqa: E731
        checks = [lambda: check_launcher(config), lambda: check_sweep_processes(config.trainer, config.hydra.launcher.get("_target_", "")),
                  lambda: check_optimising_sweep(config), lambda: check_sweep_runs(config), lambda: check_sweep_space(config, compose=compose),
                  lambda: check_sweep_values(config, compose)]
        with exit_on_error():
            for check in checks:
                try:
                    check()
                except TwoTowerError:  # a refusal: one error line, exit 2
                    raise
                except Exception as err:  # noqa: BLE001
                    # A check that cannot run is said, and the others still run: Hydra took any exception here for a
                    # callback's warning and skipped every check after it (three such cases were found)
                    log.warning("a check of the sweep's settings before its jobs could not run (%s: %s); each job checks its own",
                                type(err).__name__, " ".join(str(err).split()))


@hydra_command("train")
def main(cfg: DictConfig) -> float | None:
    from two_tower.core import run_record
    from two_tower.training.config import validate_train_config

    with exit_on_error(), run_record.kept_if_refused():
        # train() checks it too; here it runs before Lightning is imported, so bad settings fail at once.
        validate_train_config(cfg)
    from two_tower.training.train import train

    with exit_on_error():
        metrics = train(cfg)
    # Returned so Hydra sweepers (e.g. Optuna) can optimise it.
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
