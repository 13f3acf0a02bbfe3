"""What a command does before it imports Lightning: keep torchmetrics from importing transformers.

torchmetrics (1.9) imports transformers' ``AutoModel`` when it is imported, for text metrics no command uses
(BERTScore, InfoLM, CLIPScore), whenever transformers is installed (it is, with the ``distill`` extra);
Lightning imports torchmetrics. Upstream: Lightning-AI/torchmetrics#2242. Measured on this project's
2-core machine (2026-12-07): ``import lightning`` 4.1-4.3 s with this (two runs) against 6.6-7.2 s without (three
runs); a whole tiny ``train.py`` run (the tests' TINY settings), with and without alternating three times, 7.3-8.8 s
against 8.5-10.0 s (0.85x).
A teacher (sentence-transformers) imports transformers itself when it is loaded, unaffected.

Only a command's task does this, once its overrides passed their check (a refusal and ``--help`` stay quick):
``train()`` or ``main(cfg)`` called from Python leave torchmetrics as it is. In a command's process torchmetrics'
text metrics that need transformers are then missing (``from torchmetrics.text import BERTScore`` is an
ImportError); no command uses them. If torchmetrics is already imported, or lightning_utilities no longer reads
versions the way this expects, it does nothing.
"""

from __future__ import annotations

import sys


def skip_torchmetrics_transformers() -> bool:
    """Import torchmetrics with transformers reported as not installed to its requirement checks (they cache
    their answer), so its text metrics leave transformers unimported. True when it did so."""
    if "torchmetrics" in sys.modules or "transformers" in sys.modules:
        return False
    try:
        from importlib.metadata import PackageNotFoundError

        import lightning_utilities.core.imports as requirement_checks
    except ImportError:
        return False
    version = getattr(requirement_checks, "_version", None)
    if version is None:
        return False

    def without_transformers(name: str):
        if name == "transformers":
            raise PackageNotFoundError(name)
        return version(name)

    requirement_checks._version = without_transformers
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        return False
    finally:
        requirement_checks._version = version
    return "transformers" not in sys.modules
