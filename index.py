"""Index a corpus with a trained checkpoint: `python index.py ckpt=PATH data.path=DIR` (see README)."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="index")
def main(cfg: DictConfig) -> None:
    from two_tower.data.msmarco import DataSourceError
    from two_tower.retrieval.errors import RetrievalError
    from two_tower.retrieval.indexer import build_index

    try:
        build_index(cfg)
    except (RetrievalError, DataSourceError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
