"""The query tower and its tokenizer, on their own: what an index folder needs to turn text into vectors.

Saved as one small file (``query_encoder.pt``: encoder config, weights, tokenizer) so a search needs
neither the training checkpoint nor Lightning, and starts in about a second.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from two_tower.data.tokenizer import Tokenizer, pad_batch
from two_tower.retrieval.errors import EmptyQueryError


def weights_hash(tower: nn.Module) -> str:
    """sha1 of a tower's parameter names and values (embedding table included)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class QueryEncoder:
    def __init__(self, encoder: nn.Module, tokenizer: Tokenizer, config: dict):
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.config = config  # encoder hparams + vocab_size + embedding_dim: enough to rebuild it

    @property
    def dim(self) -> int:
        return int(self.encoder.output_dim)

    @classmethod
    def from_module(cls, module) -> "QueryEncoder":
        """The query tower of a loaded ``TwoTowerModule`` (shares its weights)."""
        config = {
            "encoder": dict(module.hparams.encoder),
            "vocab_size": int(module.hparams.vocab_size),
            "embedding_dim": int(module.hparams.embedding_dim),
        }
        return cls(module.towers.query_encoder, module.tokenizer, config)

    def weights_hash(self) -> str:
        return weights_hash(self.encoder)

    def save(self, path: Path) -> None:
        state = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        torch.save({**self.config, "state_dict": state, "tokenizer": self.tokenizer.state_dict()}, path)

    @classmethod
    def load(cls, path: Path) -> "QueryEncoder":
        saved = torch.load(path, map_location="cpu", weights_only=True)
        embedding = nn.Embedding(saved["vocab_size"], saved["embedding_dim"], padding_idx=0)
        encoder = hydra.utils.instantiate(OmegaConf.create(saved["encoder"]), embedding=embedding)
        encoder.load_state_dict(saved["state_dict"])
        config = {k: saved[k] for k in ("encoder", "vocab_size", "embedding_dim")}
        return cls(encoder, Tokenizer.from_state_dict(saved["tokenizer"]), config)

    def encode(self, queries: list[str]) -> np.ndarray:
        """[len(queries), dim] float32, L2-normalised. Raises EmptyQueryError naming the empty query."""
        for i, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                where = "the query" if len(queries) == 1 else f"query {i + 1} of {len(queries)}"
                raise EmptyQueryError(f"{where} is empty ({query!r}); give some words to search for")
        ids, lengths = pad_batch(self.tokenizer.encode_queries(queries))
        with torch.inference_mode():
            vectors = self.encoder(torch.from_numpy(ids), torch.from_numpy(lengths))
        return vectors.float().numpy()
