"""``python index.py ckpt=PATH data.path=DIR``: index a corpus with a trained checkpoint (conf/index.yaml)."""

from omegaconf import DictConfig

from two_tower.cli.common import exit_on_error, hydra_command
from two_tower.core.stop import stopped_by_sigterm
from two_tower.core import run_record


@hydra_command("index")
def main(cfg: DictConfig) -> None:
    from two_tower.retrieval.indexer import build_index

    with stopped_by_sigterm(), exit_on_error(), run_record.kept_if_refused():
        build_index(cfg)


if __name__ == "__main__":
    main()
