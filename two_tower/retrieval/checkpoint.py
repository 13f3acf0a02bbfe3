"""A trained checkpoint as an encoder: load it for inference, say what it is, encode token rows in batches.

``model_identity`` is what an index records about the model that built it, and what a checkpoint must
match to be used with that index: the tokenizer (vocabulary and settings), the vector size, the
encoder settings and a hash of each tower's weights (two epochs of one run differ only there).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from two_tower.data.batches import LengthSortedBatches, TokenBatches
from two_tower.data.prepared import Ragged
from two_tower.core import progress as progress_bars
from two_tower.core.errors import CheckpointError, TwoTowerError
from two_tower.core.targets import refusal, untrusted_target
from two_tower.retrieval.query_encoder import weights_hash


def load_checkpoint(path: str | Path):
    """The ``TwoTowerModule`` of a ``.ckpt`` on CPU in eval mode, with its tokenizer restored."""
    if not isinstance(path, (str, os.PathLike)):  # Path(None) said "expected str, bytes or os.PathLike object", naming nothing
        raise CheckpointError(f"ckpt={path!r:.60}: give the checkpoint file's path (a str or pathlib.Path), not {type(path).__name__}")
    path = Path(path).expanduser()
    if path.is_dir():
        last = next((p for p in (path / "checkpoints" / "last.ckpt", path / "last.ckpt") if p.is_file()), None)
        raise CheckpointError(f"ckpt={path}: a folder; pass a checkpoint file" + (f", e.g. ckpt={last}" if last else " (a run's checkpoints/*.ckpt)"))
    if not path.is_file():
        raise CheckpointError(f"ckpt={path}: no such checkpoint file")
    from two_tower.model.module import TwoTowerModule  # imports Lightning (seconds): only when there is a checkpoint to load

    try:  # the classes it names are built when it loads: its encoder's and loss's
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file (mmap needs one): read it whole
            saved = torch.load(path, map_location="cpu", weights_only=True)
        hyper = (saved.get("hyper_parameters") if isinstance(saved, dict) else None) or {}
        del saved
    except Exception as err:
        raise CheckpointError(f"ckpt={path}: not a two-tower checkpoint ({load_problem(path, err)})") from err
    if (target := untrusted_target([hyper.get("encoder"), hyper.get("loss")])) is not None:
        raise CheckpointError(refusal(f"ckpt={path}", target))
    try:
        module = TwoTowerModule.load_from_checkpoint(path, map_location="cpu")
    except TwoTowerError as err:  # e.g. its vectors source changed since training: say so, not "not a checkpoint"
        raise CheckpointError(f"ckpt={path}: {err}") from err
    except Exception as err:  # one line: load_state_dict lists missing keys over several
        raise CheckpointError(f"ckpt={path}: not a two-tower checkpoint ({load_problem(path, err)})") from err
    if module.tokenizer is None:
        raise CheckpointError(f"ckpt={path}: has no tokenizer (saved by an older version?); retrain or re-save it")
    module.eval()
    return module


def model_identity(module, checkpoint: str | Path) -> dict:
    """What an index built with ``module`` must agree with; ``checkpoint`` is recorded, not compared."""
    towers = module.towers
    return {
        "checkpoint": str(Path(checkpoint).expanduser().resolve()),
        "tokenizer": module.tokenizer.fingerprint(),
        "dim": int(towers.passage_encoder.output_dim),
        "vocab_size": int(module.hparams.vocab_size),
        "embedding_dim": int(module.hparams.embedding_dim),
        "encoder": dict(module.hparams.encoder),
        "shared_towers": bool(module.hparams.shared_towers),
        "query_tower": weights_hash(towers.query_encoder),
        "passage_tower": weights_hash(towers.passage_encoder),
    }


def encode_tokens(encode, tokens: Ragged, dim: int, batch_size: int = 512, items: np.ndarray | None = None, progress: tqdm | None = None, out=None):
    """Encode rows of ``tokens`` with ``encode(ids, lengths)`` in length-sorted batches (as validation does).

    Returns [len(tokens), dim] float32; rows not in ``items`` (default: all) stay zero. ``progress``
    (a tqdm bar) is advanced by the rows encoded. ``out``: where the rows go instead of a new tensor
    (anything taking ``out[index] = vectors``, e.g. ``negatives.ann.VectorFile``); it is returned.
    """
    items = np.arange(len(tokens)) if items is None else items
    batches = LengthSortedBatches(tokens.lengths, batch_size, items=items)
    dataset = TokenBatches(tokens)
    out = torch.zeros(len(tokens), dim) if out is None else out
    with torch.inference_mode():
        for plan in batches:
            batch = dataset[plan]
            out[batch["index"]] = encode(batch["ids"], batch["lengths"]).float()
            if progress is not None:
                progress.update(len(plan))
    return out


def progress_bar(total: int, desc: str) -> tqdm:
    return progress_bars.bar(total=total, desc=desc, unit=" rows", smoothing=0.1)


def load_problem(path: str | Path, err: Exception) -> str:
    """Why ``torch.load`` failed, in a few words: a file that is not a torch file at all is said so (torch's own
    message for it advises ``weights_only=False``, which would unpickle an untrusted file, or cites
    ``torch.save`` internals); otherwise the error's first sentence."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:  # torch's words for it are about mmap and torch.save's options, or an empty EOFError
            return "the file is empty (0 bytes)"
    except OSError:
        head = b""
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive; a legacy pickle
        return "not a file written by torch.save: a checkpoint is a zip archive"
    first = " ".join(str(err).split())
    first = first.split(". ")[0][:200]
    return f"{type(err).__name__}: {first}"
