"""``python index.py ckpt=PATH data.path=DIR``: index a corpus with a trained checkpoint (conf/index.yaml)."""

import hydra
from omegaconf import DictConfig

from two_tower.cli.common import CONF_DIR, exit_on_error


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="index")
def main(cfg: DictConfig) -> None:
    from two_tower.retrieval.indexer import build_index

    with exit_on_error():
        build_index(cfg)


if __name__ == "__main__":
    main()
