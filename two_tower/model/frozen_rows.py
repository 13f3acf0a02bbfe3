"""Frozen word rows that checkpoints and index folders do not carry: they are derived again on load.

A frozen table (``embeddings.freeze``) keeps the training words' rows it started with: the vectors source
aligned to the tokenizer's words (the same source that gives the extension's rows,
``two_tower.model.vocabulary``). Rows the source does not give again (e.g. GloVe's random rows for words
it lacks) are few and are saved as they are. For ``experiment=best`` that leaves 34 MB of a 52.7 MB
checkpoint out.

``strip`` decides by deriving the rows at save time and comparing them with the model's, so a table that
cannot be derived (trained rows, another source) is saved whole, as before; ``restore`` derives them on
load and refuses, in one line, rows whose CRC differs from the one saved (another vectors source or
library version). Checkpoints saved whole load as before.

The hashed buckets are saved even when frozen (17 MB for ``experiment=best``): they are drawn with torch's
``normal_``, whose numbers depend on the CPU kernel it dispatches to (AVX2/AVX-512 or the default one,
which ARM machines use), so drawing them again from a saved RNG state would refuse a checkpoint on
another kind of CPU. The word rows come from numpy and the source's own numbers, which do not.
"""

from __future__ import annotations

import torch
from torch import nn

from two_tower.core.errors import EmbeddingsError
from two_tower.data.embeddings import extension_source_vectors
from two_tower.data.tokenizer import Tokenizer
from two_tower.model.embedding import OpenEmbedding

# Where a checkpoint (or an index folder's query_encoder.pt) keeps what derives the rows, beside "state_dict".
KEY = "derived_rows"
WORDS = "words.weight"


def crc(rows: torch.Tensor) -> int:
    """The CRC the extension rows are checked with (``OpenEmbedding.crc``), of a table's rows."""
    return OpenEmbedding.crc(rows.detach().cpu().float().numpy())


def strip(state_dict: dict, root: nn.Module, tokenizer: Tokenizer | None) -> dict:
    """Remove from ``state_dict`` (of ``root``) the frozen word rows that can be derived again; returns
    what derives them ({state_dict key: entry}), to save under ``KEY``."""
    if tokenizer is None:
        return {}
    derived, entries = {}, {}
    for prefix, embedding in _embeddings(root).items():
        if id(embedding) not in entries:
            entries[id(embedding)] = _derivable(embedding, tokenizer)
        entry = entries[id(embedding)]
        if entry is not None and prefix + WORDS in state_dict:
            del state_dict[prefix + WORDS]
            derived[prefix + WORDS] = entry
    return derived


def restore(state_dict: dict, derived: dict, tokenizer: Tokenizer, where: str = "") -> None:
    """Put the rows ``derived`` names back into ``state_dict``; raises EmbeddingsError (its message starts
    with ``where``, if given) if they differ from the rows saved at training time."""
    prefix = f"{where}: " if where else ""
    rows_of: dict[int, torch.Tensor] = {}  # one derivation per crc: a shared table appears under several keys
    for key, entry in derived.items():
        if not key.endswith(WORDS):
            raise EmbeddingsError(f"{prefix}{key}: saved by a development version that derived these rows too; train it again")
        if entry["crc"] not in rows_of:
            rows = _aligned_rows(tokenizer)
            if rows is None or rows.shape != tuple(entry["shape"]):
                raise EmbeddingsError(f"{prefix}{key}: the vectors source gives no rows of shape {tuple(entry['shape'])} to derive it from")
            rows[entry["rows"]] = entry["values"]
            if crc(rows) != entry["crc"]:
                raise EmbeddingsError(
                    f"{prefix}{key}: the word rows derived again from the vectors source (CRC {crc(rows)}) are not the ones "
                    f"the model was trained with (CRC {entry['crc']}): the vectors source or the library that made them changed"
                )
            rows_of[entry["crc"]] = rows
        state_dict[key] = rows_of[entry["crc"]]


def _embeddings(root: nn.Module) -> dict[str, OpenEmbedding]:
    """state_dict prefix -> embedding table (a table shared by two towers appears under each prefix)."""
    return {f"{name}." if name else "": m for name, m in root.named_modules(remove_duplicate=False) if isinstance(m, OpenEmbedding)}


def _derivable(embedding: OpenEmbedding, tokenizer: Tokenizer) -> dict | None:
    """What derives a frozen table's word rows exactly, or None if they cannot be (or hardly any can)."""
    if embedding.words.weight.requires_grad:
        return None
    words = embedding.words.weight.detach().cpu()
    aligned = _aligned_rows(tokenizer)
    if aligned is None or aligned.shape != words.shape:
        return None
    differ = torch.nonzero((aligned != words).any(1)).flatten()
    if len(differ) > len(words) // 2:  # little would be derived: save the table whole
        return None
    return {"crc": crc(words), "shape": list(words.shape), "rows": differ, "values": words[differ].clone()}


def _aligned_rows(tokenizer: Tokenizer) -> torch.Tensor | None:
    """The training words' rows as the vectors source gives them (None without a re-loadable source)."""
    if not tokenizer.extension_source:
        return None
    vectors = extension_source_vectors(tokenizer.extension_source)
    return torch.from_numpy(vectors.align(tokenizer.words, seed=0)[0])
