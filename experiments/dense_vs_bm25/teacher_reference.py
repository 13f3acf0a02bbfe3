"""The teacher's own score on the validation split (the ceiling distillation aims at).

    HF_HUB_OFFLINE=1 python experiments/dense_vs_bm25/teacher_reference.py ../shared/data/marco7k

Encodes the validation queries and passages with all-MiniLM-L6-v2 (``teacher=minilm``; cached under
paths.cache_dir/teacher) and ranks the whole split corpus with the same metrics as validation.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from two_tower.core.metrics import dense_split_metrics
from two_tower.training.train import build_datamodule

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder of MS MARCO v1.1 parquet shards")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "two_tower" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.path={os.path.abspath(args.data)}", "loss=distill"])
    datamodule = build_datamodule(cfg)
    datamodule.teacher = None  # only the validation split is scored here
    datamodule.prepare_data()
    datamodule.setup("fit")
    val = datamodule.val
    vectors = instantiate(cfg.teacher).vectors(val.query_texts, val.passage_texts)
    rows = val.evaluated_queries()
    metrics = dense_split_metrics(torch.from_numpy(vectors.queries[rows]), torch.from_numpy(vectors.passages), val, rows)
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
