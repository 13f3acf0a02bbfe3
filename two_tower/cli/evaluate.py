"""``python evaluate.py ckpt=PATH data.path=DIR``: score checkpoints and baselines on one split (conf/evaluate.yaml)."""

import hydra
from omegaconf import DictConfig

from two_tower.cli.common import CONF_DIR, exit_on_error


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from two_tower.retrieval.evaluate import evaluate

    with exit_on_error():
        evaluate(cfg)


if __name__ == "__main__":
    main()
