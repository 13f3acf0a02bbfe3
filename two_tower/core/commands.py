"""How a user runs one of the project's commands, as the texts that name one should say it: ``python search.py`` in a
clone (the root scripts), ``two-tower-search`` where the package was installed and this process was started as one of
its commands (pyproject's [project.scripts]), where no ``search.py`` exists to run."""

from __future__ import annotations

import os
import re
import shlex
import sys

_PREFIX = "two-tower-"
# Commands a clone runs as python -m two_tower.cli.NAME: they have no root script NAME.py
_NO_ROOT_SCRIPT = {"compare"}


def command(name: str) -> str:
    """``name`` (train, index, evaluate, search, serve, compare) as the user runs it."""
    started_as = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if os.path.basename(started_as).startswith(_PREFIX):
        return f"{_PREFIX}{name}"
    if name in _NO_ROOT_SCRIPT or started_as.endswith(os.path.join("two_tower", "cli", f"{name}.py")):  # python -m two_tower.cli.NAME
        return f"python -m two_tower.cli.{name}"
    return f"python {name}.py"


# A value Hydra's override grammar reads as the text it is, unquoted (a comma makes a list, `=` and brackets do not parse)
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_/.+:-]+(?: +[A-Za-z0-9_/.+:-]+)*")


def argument(key: str, value) -> str:
    """``key=value`` as one shell argument of a command line a user can paste, whose value Hydra reads as this text:
    quoted for Hydra where its grammar needs it (``index="/data/a,b"``), then for the shell (``'index="/data/a,b"'``,
    ``'index=/data/my indexes'``). In a quoted value Hydra reads a backslash as an escape only before a quote, before
    ``${`` (an interpolation, resolved unless escaped: a folder named ``a${x}`` was read as ``a`` + the setting x) or at
    the end."""
    text = str(value)
    if not _HYDRA_PLAIN.fullmatch(text):
        text = '"' + re.sub(r'(\\*)("|\$\{|$)', lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), text) + '"'
    return shlex.quote(f"{key}={text}")


def as_run(text: str, name: str) -> str:
    """``text`` (a usage text written for the clone's ``python NAME.py``) naming the command as the user runs it."""
    return text.replace(f"python {name}.py", command(name))


def _register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("two_tower_command"):  # ${two_tower_command:train} in conf/*.yaml's --help texts
        OmegaConf.register_new_resolver("two_tower_command", command)


_register_resolver()
