"""Environment variables set for one call only (a run's ``threads=`` seeding, its progress-bar switch): a caller in the
same process, a notebook or a test, finds them as they were."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def kept(names: tuple[str, ...]):
    """The variables ``names`` as they were before the block (set, changed or unset inside it)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
