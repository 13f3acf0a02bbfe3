"""The one way the commands and recipes set torch's intra-op threads (``threads=`` in every config)."""

from __future__ import annotations

import contextlib

from two_tower.core import environ as environment


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; None keeps torch's default (one per core); anything else but a
    positive whole number is a ConfigError naming ``threads`` (the rule ``check("threads", ...)`` of every command)."""
    if threads is None:
        return
    from two_tower.core.checks import check

    check("threads", threads)
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def kept(environ: tuple[str, ...] = ()):
    """The caller's torch intra-op thread count (and the environment variables ``environ``) as they were before the
    block: ``threads=`` (and Lightning's seeding, ``PL_GLOBAL_SEED``) apply to one ``train()``, ``evaluate()`` or
    ``build_index()`` call, not to the process that called it afterwards (a notebook that trains, then encodes)."""
    import torch

    threads = torch.get_num_threads()
    try:
        with environment.kept(environ):
            yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
