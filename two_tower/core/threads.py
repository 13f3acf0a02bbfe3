"""The one way the commands and recipes set torch's intra-op threads (``threads=`` in every config)."""

from __future__ import annotations


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; None keeps torch's default (one per core); anything else but a
    positive whole number is a ConfigError naming ``threads`` (the rule ``check("threads", ...)`` of every command)."""
    if threads is None:
        return
    from two_tower.core.checks import check

    check("threads", threads)
    import torch

    torch.set_num_threads(threads)
