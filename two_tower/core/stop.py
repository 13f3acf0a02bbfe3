"""How a command ends when it is told to stop (SIGTERM): one line, status 143, and nothing half-written left."""

from __future__ import annotations

import contextlib
import sys


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
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        print(message, file=sys.stderr)
        log_to_files(message)
        sys.exit(143)
    finally:
        signal.signal(signal.SIGTERM, previous)
