"""Does `loss=triplet negatives=random` flatline at the margin? Train the same RNN two ways and compare.

1. framework: packed sequences (padding never enters the RNN), mean or last-state pooling;
2. seed-style: every sequence right-padded to a fixed length (max_query_len / max_passage_len) and the
   RNN's state after the last position (i.e. after the padding) taken as the vector.

Same data, batches, initial weights, optimizer and loss; the training loss per step goes to a CSV
and a PNG beside this script.

    python experiments/core/triplet_flatline.py data.path=../shared/data/marco7k
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import hydra
import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from two_tower.cli.common import CONF_DIR  # noqa: E402  (also registers the resolvers conf/*.yaml use)
from two_tower.model.encoders import RNNEncoder  # noqa: E402
from two_tower.training.train import build_datamodule, build_module  # noqa: E402

HERE = Path(__file__).parent


class PaddedLastState(RNNEncoder):
    """The seed project's encoder: no packing; the vector is the RNN output at the last padded position."""

    fixed_length = 128

    def forward(self, ids, lengths, passages=False):
        ids = F.pad(ids, (0, self.fixed_length - ids.shape[1]), value=0)
        output, _ = self.rnn(self.embedding(ids))
        return F.normalize(self.projection(output[:, -1]), dim=-1)


def run(cfg: DictConfig, variant: str, pooling: str, epochs: int) -> list[float]:
    L.seed_everything(cfg.seed)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    cfg.encoder.pooling = pooling
    module = build_module(cfg, dm)
    if variant == "seed-style":
        for name in ("query_encoder", "passage_encoder"):
            getattr(module.towers, name).__class__ = PaddedLastState
        module.towers.query_encoder.fixed_length = dm.tokenizer.max_query_len
        module.towers.passage_encoder.fixed_length = dm.tokenizer.max_passage_len
        if module.towers.query_encoder is module.towers.passage_encoder:
            raise SystemExit("seed-style needs model.shared_towers=false (different fixed lengths per tower)")
    optimizer = hydra.utils.instantiate(cfg.optimizer)([p for p in module.parameters() if p.requires_grad])
    sampler = dm.train_sampler()
    losses = []
    module.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches = dm.train_dataloader().dataset
        for plan in sampler.plans():
            out = module.batch_loss(batches[plan])
            optimizer.zero_grad()
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            losses.append(float(out["loss"]))
    # Collapse check: how alike are the vectors of different passages after training?
    module.eval()
    with torch.no_grad():
        batch = batches[sampler.plans()[0]]
        vectors = module.encode_passages(batch["passage_ids"], batch["passage_lengths"])
        sim = vectors @ vectors.T
        off_diagonal = sim[~torch.eye(len(sim), dtype=torch.bool)]
    return losses, float(off_diagonal.mean())


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    epochs = int(cfg.trainer.max_epochs)
    results = {
        "framework, mean pooling": run(cfg, "framework", "mean", epochs),
        "framework, last state": run(cfg, "framework", "last", epochs),
        "seed-style, padded last state": run(cfg, "seed-style", "last", epochs),
    }
    curves = {name: losses for name, (losses, _) in results.items()}
    margin = float(cfg.loss.margin)
    with open(HERE / "triplet_flatline.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *curves])
        for step, values in enumerate(zip(*curves.values())):
            writer.writerow([step, *(f"{v:.5f}" for v in values)])
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        ax.plot(losses, label=name, lw=1)
    ax.axhline(margin, color="grey", ls="--", lw=0.8, label=f"margin = {margin}")
    ax.set_xlabel("step")
    ax.set_ylabel("triplet loss")
    ax.set_title(f"{cfg.encoder.cell.upper()} towers, loss=triplet negatives=random")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "triplet_flatline.png", dpi=120)
    for name, losses in curves.items():
        n = len(losses)
        marks = sorted({m for m in (0, 1, 5, 10, n // 4, n // 2, n - 1) if m < n})  # a short run has fewer steps
        print(f"{name:32s}", " ".join(f"step{s}={losses[s]:.4f}" for s in marks), f"mean cos(passage_i, passage_j)={results[name][1]:.4f}")


if __name__ == "__main__":
    main()
