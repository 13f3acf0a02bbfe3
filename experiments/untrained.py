"""Score a recipe's towers before any training step: the ceiling of what its inputs already know.

    python experiments/untrained.py experiment=best data.path=../shared/data/marco7k encoder.bag_mix=0.999
    python experiments/untrained.py experiment=best_rnn embeddings=distilled encoder.skip=true \
        data.path=../shared/data/marco7k --ckpt outputs/untrained/static.ckpt

Takes the same overrides as ``train.py``, builds its data and model exactly as training would, and
runs one validation pass (full corpus, exact ranking) with the freshly initialised towers: with
``encoder.skip=true`` the towers are the static mean of their word vectors; with the bag-of-words path
at ``bag_mix`` near 1, the untrained bag alone (a random projection of log-TF-IDF over the corpus
being ranked). ``--ckpt PATH`` also saves that untrained model as a checkpoint, so ``index.py``,
``search.py`` and ``evaluate.py`` can score it on any corpus (e.g. zero-shot on a BEIR folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py overrides")
    parser.add_argument("--ckpt", type=Path, help="also save the untrained model here")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from two_tower.cli.common import composition_error, exit_on_error

    message = composition_error("train", args.overrides)  # an unknown key or option: one line, as train.py says it
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "two_tower" / "conf")):
        cfg = compose("train", overrides=args.overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"untrained-{os.getpid()}"
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(out)
    with exit_on_error():  # bad settings or data: one error line, exit 2, as train.py (tracebacks before: a probe)
        run(cfg, args, out)


def run(cfg, args, out: Path) -> None:
    import lightning as L

    from two_tower.training.config import validate_train_config
    from two_tower.training.train import build_datamodule, build_module

    validate_train_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(cfg.threads)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=True, default_root_dir=str(out))
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    print(json.dumps({"overrides": args.overrides, "untrained": {k: round(float(v), 4) for k, v in metrics.items()}}, indent=2))
    if args.ckpt:
        args.ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.ckpt.with_name(f".{args.ckpt.name}.tmp-{os.getpid()}")
        trainer.save_checkpoint(tmp)
        os.replace(tmp, args.ckpt)
        print(f"saved {args.ckpt}")


if __name__ == "__main__":
    main()
