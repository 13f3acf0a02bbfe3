"""The one way the commands and recipes set torch's intra-op threads (``threads=`` in every config)."""

from __future__ import annotations


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; None or 0 keeps torch's default (one per core)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
