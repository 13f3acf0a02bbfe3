"""Frozen embedding rows that checkpoints and index folders do not carry: they are derived again on load.

A frozen table (``embeddings.freeze``) keeps the rows it started with, and those came from somewhere
that can give them again:

- the training words' rows: the vectors source aligned to the tokenizer's words (the same source that
  gives the extension's rows, ``two_tower.model.vocabulary``); rows the source does not give again
  (e.g. GloVe's random rows for words it lacks) are few and are saved as they are;
- the hashed buckets: random rows drawn at construction; the torch RNG state they were drawn from is
  saved (5 KB) instead of the rows.

For ``experiment=best`` that is 34 MB of word rows and 17 MB of buckets, nearly all of a 52.7 MB
checkpoint. ``strip`` decides by deriving the rows at save time and comparing them with the model's, so
a table that cannot be derived (trained rows, another source) is saved whole, as before; ``restore``
derives them on load and refuses, in one line, rows whose CRC differs from the one saved (another
vectors source or library version). Checkpoints saved whole load as before.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from two_tower.core.errors import EmbeddingsError
from two_tower.data.embeddings import extension_source_vectors
from two_tower.data.tokenizer import Tokenizer
from two_tower.model.embedding import OpenEmbedding

# Where a checkpoint (or an index folder's query_encoder.pt) keeps what derives the rows, beside "state_dict".
KEY = "derived_rows"
WORDS, BUCKETS = "words.weight", "buckets.weight"


def crc(rows: torch.Tensor) -> int:
    return zlib.crc32(rows.detach().cpu().contiguous().float().numpy().tobytes())


def strip(state_dict: dict, root: nn.Module, tokenizer: Tokenizer | None) -> dict:
    """Remove from ``state_dict`` (of ``root``) the frozen rows that can be derived again; returns what
    derives them ({state_dict key: entry}), to save under ``KEY``."""
    if tokenizer is None:
        return {}
    derived, entries = {}, {}
    for prefix, embedding in _embeddings(root).items():
        if id(embedding) not in entries:
            entries[id(embedding)] = _derivable(embedding, tokenizer)
        for name, entry in entries[id(embedding)].items():
            if prefix + name in state_dict:
                del state_dict[prefix + name]
                derived[prefix + name] = entry
    return derived


def restore(state_dict: dict, derived: dict, root: nn.Module, tokenizer: Tokenizer, where: str) -> None:
    """Put the rows ``derived`` names back into ``state_dict``; raises EmbeddingsError (naming ``where``)
    if they differ from the rows saved at training time."""
    embeddings = _embeddings(root)
    rows_of: dict[int, torch.Tensor] = {}  # one derivation per crc: a shared table appears under several keys
    for key in sorted(derived, key=lambda k: k.endswith(BUCKETS)):  # words first: the buckets' scale needs them
        entry, prefix = derived[key], key[: -len(WORDS if key.endswith(WORDS) else BUCKETS)]
        if entry["crc"] not in rows_of:
            if key.endswith(WORDS):
                rows = _aligned_rows(tokenizer)
                if rows is None or rows.shape != tuple(entry["shape"]):
                    raise EmbeddingsError(f"{where}: {key}: the vectors source gives no rows of shape {tuple(entry['shape'])} to derive it from")
                rows[entry["rows"]] = entry["values"]
            else:
                rows = _draw_buckets(entry["rng_state"], tuple(entry["shape"]), state_dict[prefix + WORDS])
            if crc(rows) != entry["crc"]:
                raise EmbeddingsError(
                    f"{where}: {key}: the rows derived again (CRC {crc(rows)}) are not the ones the model was trained with "
                    f"(CRC {entry['crc']}): the vectors source or the library that made them changed"
                )
            rows_of[entry["crc"]] = rows
        state_dict[key] = rows_of[entry["crc"]]
        if key.endswith(BUCKETS) and prefix in embeddings:
            embeddings[prefix].bucket_rng_state = entry["rng_state"]  # saved again as it was loaded


def _embeddings(root: nn.Module) -> dict[str, OpenEmbedding]:
    """state_dict prefix -> embedding table (a table shared by two towers appears under each prefix)."""
    return {f"{name}." if name else "": m for name, m in root.named_modules(remove_duplicate=False) if isinstance(m, OpenEmbedding)}


def _derivable(embedding: OpenEmbedding, tokenizer: Tokenizer) -> dict:
    """{WORDS: entry, BUCKETS: entry} for the frozen tables whose rows derive exactly, else fewer."""
    if embedding.words.weight.requires_grad:
        return {}
    words = embedding.words.weight.detach().cpu()
    out = {}
    aligned = _aligned_rows(tokenizer)
    if aligned is not None and aligned.shape == words.shape:
        differ = torch.nonzero((aligned != words).any(1)).flatten()
        if len(differ) <= len(words) // 2:  # otherwise little is derived: save the table whole
            out[WORDS] = {"crc": crc(words), "shape": list(words.shape), "rows": differ, "values": words[differ].clone()}
    buckets, state = embedding.buckets, getattr(embedding, "bucket_rng_state", None)
    if buckets is not None and not buckets.weight.requires_grad and state is not None:
        drawn = _draw_buckets(state, tuple(buckets.weight.shape), words)
        if torch.equal(drawn, buckets.weight.detach().cpu()):
            out[BUCKETS] = {"crc": crc(drawn), "shape": list(drawn.shape), "rng_state": state}
    return out


def _aligned_rows(tokenizer: Tokenizer) -> torch.Tensor | None:
    """The training words' rows as the vectors source gives them (None without a re-loadable source)."""
    if not tokenizer.extension_source:
        return None
    vectors = extension_source_vectors(tokenizer.extension_source)
    return torch.from_numpy(vectors.align(tokenizer.words, seed=0)[0])


def _draw_buckets(rng_state: torch.Tensor, shape: tuple, words: torch.Tensor) -> torch.Tensor:
    """The buckets as ``OpenEmbedding`` draws them, then scales them to the word rows (``load_words``)."""
    generator = torch.Generator()
    generator.set_state(rng_state)
    rows = torch.empty(shape).normal_(0.0, 0.3, generator=generator)
    if len(words) > 2:
        rows.mul_(float(words.float()[2:].std()) / 0.3)
    return rows
