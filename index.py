"""Index a corpus with a trained checkpoint: `python index.py ckpt=PATH data.path=DIR` (see README)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="two_tower/conf", config_name="index")
def main(cfg: DictConfig) -> None:
    from two_tower.core.errors import exit_on_error
    from two_tower.retrieval.indexer import build_index

    with exit_on_error():
        build_index(cfg)


if __name__ == "__main__":
    main()
