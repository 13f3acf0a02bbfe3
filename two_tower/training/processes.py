"""The processes of a multi-process (DDP) run when one of them ends early: one line, not every process's traceback.

A process that fails, or is killed, closes its connections, and every other process fails in its next collective
with gloo's ``Connection closed by peer`` traceback (a probe: an error line in rank 1 was followed by rank 0's
90-line traceback and status 1; rank 0's error line by rank 1's traceback; rank 1 killed by SIGKILL, or out of
memory, gave rank 0's traceback alone). Now a process that lost another says so in one warning line and exits 1;
the launcher (rank 0, which started the others) waits for them and ends with the status of the one that failed
first: 2 after its ``error:`` line, else one ``error:`` line saying which process ended how, and what was saved.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

from two_tower.core.errors import ProcessLostError

log = logging.getLogger(__name__)

# What a collective raises when another process has gone (gloo; NCCL reports a dead peer through its watchdog).
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")
# How long the launcher waits for the other processes to end once one connection is lost.
WAIT_SECONDS = 30


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another process of the run went away."""
    return isinstance(err, RuntimeError) and any(phrase in str(err) for phrase in LOST_PEER)


@contextmanager
def other_processes_watched(trainer, checkpoint: Path):
    """Run the block (``trainer.fit``, ``trainer.test``); a collective that fails because another process of the run
    ended is reported as above. ``checkpoint``: the run's ``last.ckpt``, for the launcher's line."""
    try:
        yield
    except RuntimeError as err:
        if getattr(trainer, "world_size", 1) < 2 or not lost_peer(err):
            raise
        procs = list(getattr(trainer.strategy.launcher, "procs", None) or [])
        if trainer.global_rank != 0 or not procs:
            if trainer.global_rank != 0:  # a process another started: the one that failed first reports it
                log.warning("Process of rank %d stopped: another process of this run ended first (its line says why; a killed one gives none)", trainer.global_rank)
                raise SystemExit(1) from None
            # processes a scheduler started (SLURM): their statuses are not known here
            raise ProcessLostError(f"another process of this run ended, so this one stopped too ({_first_line(err)}); see its "
                                   f"log for why. {_saved(checkpoint)}") from None
        raise _launcher_error(procs, checkpoint, err) from None


def _launcher_error(procs: list[subprocess.Popen], checkpoint: Path, err: BaseException) -> BaseException:
    """What the launcher ends with once the processes it started (ranks 1, 2, ... in order) have ended."""
    stop_lightning_observer()  # it SIGKILLs this process 5 s after a child fails: no line, status 137
    for proc in procs:
        try:
            proc.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()  # none left behind
            proc.wait()
    ended = [(rank, proc.returncode) for rank, proc in enumerate(procs, start=1)]
    if any(code == 2 for _, code in ended):  # its `error:` line is printed: that is the run's reason
        return SystemExit(2)
    killed = [(rank, code) for rank, code in ended if code < 0]
    failed = [(rank, code) for rank, code in ended if code > 0]
    if killed:
        rank, code = killed[0]
        how = f"was killed by {_signal_name(-code)}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    elif failed:
        rank, code = failed[0]
        how = f"failed (exit status {code}; its message is above)"
    else:
        return ProcessLostError(f"the connection to another process of this run was lost ({_first_line(err)}). {_saved(checkpoint)}")
    return ProcessLostError(f"the training process of rank {rank} {how}, so the run stopped. {_saved(checkpoint)}")


def _saved(checkpoint: Path) -> str:
    from two_tower.training.callbacks import resume_settings

    if not checkpoint.is_file():
        return "No checkpoint was saved yet: run the command again"
    return (f"{checkpoint} (the last checkpoint written, whole) resumes it: the same command plus "
            f"{resume_settings(checkpoint.parent.parent)}")


def stop_lightning_observer() -> None:
    """Lightning's thread that watches the processes it started ends at its next look, with nothing to watch."""
    for thread in threading.enumerate():
        if type(thread).__name__ == "_ChildProcessObserver":
            thread._child_processes = []


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def ddp_strategy(**kwargs):
    """Lightning's ``DDPStrategy(**kwargs)`` for towers whose buffers are the same in every process (the bag-of-words
    signatures are drawn from a fixed seed, up to 277 MB): DDP's default would send them from rank 0 before every
    forward pass. torch 2.13 names that switch ``forward_sync_buffers`` and deprecates ``broadcast_buffers`` (a
    warning from each process at every fit); older torch has only the latter. With ``forward_sync_buffers=False``
    the buffers are still sent once, when DDP wraps the model."""
    import inspect

    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    switch = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"
    return DDPStrategy(**{switch: False, **kwargs})  # +trainer.strategy.forward_sync_buffers=true (or the old name) wins
