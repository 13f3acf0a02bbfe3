"""Errors about the user's input (data, files, config), reported by the commands as one line.

Every such error derives from ``TwoTowerError`` and says what is wrong and which file, row or key.
The command layer (``two_tower.cli.common.exit_on_error``) turns them into ``error: ...`` and exit
status 2; ``TWO_TOWER_DEBUG=1`` re-raises them with the traceback instead. Every error class of the
project is here, so any layer can raise any of them.
"""

from __future__ import annotations


class TwoTowerError(Exception):
    """Base class: the message names the problem and where it is."""


class ConfigError(TwoTowerError, ValueError):
    """A config value that is unset, of the wrong type, out of range, or cannot go with another."""


class NotWritableError(TwoTowerError):
    """An output location that cannot be written (read-only, not a folder, or too little free space)."""


class TrackingError(TwoTowerError):
    """The experiment tracker (W&B) could not start its run (no network, no such project...); the message says why."""


class TrainingDivergedError(TwoTowerError):
    """A training step's loss is not finite (NaN or inf): the run stops there; the message says at which step."""


class ProcessLostError(TwoTowerError):
    """Another process of a multi-process (DDP) run ended while this one waited for it; the message says which and how."""


# ------------------------------------------------------------------------------------------ data


class DataSourceError(TwoTowerError):
    """The data could not be loaded; the message says why and what to do instead."""


class BeirError(TwoTowerError):
    """A BEIR folder that cannot be read; the message names the file."""


class EmbeddingsError(TwoTowerError):
    """A vectors file is missing or malformed; the message names the file."""


class TeacherError(TwoTowerError):
    """The teacher model cannot be found or loaded; the message names it."""


class PerQueryError(TwoTowerError):
    """A per-query file is missing, unreadable or does not have the expected columns."""


class CompareError(TwoTowerError):
    """The runs cannot be compared as asked (no runs, no per-query file, different queries...)."""


# ------------------------------------------------------------------------------------- retrieval


class RetrievalError(TwoTowerError):
    """Base class: the message says what is wrong and where."""


class CheckpointError(RetrievalError):
    """A checkpoint that cannot be used."""


class CorpusError(RetrievalError, ValueError):
    """A passage file that cannot be indexed."""


class IndexFolderError(RetrievalError):
    """An index folder that is missing, incomplete, inconsistent, or built by another model."""


class EmptyQueryError(RetrievalError, ValueError):
    """A query that is empty or only white space."""
