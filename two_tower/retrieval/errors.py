"""Errors the retrieval entry points report as one line (no traceback): bad input, named with its file."""


from two_tower.core.errors import ConfigError, TwoTowerError

__all__ = ["CheckpointError", "ConfigError", "CorpusError", "EmptyQueryError", "IndexFolderError", "RetrievalError"]


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

