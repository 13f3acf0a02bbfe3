"""Progress bars, one switch for all of them. A run's ``+trainer.enable_progress_bar=false`` (logs to a file, a batch
job) turned off Lightning's bar only: ours (reading rows, tokenizing, the teacher's encoding, mining) and the libraries'
went on writing theirs. The switch is tqdm's own environment variable: the processes a run starts (DDP's others) read it
when they import tqdm; in this process, where tqdm read its environment on import, ``bar`` asks it for each bar, and
``turned_off`` creates every other tqdm bar (a library's) disabled, and turns Hugging Face's and transformers' own
switches off."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

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
    # transformers copies the Hub's switch when it is imported and keeps its own: imported before the block (a
    # multirun's earlier job, a notebook), its "Loading weights" bar went on in every job of a sweep. Imported
    # inside, it copies the switch off and is turned back on afterwards below.
    transformers_was_enabled = _transformers_bars(None)
    with environ.kept(names), _tqdm_disabled():
        os.environ.update(dict.fromkeys(names, "1"))
        datasets.disable_progress_bars()
        hub.disable_progress_bars()
        _transformers_bars(False)
        try:
            yield
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
            _transformers_bars(hub_was_enabled if transformers_was_enabled is None else transformers_was_enabled)
            if hub_was_enabled:
                hub.enable_progress_bars()
            else:
                hub.disable_progress_bars()  # transformers' switch turns the Hub's on with its own


_tqdm_lock, _tqdm_depth, _tqdm_original = threading.Lock(), 0, None


@contextlib.contextmanager
def _tqdm_disabled():
    """Inside the block every tqdm bar of this process is created disabled. tqdm reads ``TQDM_DISABLE`` once, when it is
    imported (long before a run, by Lightning), so a library that draws plain tqdm bars and takes no switch of its own
    drew them anyway: model2vec's "Encoding tokens" while distilling ``embeddings=distilled`` vectors. Blocks that
    overlap (in threads too) patch once, counted, and the last to end restores tqdm's own ``__init__`` (a review: two
    threads' blocks ending in the order they began left every later bar of the process off)."""
    global _tqdm_depth, _tqdm_original
    from tqdm import std

    with _tqdm_lock:
        if _tqdm_depth == 0:
            _tqdm_original = std.tqdm.__dict__["__init__"]
            original = std.tqdm.__init__

            def disabled(self, *args, **kwargs):
                if len(args) > 10:  # ``disable`` given by position (the 11th parameter)
                    args = (*args[:10], True, *args[11:])
                else:
                    kwargs["disable"] = True
                original(self, *args, **kwargs)

            std.tqdm.__init__ = disabled
        _tqdm_depth += 1
    try:
        yield
    finally:
        with _tqdm_lock:
            _tqdm_depth -= 1
            if _tqdm_depth == 0:
                std.tqdm.__init__ = _tqdm_original


def _transformers_bars(on: bool | None) -> bool | None:
    """transformers' own progress-bar switch, where transformers is imported (it is not imported for this): set to
    ``on`` (None: left as it is); returns what it was, or None where transformers is not imported."""
    logging = sys.modules.get("transformers.utils.logging")
    if logging is None:
        return None
    was = logging.is_progress_bar_enabled()
    if on is True:
        logging.enable_progress_bar()
    elif on is False:
        logging.disable_progress_bar()
    return was


def open_bars() -> list:
    """The tqdm bars of this process not closed yet; none where tqdm was never imported (it is not imported for this)."""
    tqdm = sys.modules.get("tqdm")
    return list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()))
