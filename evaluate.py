"""Score checkpoints and baselines on one split: `python evaluate.py ckpt=PATH data.path=DIR` (see README)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="two_tower/conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from two_tower.core.errors import exit_on_error
    from two_tower.retrieval.evaluate import evaluate

    with exit_on_error():
        evaluate(cfg)


if __name__ == "__main__":
    main()
