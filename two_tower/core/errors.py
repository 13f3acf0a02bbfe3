"""Errors about the user's input (data, files, config), reported by the entry points as one line.

Every such error derives from ``TwoTowerError`` and says what is wrong and which file, row or key.
``exit_on_error`` turns them into ``error: ...`` and exit status 2; ``TWO_TOWER_DEBUG=1`` re-raises
them with the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys


class TwoTowerError(Exception):
    """Base class: the message names the problem and where it is."""


class ConfigError(TwoTowerError, ValueError):
    """A config value that is unset, of the wrong type, out of range, or cannot go with another."""


@contextlib.contextmanager
def exit_on_error():
    try:
        yield
    except TwoTowerError as err:
        if os.environ.get("TWO_TOWER_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
