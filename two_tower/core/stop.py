"""How a command ends when it is told to stop (SIGTERM): one line, status 143, and nothing half-written left."""

from __future__ import annotations

import contextlib
import os
import sys

from two_tower.core import progress

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
        if not timers:
            # If the exception is dropped time and again, or the clean-up hangs, the process ends anyway after the
            # grace period; what it was staging is then a temporary folder, which the next writer sweeps (core.atomic).
            timer = threading.Timer(GRACE_SECONDS, _end_now, (message,))
            timer.daemon = True
            timers.append(timer)
            timer.start()
        raise Terminated()

    def dropped(unraisable):
        # Python drops an exception raised where it cannot propagate (a __del__, a weakref callback: a test saw train.py
        # read on under load, with SIGTERM then ignored, after "Exception ignored in ... Traceback"). The signal is
        # sent again instead, without a word, a moment later from another thread: the handler runs again at one of
        # the main thread's next steps, which can propagate it. (A signal sent or marked from here, or a thread
        # started with threading, which waits for it, runs the handler here, where its exception is dropped again.)
        if isinstance(unraisable.exc_value, Terminated) and threading.current_thread() is threading.main_thread():
            import _thread

            signal.signal(signal.SIGTERM, handler)
            _thread.start_new_thread(_send_sigterm_soon, (ended, handler))
            return
        previous_hook(unraisable)

    def stop():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a SIGTERM sent again (dropped) must not interrupt the ending
        for timer in timers:  # ended here, as meant
            timer.cancel()
        _end_progress_bars()
        print(message, file=sys.stderr)
        log_to_files(message)
        sys.exit(143)

    timers: list[threading.Timer] = []
    ended = threading.Event()  # the block is over: a SIGTERM not yet sent again is not sent
    previous = signal.signal(signal.SIGTERM, handler)
    previous_hook, sys.unraisablehook = sys.unraisablehook, dropped
    try:
        yield
    except Terminated:
        stop()
    else:
        if timers:  # a SIGTERM whose exception was dropped: the block ended anyway, and the process ends here
            stop()
    finally:
        # A SIGTERM to be sent again (dropped) is not sent once the block is over: it reached the caller's handler, or
        # ended the process by the default one, skipping the exit's clean-up (a review)
        ended.set()
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook


def _send_sigterm_soon(ended, handler) -> None:
    import signal
    import time

    time.sleep(0.05)
    if not ended.is_set() and signal.getsignal(signal.SIGTERM) is handler:
        os.kill(os.getpid(), signal.SIGTERM)


def _end_progress_bars() -> None:
    """Close the progress bars the stop interrupted, so each ends its line and the message starts on its own (CI saw
    ``Reading train rows:   7%|...| 28602/400000 [...]stopped by SIGTERM ...``: a bar whose loop the stop left is
    not closed until it is collected)."""
    for bar in progress.open_bars():
        with contextlib.suppress(Exception):
            bar.close()


def _end_now(message: str) -> None:
    # the last resort, from the grace timer's thread: closing a bar takes tqdm's lock, which the stuck main thread may
    # hold (a review), so a bar still open only gets its line ended
    with contextlib.suppress(Exception):
        if any(not bar.disable for bar in progress.open_bars()):
            sys.stderr.write("\n")
    print(message, file=sys.stderr, flush=True)
    log_to_files(message)
    os._exit(143)
