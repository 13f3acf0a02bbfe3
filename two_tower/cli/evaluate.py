"""``python evaluate.py ckpt=PATH data.path=DIR``: score checkpoints and baselines on one split (conf/evaluate.yaml)."""

from omegaconf import DictConfig

from two_tower.cli.common import exit_on_error, hydra_command
from two_tower.core.stop import stopped_by_sigterm
from two_tower.core import run_record


@hydra_command("evaluate")
def main(cfg: DictConfig) -> None:
    from two_tower.retrieval.evaluate import evaluate

    with stopped_by_sigterm(), exit_on_error(), run_record.kept_if_refused():
        evaluate(cfg)


if __name__ == "__main__":
    main()
