"""``negatives=ann``: hard negatives ranked by a dense model, ANCE-style.

The first pool comes from ``checkpoint`` (a previous run's towers, with that run's tokenizer). With
``refresh_every_n_epochs=N`` the pool is mined again every N epochs with the model being trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from two_tower.data.prepared import PreparedSplit
from two_tower.negatives.mining import MinedNegatives


class ANNNegatives(MinedNegatives):
    name = "ann"

    def __init__(self, *args, checkpoint: str | None = None, batch_size: int = 512, **kwargs):
        super().__init__(*args, **kwargs)
        if not checkpoint:
            raise ValueError("negatives=ann needs negatives.checkpoint=PATH (a trained .ckpt to mine with)")
        self.checkpoint = Path(checkpoint).expanduser()
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"negatives.checkpoint={self.checkpoint}: no such checkpoint file")
        self.batch_size = batch_size

    def identity(self) -> dict:
        stat = self.checkpoint.stat()
        return {**super().identity(), "checkpoint": [str(self.checkpoint.resolve()), stat.st_size, stat.st_mtime_ns]}

    def scorer(self, split):
        from two_tower.retrieval.dense import DenseRetriever

        retriever = DenseRetriever(str(self.checkpoint), batch_size=self.batch_size)
        retriever.prepare(split)
        return retriever.scores


def model_scorer(module, split: PreparedSplit, batch_size: int = 512):
    """Scores of the split's queries over its passages by ``module`` as it is now (its tokenizer = the split's)."""
    from two_tower.retrieval.checkpoint import encode_tokens

    was_training = module.training
    module.eval()
    module.use_corpus(split)
    try:
        dim = module.towers.passage_encoder.output_dim
        passages = encode_tokens(module.encode_passages, split.passage_tokens, dim, batch_size)
        queries = encode_tokens(module.encode_queries, split.query_tokens, dim, batch_size)
    finally:
        module.train(was_training)
    passages, queries = passages.to(torch.float32), queries.to(torch.float32)

    def scores(rows: np.ndarray) -> torch.Tensor:
        return queries[rows] @ passages.T

    return scores
