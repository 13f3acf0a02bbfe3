"""Train a two-tower retriever: `python train.py encoder=gru negatives=in_batch` (see README)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="two_tower/conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from two_tower.core.errors import exit_on_error
    from two_tower.training.train import train

    with exit_on_error():
        metrics = train(cfg)
    # Returned so Hydra sweepers (e.g. Optuna) can optimise it.
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
