"""Checkpoints that are whole or absent after a kill at any instant, whatever ``$TMPDIR`` is.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in
``$TMPDIR``; when that is another filesystem (node-local /tmp, a tmpfs) the final move is a copy over
the existing ``last.ckpt`` (EXDEV), so a kill or a full disk during that copy leaves it truncated.
``AtomicCheckpointIO`` writes a temporary file in the checkpoint's own folder, fsyncs it and
``os.replace``s it (``two_tower.core.atomic``); temporary files of killed runs are swept on the next save.
Remote paths (``s3://`` and the like) keep Lightning's own writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from two_tower.core.atomic import atomic_write, sweep_stale_temps
from two_tower.core.errors import NotWritableError


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self):
        super().__init__()
        self._swept: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent not in self._swept:
            sweep_stale_temps(path.parent)
            self._swept.add(path.parent)
        try:
            with atomic_write(path) as f:
                torch.save(checkpoint, f)
        except (OSError, RuntimeError) as err:  # torch's writer raises RuntimeError over the OSError of a full disk
            cause = next((e for e in _chain(err) if isinstance(e, OSError)), None)
            if cause is None:
                raise
            raise NotWritableError(f"{path}: the checkpoint could not be written ({cause.strerror or cause}); the previous "
                                   f"checkpoints are whole (resume from {path.parent / 'last.ckpt'} once there is room)") from err

    def remove_checkpoint(self, path) -> None:
        if "://" in str(path):
            return super().remove_checkpoint(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _chain(err: BaseException):
    """``err`` and the exceptions it was raised from or during, nearest first."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__
