"""The one way the commands and recipes set their threads (``threads=`` in every config): torch's intra-op threads
and FAISS's OpenMP threads alike (a FAISS search or k-means on every core while ``threads=1`` asked for one)."""

from __future__ import annotations

import contextlib

from two_tower.core import environ as environment


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` and ``faiss.omp_set_num_threads(threads)`` (in the calling thread: OpenMP
    counts are per thread); None keeps their defaults (one per core); anything else but a positive whole number is a
    ConfigError naming ``threads`` (the rule ``check("threads", ...)`` of every command)."""
    if threads is None:
        return
    from two_tower.core.checks import check

    check("threads", threads)
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


@contextlib.contextmanager
def kept(environ: tuple[str, ...] = ()):
    """The caller's torch and FAISS thread counts (and the environment variables ``environ``) as they were before the
    block: ``threads=`` (and Lightning's seeding, ``PL_GLOBAL_SEED``) apply to one ``train()``, ``evaluate()`` or
    ``build_index()`` call, not to the process that called it afterwards (a notebook that trains, then encodes)."""
    import faiss
    import torch

    threads, omp = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        with environment.kept(environ):
            yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if faiss.omp_get_max_threads() != omp:
            faiss.omp_set_num_threads(omp)
