"""How a command ends when it is told to stop (SIGTERM): one line, status 143, and nothing half-written left."""

from __future__ import annotations

import contextlib
import os
import sys

# How long a SIGTERM'd block may take to clean up before the process ends without it.
GRACE_SECONDS = 20


def log_to_files(message: str) -> None:
    """``message`` in the log files of this process (a run folder's train.log: a refused run whose folder is kept
    says there why it stopped), not on the console, which has the ``error:`` line already."""
    import logging

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if handlers:
        record = logging.LogRecord("two_tower", logging.ERROR, __file__, 0, message, None, None)
        for handler in handlers:
            handler.handle(record)


class Terminated(BaseException):
    """SIGTERM arrived (``stopped_by_sigterm``): a BaseException, so no ``except Exception`` on the way out takes it."""


@contextlib.contextmanager
def stopped_by_sigterm(message: str = "stopped by SIGTERM; the outputs it was writing were removed"):
    """SIGTERM inside the block ends the process with one line (``message``) and status 143 (as a shell reports a
    process ended by it), after the ``with`` blocks it interrupts have cleaned up (staged outputs are removed: nothing
    half-written is left). Without it SIGTERM ended index.py and evaluate.py silently, and train.py while it prepared
    its data (tokenizing, distilling, encoding with the teacher, mining: a probe); Lightning handles SIGTERM from
    the start of training on (a checkpoint is saved), uvicorn in serve.py (its graceful stop)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        # Python drops an exception raised where it cannot propagate (a test saw train.py read on, under load, with
        # SIGTERM now ignored, 2 times in ~20): if the process is still here after the grace period, it ends anyway.
        # What it was staging is then left as a temporary folder, which the next writer sweeps (core.atomic).
        timer = threading.Timer(GRACE_SECONDS, _end_now, (message,))
        timer.daemon = True
        timers.append(timer)
        timer.start()
        raise Terminated()

    def stop():
        for timer in timers:  # ended here, as meant
            timer.cancel()
        print(message, file=sys.stderr)
        log_to_files(message)
        sys.exit(143)

    timers: list[threading.Timer] = []
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        stop()
    else:
        if timers:  # a SIGTERM whose exception was dropped: the block ended anyway, and the process ends here
            stop()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _end_now(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    log_to_files(message)
    os._exit(143)
