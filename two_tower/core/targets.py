"""Which classes a saved file may name. Checkpoints and index folders hold configs with Hydra ``_target_``s (the
towers' encoder, the loss, the vectors that extend the vocabulary), built with ``hydra.utils.instantiate`` when the
file is loaded. The files are read with ``torch.load(weights_only=True)`` so that a file from elsewhere cannot run
code, but ``instantiate`` calls whatever a ``_target_`` names, nested ones first: an index folder whose
``query_encoder.pt`` named ``os.system`` ran it when searched or served (a review). So a file's targets are checked
before anything is built: two-tower's own classes, and the prefixes ``$TWO_TOWER_TRUSTED_TARGETS`` adds
(comma-separated, e.g. ``mypackage.``) for a model built with classes of one's own."""

from __future__ import annotations

import os

OWN = ("two_tower.",)
VARIABLE = "TWO_TOWER_TRUSTED_TARGETS"


def trusted_prefixes() -> tuple[str, ...]:
    extra = tuple(p.strip() for p in os.environ.get(VARIABLE, "").split(",") if p.strip())
    return OWN + extra


def untrusted_target(config) -> str | None:
    """The first ``_target_`` (at any depth of dicts and lists) outside the trusted prefixes, else None."""
    prefixes = trusted_prefixes()
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            target = node.get("_target_")
            if target is not None and not (isinstance(target, str) and target.startswith(prefixes)):
                return repr(target)
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return None


def refusal(where: str, target: str) -> str:
    """The one line for a file naming ``target``."""
    return (f"{where}: names the class {target}, which is not one of two-tower's: not built, as a file from elsewhere "
            f"could run any code this way (a model of your own classes: add their prefix to {VARIABLE})")
