"""Progress bars, one switch for all of them. A run's ``+trainer.enable_progress_bar=false`` (logs to a file, a batch
job) turned off Lightning's bar only: ours (reading rows, tokenizing, the teacher's encoding, mining) and the libraries'
went on writing theirs. The switch is tqdm's own environment variable: the processes a run starts (DDP's others) read it
when they import tqdm; in this process, where tqdm read its environment on import, ``bar`` asks it for each bar."""

from __future__ import annotations

import contextlib
import os
import sys

from two_tower.core import environ

_SWITCH = "TQDM_DISABLE"


def shown() -> bool:
    """Whether progress bars are on (a library's bar that takes a switch is given this)."""
    return os.environ.get(_SWITCH, "").strip().lower() not in ("1", "true", "yes")


def bar(iterable=None, *, disable: bool = False, **kwargs):
    """A tqdm progress bar (``tqdm.auto``'s arguments), drawn only if ``shown()``."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=disable or not shown(), **kwargs)


@contextlib.contextmanager
def turned_off(when: bool = True):
    """Inside the block, every progress bar of this process and of the processes it starts (tqdm's, Hugging Face's:
    datasets, the Hub) is off; afterwards they are as they were (a caller in the same process, e.g. a notebook or a
    test, keeps its bars)."""
    if not when:
        yield
        return
    import datasets
    from huggingface_hub import utils as hub

    # the Hub's (a teacher's or tokenizer's download) read its environment variable on import, long before: its switch
    names = (_SWITCH, "HF_HUB_DISABLE_PROGRESS_BARS")
    was_enabled, hub_was_enabled = datasets.is_progress_bar_enabled(), not hub.are_progress_bars_disabled()
    with environ.kept(names):
        os.environ.update(dict.fromkeys(names, "1"))
        datasets.disable_progress_bars()
        hub.disable_progress_bars()
        try:
            yield
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
            if hub_was_enabled:
                hub.enable_progress_bars()


def open_bars() -> list:
    """The tqdm bars of this process not closed yet; none where tqdm was never imported (it is not imported for this)."""
    tqdm = sys.modules.get("tqdm")
    return list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()))
