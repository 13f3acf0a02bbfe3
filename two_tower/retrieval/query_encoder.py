"""The query tower and its tokenizer, on their own: what an index folder needs to turn text into vectors.

Saved as one small file (``query_encoder.pt``: encoder config, weights, tokenizer) so a search needs
neither the training checkpoint nor Lightning, and starts in about a second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from two_tower.data.tokenizer import Tokenizer, pad_batch
from two_tower.data.embeddings import restore_tokenizer
from two_tower.model import frozen_rows
from two_tower.model.bag import TermStatistics
from two_tower.model.embedding import OpenEmbedding
from two_tower.model.vocabulary import attach_vocabulary
from two_tower.core.errors import EmptyQueryError, IndexFolderError
from two_tower.core.targets import refusal, untrusted_target


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
            "extension_size": int(module.hparams.get("extension_size", 0)),
            "hash_buckets": int(module.hparams.get("hash_buckets", 0)),
        }
        return cls(module.towers.query_encoder, module.tokenizer, config)

    def set_statistics(self, stats: TermStatistics | None) -> None:
        """IDF of the corpus the queries search (an index folder's ``term_statistics.npz``)."""
        if getattr(self.encoder, "bag", None) is not None:
            self.encoder.bag.set_statistics(stats)

    def weights_hash(self) -> str:
        return weights_hash(self.encoder)

    def save(self, path: Path) -> None:
        state = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
        derived = frozen_rows.strip(state, self.encoder, self.tokenizer)  # frozen rows the source gives again
        torch.save({**self.config, "state_dict": state, "tokenizer": self.tokenizer.state_dict(), frozen_rows.KEY: derived}, path)

    @classmethod
    def load(cls, path: Path) -> "QueryEncoder":
        saved = torch.load(path, map_location="cpu", weights_only=True)
        config = {k: saved[k] for k in ("encoder", "vocab_size", "embedding_dim", "extension_size", "hash_buckets")}
        if (target := untrusted_target(config["encoder"])) is not None:
            raise IndexFolderError(refusal(str(path), target))
        embedding = OpenEmbedding(config["vocab_size"], config["embedding_dim"], config["extension_size"], config["hash_buckets"], freeze=True)
        encoder = hydra.utils.instantiate(OmegaConf.create(config["encoder"]), embedding=embedding)
        tokenizer = restore_tokenizer(saved["tokenizer"])
        attach_vocabulary([encoder], tokenizer)
        frozen_rows.restore(saved["state_dict"], saved.get(frozen_rows.KEY, {}), tokenizer, str(path))
        try:
            encoder.load_state_dict(saved["state_dict"])
        except RuntimeError as err:  # e.g. the bag's vocabulary keys differ (another stemmer version): one line
            raise IndexFolderError(f"{path}: its query tower does not load: {' '.join(str(err).split())}") from err
        return cls(encoder, tokenizer, config)

    def check_query(self, query, where: str = "the query") -> None:
        """Raise EmptyQueryError unless ``query`` has a word the tokenizer reads."""
        check_query(self.tokenizer, query, where)

    def encode(self, queries: list[str]) -> np.ndarray:
        """[len(queries), dim] float32, L2-normalised. Raises EmptyQueryError naming the empty query."""
        check_queries(self.tokenizer, queries)
        ids, lengths = pad_batch(self.tokenizer.encode_queries(queries))
        with torch.inference_mode():
            vectors = self.encoder(torch.from_numpy(ids), torch.from_numpy(lengths))
        return vectors.float().numpy()


def check_query(tokenizer: Tokenizer, query, where: str = "the query") -> None:
    """Raise EmptyQueryError unless ``query`` has a word ``tokenizer`` reads (what every query search and encoding
    takes: ``Searcher``, serve, ``Encoder.encode_queries``)."""
    if not isinstance(query, str):
        raise EmptyQueryError(f"{where} is not text ({type(query).__name__}: {query!r:.60}); give a string")
    if not query.strip():
        raise EmptyQueryError(f"{where} is empty ({query!r}); give some words to search for")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate (bytes that were not UTF-8, kept by Python): the CLI refused it, the API searched
        raise EmptyQueryError(f"{where} is not text that UTF-8 can hold ({query[err.start:err.end]!r} at {err.start}, a lone surrogate: "
                              "bytes that were not UTF-8); give valid text") from None
    if not tokenizer.split(query):
        # Punctuation, emoji, control or zero-width characters only: the tokenizer finds no word, and
        # encoding nothing would answer every such query with the same arbitrary passages.
        raise EmptyQueryError(f"{where} has no searchable word ({query[:40]!r}); give some words to search for")


def not_a_list_of_texts(texts, name: str = "texts") -> str | None:
    """Why ``texts`` (given where a list of texts is due) would be read as other texts than the caller's, or None:
    a mapping iterates its keys ({qid: text} searched the ids "q1", "q2") and a table its column names (a
    DataFrame of 2 queries was searched as the one query "query"), silently; said in the caller's error, whose
    argument is ``name``."""
    if isinstance(texts, Mapping):
        return (f"not a {type(texts).__name__}: iterating one gives its keys, which would be read as the texts; "
                f"give the texts themselves, e.g. list({name}.values())")
    ndim = getattr(texts, "ndim", 1)
    if isinstance(ndim, int) and ndim > 1:
        return (f"not a {ndim}-dimensional {type(texts).__name__}: iterating one gives its column names or rows, not one text "
                f"each; give one column of texts, e.g. {name}['text']")
    return None


def check_queries(tokenizer: Tokenizer, queries: list) -> None:
    """``check_query`` of each, named "the query" alone or "query i of n"."""
    for i, query in enumerate(queries):
        check_query(tokenizer, query, "the query" if len(queries) == 1 else f"query {i + 1} of {len(queries)}")
