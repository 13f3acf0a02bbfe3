"""Callbacks: a checkpoint on SIGTERM or max_time and RNG state in it (a run survives preemption), the
per-query writer, and where each epoch's time goes."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from two_tower.core.distributed import gathered_for_checkpoint, own_part, rank, rank_zero_value, world_size

log = logging.getLogger(__name__)


class CheckpointOnStop(L.Callback):
    """Write ``last.ckpt`` mid-epoch when training is stopped: SIGTERM (what schedulers send before
    killing a job), Ctrl-C, or ``trainer.max_time``. Resuming from it continues with the next batch.

    Lightning stops on SIGTERM after the current batch, at a point where a checkpoint resumes exactly.
    Its own ``max_time`` handling instead ends the epoch early and marks it done, which would skip the
    rest of that epoch on resume; so when the time is up this callback stops the run the SIGTERM way.

    With several processes (DDP) every process must stop at the same step, or one waits forever in a
    collective the others never reach. Lightning's SIGTERM handler runs a broadcast inside the signal
    handler, which interleaves with whatever collective the process was in (a helper's probe: 1 of 4
    SIGTERMs to the launcher, and every SIGTERM to another rank alone, hung the run until SIGKILL). So here
    the handler only notes the signal; at the end of each training batch the processes agree (one
    all-reduce of [SIGTERM seen, time up, Ctrl-C seen]) and all stop after the same batch.

    A Ctrl-C that reaches a process other than rank 0 alone (``kill -INT``; one from the terminal reaches every
    process, and rank 0 stops at once, below) is noted the same way during training: every process stops after the
    same batch and ``last.ckpt`` is written with every process's part, as on SIGTERM. That process raised
    KeyboardInterrupt and ended, rank 0 lost it in its next collective, and the run ended with nothing saved since the
    last validation (a helper's probe: SIGINT to rank 1 at step 7 left last.ckpt at step 5). A second Ctrl-C to it
    stops it at once, as before.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self.timer: Timer | None = None
        self.reason: str | None = None  # why training stopped early: "SIGTERM", "trainer.max_time", "Ctrl-C"
        self.sigterm_seen = False  # by this process's handler, not yet agreed on (several processes)
        self.sigint_seen = False  # by this process's Ctrl-C handler (rank > 0 of several), not yet agreed on
        self._sigint_before = None  # that process's SIGINT handler before this callback's, while its own is in place
        self._sigint_note = None  # this callback's SIGINT handler (Lightning's teardown may put it back after it was undone)
        self._stop_after_validation = False  # a stop asked for before the running validation: taken at its end
        self._lightning_handlers = None  # one process, during a validation: (Lightning's composed handler, its handlers)
        self.training_over = False  # on_train_end has run: a Ctrl-C noted now stops nothing (the run ends as it would)

    def setup(self, trainer, pl_module, stage):
        # Before Lightning registers its signal handlers: the SIGINT handler its teardown puts back at the fit's end is
        # then this one, which notes a Ctrl-C to a process other than rank 0 through the test pass after training too
        if trainer.world_size > 1:
            self._defer_sigint(trainer)

    def on_sanity_check_start(self, trainer, pl_module):  # Lightning's handlers are in place from here
        if trainer.world_size > 1:
            self._defer_sigterm(trainer)
            self._defer_sigint(trainer)

    def on_test_start(self, trainer, pl_module):  # the test pass after training registers Lightning's again
        if trainer.world_size > 1:
            self._defer_sigterm(trainer)  # noted only: the short pass finishes, and the run ends
            self._defer_sigint(trainer)  # so is a Ctrl-C that reaches a process other than rank 0

    def on_train_start(self, trainer, pl_module):
        # Lightning adds a Timer callback when trainer.max_time is set; look it up once, not every batch.
        self.timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if trainer.world_size > 1:
            self._defer_sigterm(trainer)  # again where no sanity check ran (done once: Lightning's is gone then)
            self._defer_sigint(trainer)

    def on_train_end(self, trainer, pl_module):
        # A process other than rank 0 keeps noting a Ctrl-C through the test pass: restored here, one that came after
        # this (the fit's end, the test pass) ended that process alone, and the launcher's error line (status 2) said a
        # training process had failed (a probe). It lets the run end as it would, with its test figures.
        self.training_over = True
        if self.sigint_seen:  # after the last training batch (its validation, the epoch's end): nothing left to stop
            log.warning("The Ctrl-C to the process of rank %d came after the last training batch: training ended", trainer.global_rank)

    # A stop asked for during a validation, or in the batch before it (a SIGTERM, trainer.max_time), takes effect
    # when the validation ends. Lightning stopped in the middle of it and saved a checkpoint that says the epoch's
    # last batch was done, so the resumed run skipped that validation: the epoch was never validated nor its best
    # checkpoint kept (a test that killed a run at a random instant missed epoch 1's figures 1 time in 3). One
    # process notes a SIGTERM during it (several processes do so all along and agree at the next batch end).
    def on_validation_start(self, trainer, pl_module):
        if trainer.world_size == 1:
            self._lightning_handlers = self._defer_sigterm(trainer)
        connector = trainer._signal_connector
        # seen (or, several processes, agreed) in the epoch's last batch: its validation runs first. Not for the
        # validation Lightning's Timer asks for when trainer.max_time is up mid-epoch: that one is cut, as before
        # (the resumed run validates at the epoch's end; run to its end here, it logged that epoch twice).
        if connector.received_sigterm and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            connector.received_sigterm, self._stop_after_validation = False, True

    def on_validation_end(self, trainer, pl_module):
        if trainer.world_size == 1 and self._lightning_handlers is not None:
            composed, handlers = self._lightning_handlers
            composed.signal_handlers, self._lightning_handlers = handlers, None
            if self.sigterm_seen:
                self.sigterm_seen, self._stop_after_validation = False, True
        if self._stop_after_validation:  # Lightning stops after this validation, as after a batch
            self._stop_after_validation = False
            trainer._signal_connector.received_sigterm = True

    def _defer_sigterm(self, trainer):
        """Put a handler that only notes the signal (and forwards it from the launcher to the other
        processes, as Lightning's does) in place of Lightning's in its composed SIGTERM handler; returns
        (the composed handler, its handlers before), or None where there was nothing to replace."""
        import signal
        import threading

        from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose, _SignalConnector

        if threading.current_thread() is not threading.main_thread():
            return None
        composed = signal.getsignal(signal.SIGTERM)
        if not isinstance(composed, _HandlersCompose):
            return None
        connector = trainer._signal_connector

        def note(signum, frame):
            log.info("Received SIGTERM (rank %d): stopping after this training batch or validation (every process at the same point)", trainer.global_rank)
            if not self.sigterm_seen and not connector.received_sigterm and trainer.strategy.launcher is not None:
                trainer.strategy.launcher.kill(signum)
            self.sigterm_seen = True

        before = list(composed.signal_handlers)
        composed.signal_handlers = [note if getattr(h, "__func__", None) is _SignalConnector._sigterm_notifier_fn else h for h in before]
        return composed, before

    def _defer_sigint(self, trainer) -> None:
        """On a process other than rank 0 of several, from the fit's setup to the end of the test pass after it: a
        Ctrl-C is noted (``sigint_seen``), during training for every process to stop after the same batch, after it
        stopping nothing; a second one raises KeyboardInterrupt at once (the handler before). Not again once one is
        noted (during the sanity check, before on_train_start: the second was noted again)."""
        import signal
        import threading

        if trainer.is_global_zero or self.sigint_seen or threading.current_thread() is not threading.main_thread():
            return
        before = signal.getsignal(signal.SIGINT)
        if before is self._sigint_note or before in (signal.SIG_IGN, None):  # in place; or Ctrl-C ignored (a background job): left so
            return

        def note(signum, frame):
            if self.sigint_seen:  # a second Ctrl-C where Lightning's teardown put this handler back: it stops at once too
                raise KeyboardInterrupt
            self._restore_sigint()  # a second Ctrl-C stops this process at once
            # a Ctrl-C from the terminal reaches every process: rank 0 then stops at once and ends the others itself
            if self.training_over:
                log.warning("Ctrl-C reached the process of rank %d after the last training batch: if it reached this process alone, "
                            "the run ends as it would, its test pass included (Ctrl-C again stops this one at once)", trainer.global_rank)
            else:
                log.warning("Ctrl-C reached the process of rank %d: if it reached this process alone, every process stops after this "
                            "training batch (rank 0 says what it saves; Ctrl-C again stops this one at once)", trainer.global_rank)
            self.sigint_seen = True

        signal.signal(signal.SIGINT, note)
        self._sigint_before, self._sigint_note = before, note

    def _restore_sigint(self) -> None:
        if self._sigint_before is not None:
            import signal

            signal.signal(signal.SIGINT, self._sigint_before)
            self._sigint_before = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        remaining = self.timer.time_remaining("train") if self.timer is not None else None
        stop = [self.sigterm_seen, remaining is not None and remaining <= 0, self.sigint_seen]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            agreed = torch.tensor([float(x) for x in stop], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
            stop = [bool(x) for x in agreed.tolist()]
        if stop[0]:
            self.reason = self.reason or "SIGTERM"
            trainer._signal_connector.received_sigterm = True  # Lightning raises SIGTERMException next, in every process
        elif stop[2]:  # a Ctrl-C that reached a process other than rank 0 (rank 0's own raises KeyboardInterrupt)
            self.reason = self.reason or "Ctrl-C"
            trainer._signal_connector.received_sigterm = True
        elif stop[1]:
            if trainer.is_global_zero:
                log.info("trainer.max_time reached: stopping after this batch")
            self.reason = "trainer.max_time"
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer, pl_module, exception):
        from lightning.pytorch.trainer.states import TrainerFn

        self._restore_sigint()
        interrupted = isinstance(exception, KeyboardInterrupt)
        if not (interrupted or isinstance(exception, SIGTERMException)):
            # Nor when another process ended (a Ctrl-C that reached rank 1 alone): the checkpoint's gather of the RNG
            # states raises on the broken group, which cut Lightning's own clean-up short (a review); the launcher's
            # line names the last checkpoint written.
            return
        if interrupted and not trainer.is_global_zero:  # Lightning says it on rank 0 only: the launcher's line points here
            log.warning("Process of rank %d stopped by Ctrl-C", trainer.global_rank)
        if interrupted and trainer.world_size > 1 and trainer.is_global_zero:
            # Lightning SIGKILLs the processes it started next, and its watcher of them then SIGKILLed this one too
            # (status 137, read as "out of memory?", 4 of 9 Ctrl-Cs in training in a probe, instead of 1): wherever the
            # Ctrl-C came (training, a validation, an epoch's end, the test pass; only training's turned it off)
            from two_tower.training.processes import stop_lightning_observer

            stop_lightning_observer()
        self.reason = self.reason or ("Ctrl-C" if interrupted else "SIGTERM")
        for logger in trainer.loggers:  # rows logged since the last flush (the validation just ended: a resumed run skips it)
            logger.save()
        if trainer.state.fn != TrainerFn.FITTING:
            # the test pass after training: the trainer holds the best epoch's weights with the last epoch's loops and
            # optimizer, a mixture last.ckpt must not become (a review); the one training wrote at its end stays
            if trainer.is_global_zero:
                log.warning("Stopped by %s during the test pass, after training: %s kept as training left it; the test split was "
                            "not scored", self.reason, self.path)
            return
        ending = interrupted and _ending_epoch(trainer)
        if interrupted and (trainer.validating and not trainer.sanity_checking or ending):
            # Saved now, the checkpoint would say the epoch's training was done and the resumed run would skip this
            # validation (the epoch never validated, its best checkpoint never kept). Ctrl-C does not wait for the
            # validation to end, as SIGTERM does: the last checkpoint, from before it, is kept, and the resumed run
            # trains on from there and validates every epoch. So at the epoch's end, after its validation (the
            # epoch-end hooks, collectives under DDP, the checkpoints' saves): there the checkpoint also named as best
            # one not yet written, and the resumed run went on from the next epoch without it (_ending_epoch).
            if trainer.is_global_zero:
                where = f"during a validation (epoch {trainer.current_epoch})" if trainer.validating else \
                    f"at the end of epoch {trainer.current_epoch}, after its validation, before its checkpoints were all written"
                if ending:
                    _discard_unfinished_epoch_saves(trainer, self.path)
                if self.path.is_file():
                    log.warning("Stopped by Ctrl-C %s: kept %s as last written, so the resumed run validates the epoch if that "
                                "checkpoint is from before it. Resume with the same command plus %s", where, self.path,
                                resume_settings(self.path.parent.parent))
                else:
                    log.warning("Stopped by Ctrl-C %s: nothing saved (no checkpoint yet): run the command again", where)
            return
        if trainer.global_step > 0:
            loop = trainer.fit_loop.epoch_loop
            if not interrupted and trainer.validating and not trainer.sanity_checking and not loop._should_accumulate():
                # Stopped in a validation Lightning runs after a batch mid-epoch (the one its Timer asks for when
                # trainer.max_time is up; one by val_check_interval): raised there, before the batch's end counts it for
                # the loggers, which a stop at a batch's end (SIGTERM) counts first. The resumed run logged every row one
                # step earlier than the uninterrupted run (a probe: its validations at 92, 186, ... for 93, 187, ...).
                loop._batches_that_stepped += 1
            if interrupted and trainer.world_size > 1:
                # Ctrl-C stops each process wherever it was (one in the all-reduce above, another in backward), so
                # Trainer.save_checkpoint's barrier hung every process for good, SIGTERM and a second Ctrl-C ignored (a
                # probe): rank 0 writes alone, with no collective (its RNG and running sums alone, gathered_for_checkpoint)
                if not trainer.is_global_zero:
                    return
                trainer.strategy.save_checkpoint(trainer._checkpoint_connector.dump_checkpoint(False), self.path)
            else:
                trainer.save_checkpoint(self.path)  # every process: a collective under DDP, written by rank 0
                if trainer.world_size > 1 and trainer.is_global_zero:
                    # every process stops here (after the same batch): the others' ending, with status 1 or 143, must not
                    # have Lightning's watcher SIGKILL this one before it has said what it saved (status 137)
                    from two_tower.training.processes import stop_lightning_observer

                    stop_lightning_observer()
            if not trainer.is_global_zero:
                return
            log.warning("Stopped by %s before training ended: saved %s at epoch %d, step %d. Resume with the same command plus %s",
                        self.reason, self.path, trainer.current_epoch, trainer.global_step, resume_settings(self.path.parent.parent))
        elif trainer.is_global_zero:
            log.warning("Stopped by %s before the first training step: nothing to save", self.reason)


def _discard_unfinished_epoch_saves(trainer, last: Path) -> None:
    """Ctrl-C at an epoch's end, between the best checkpoint's save and ``last.ckpt``'s: the best file was written for an
    epoch that the kept ``last.ckpt`` (from before it) says is not done, and which the resumed run, or the run started
    again where there was no ``last.ckpt`` yet ("nothing saved"), trains and validates again. Kept, it stayed in the folder
    for good beside that run's own best (a probe: ``epoch00-mrr0.1142.ckpt`` from the stopped run beside the new run's
    ``epoch01-mrr0.1398.ckpt``; an uninterrupted run keeps one), or made the resumed run save its best as ``-v1``. It is
    removed; nothing is where ``last.ckpt`` was written at this epoch's end too (the epoch is done: both are kept)."""
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    saved_now = [c for c in callbacks if c._last_global_step_saved == trainer.global_step and c.best_model_path]
    if any(Path(c.best_model_path).resolve() == last.resolve() for c in saved_now):
        return
    for callback in saved_now:
        path = Path(callback.best_model_path)
        if path.is_file():
            path.unlink()
            log.info("Removed %s: written at the end of the epoch Ctrl-C stopped, which is trained and validated again", path)


def _ending_epoch(trainer) -> bool:
    """Whether the running epoch's last training batch is done and its end is not: its validation, the epoch-end hooks
    (collectives under DDP) and the checkpoint callbacks' saves, in which the best checkpoint is named before it is
    written. A checkpoint saved here says the epoch's batches and validation are done, and the run resumed from it
    went on with the next epoch: its best checkpoint, named there, was never written (a probe: Ctrl-C inside that
    save; the resumed run reported ``Best checkpoint: .../epoch00-mrr0.0333.ckpt``, a file that did not exist), and the
    epoch's training figures were never logged."""
    fit = trainer.fit_loop
    batches, epochs = fit.epoch_loop.batch_progress.current, fit.epoch_progress.current
    return bool(fit.epoch_loop._is_training_done) and batches.completed >= batches.ready and epochs.completed < epochs.started


class EpochTimings(L.Callback):
    """Log ``time/epoch_train_seconds`` (the epoch's training steps, validation excluded) and
    ``time/validation_seconds`` every epoch, through every logger (CSV, W&B), so any run shows where its
    time goes. The sanity-check validation is not counted. The training seconds of an epoch so far travel in
    checkpoints: a run resumed mid-epoch (Lightning does not start that epoch again) logged no
    ``time/epoch_train_seconds`` for it; it logs the whole epoch's, the part before the stop included. With several
    processes (DDP) each figure is the slowest process's (the epoch waits for it); rank 0's was logged before."""

    def __init__(self):
        self._train_start = self._val_start = None
        self._val_seconds = 0.0
        self._restored: float | None = None

    def state_dict(self) -> dict:
        if self._train_start is None:
            return {}
        return {"epoch_train_seconds": time.perf_counter() - self._train_start - self._val_seconds}

    def load_state_dict(self, state: dict) -> None:
        self._restored = state.get("epoch_train_seconds")

    def on_train_start(self, trainer, pl_module):
        if self._restored is not None:  # resumed mid-epoch: that epoch's clock goes on (a new epoch starts it again)
            self._train_start, self._val_seconds, self._restored = time.perf_counter() - self._restored, 0.0, None

    def on_train_epoch_start(self, trainer, pl_module):
        self._train_start, self._val_seconds = time.perf_counter(), 0.0

    def on_validation_epoch_start(self, trainer, pl_module):
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or self._val_start is None:
            return
        self._val_seconds += time.perf_counter() - self._val_start
        pl_module.log("time/validation_seconds", _slowest(self._val_seconds, pl_module.device), on_epoch=True)

    def on_train_epoch_end(self, trainer, pl_module):
        if self._train_start is not None:
            seconds = time.perf_counter() - self._train_start - self._val_seconds
            pl_module.log("time/epoch_train_seconds", _slowest(seconds, pl_module.device), on_epoch=True)


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, whose record of the run's best checkpoints survives a resume from another folder.

    Lightning restores its record of the best checkpoints (score, paths) only when the checkpoint folder is the one it
    was saved in; resumed from a moved or copied run folder, or into another folder, it started again from no best and
    took the next epoch as best however it scored (a helper's probe: a run moved and resumed reported
    epoch01-mrr0.0374 as best beside epoch00-mrr0.0572; the test split is scored with it, a sweep given its figure).
    Here the record is restored, each path pointing at this folder's file of that name where there is one (a moved or
    copied run), else where it was saved; and a checkpoint outside this folder is never removed (it is another run's:
    a better epoch here replaces it as best, not on disk). An ended run resumed into another folder (nothing left to
    train) so reports its best validation too (it said 'val/mrr@10=0.0000' there: train.py patched the score in).

    A restored record never names a file that is gone: resumed from an older checkpoint of its folder
    (``ckpt_path=<run>/checkpoints/X.ckpt``), the run had gone on past it and ``save_top_k`` removed the best file it
    records, when a later epoch scored higher. Kept, it stayed the best unless a resumed epoch beat its score: the test
    split was scored with it (a traceback: 'Checkpoint file not found'), and the resumed run's checkpoints named it (a
    probe). Such entries are dropped, with a warning: the best is the best of the recorded files still there, else the
    resumed run's next validation. ``best_gone`` is the dropped best's path (None: none was). No file is removed here:
    the later run's checkpoints stay, outside this run's record."""

    @property
    def state_key(self) -> str:
        """Lightning's key for ModelCheckpoint's state (its class name and settings), so checkpoints saved by either
        class restore into the other."""
        key = super().state_key
        return "ModelCheckpoint" + key[len(type(self).__qualname__):] if key.startswith(type(self).__qualname__) else key

    def load_state_dict(self, state_dict: dict) -> None:
        saved_in = state_dict.get("dirpath", self.dirpath)
        if self.dirpath is None or saved_in == self.dirpath:
            super().load_state_dict(state_dict)
            return self._drop_gone()

        def here(path: str | None) -> str | None:
            if not path:
                return path
            moved = Path(self.dirpath) / Path(path).name
            return str(moved) if moved.is_file() else path

        state = {**state_dict, "dirpath": self.dirpath}
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = here(state[key])
        state["best_k_models"] = {here(path): score for path, score in (state_dict.get("best_k_models") or {}).items()}
        super().load_state_dict(state)
        self._drop_gone()

    best_gone: str | None = None

    def _drop_gone(self) -> None:
        """Drop the restored record's entries whose file is gone (see the class); say so when the best was one. Every
        process takes rank 0's record: a process that found other files (a node's own disk) kept another, and its
        checkpoint callback skipped a collective the others waited in (Lightning's top-k decision), for good."""
        self.best_gone = None
        self.best_k_models = {path: score for path, score in self.best_k_models.items() if Path(path).is_file()}
        if self.best_model_path and not Path(self.best_model_path).is_file():
            self.best_gone = self.best_model_path
            pick = max if self.mode == "max" else min
            self.best_model_path = pick(self.best_k_models, key=self.best_k_models.get) if self.best_k_models else ""
            self.best_model_score = self.best_k_models[self.best_model_path] if self.best_k_models else None
        if self.kth_best_model_path not in self.best_k_models:  # the entry Lightning replaces first: the worst left
            worst = min if self.mode == "max" else max
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.get) if self.best_k_models else ""
            if self.kth_best_model_path:
                self.kth_value = self.best_k_models[self.kth_best_model_path]
        names = ("best_k_models", "best_model_path", "best_model_score", "kth_best_model_path", "kth_value", "best_gone")
        for name, value in zip(names, rank_zero_value(tuple(getattr(self, name) for name in names))):
            setattr(self, name, value)
        if self.best_gone and self.monitor is not None and rank() == 0:
            log.warning("%s, the best checkpoint by %s when the checkpoint resumed from was saved, is gone (removed since: by "
                        "save_top_k when a later run of this folder scored higher, or by hand): the best is %s", self.best_gone, self.monitor,
                        self.best_model_path or "the resumed run's next validation")

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        if self.dirpath is not None and Path(filepath).resolve().parent != Path(self.dirpath).resolve():
            return  # saved by the run this one was resumed from, in its own folder
        super()._remove_checkpoint(trainer, filepath)


def _slowest(seconds: float, device) -> float:
    """The largest of every process's ``seconds`` (one all-reduce; every process runs the hooks that call it). Reduced
    here, not by ``self.log(..., sync_dist=True)``: Lightning reduces such a value when it is first read, and its
    progress bar reads the metrics on rank 0 alone at an epoch's end, so rank 0 waited in a collective the others
    never joined (a 2-process ``experiment=best`` run hung there)."""
    if world_size() < 2:
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return float(value.item())


class RNGState(L.Callback):
    """Save Python, NumPy and torch RNG states in checkpoints and restore them on resume, so dropout and
    anything else random continue exactly as in an uninterrupted run.

    With several processes (DDP) each has its own states (their batches differ in size, so dropout draws
    differently): every process's are saved (``ranks``, gathered while the checkpoint is dumped, which every
    process does) and each takes back its own. Only rank 0's were saved, and every process took them back:
    a resumed run with dropout ended at other figures than the uninterrupted one (a probe, val/mrr@10 0.0406
    against 0.0404). A checkpoint resumed on another number of processes gives the others rank 0's. Saved while
    Ctrl-C is handled, the processes stopped wherever each was, and a gather there hung the run: rank 0's alone then."""

    def state_dict(self) -> dict:
        return gathered_for_checkpoint(_rng_states())

    def load_state_dict(self, state: dict) -> None:
        state = own_part(state)
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])


def _rng_states() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # Plain types and tensors only, so the checkpoint loads with torch.load(weights_only=True).
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }



class PerQueryWriter(L.Callback):
    """Each query's metrics, beside the run's aggregate: ``val_best.parquet`` (the validation epoch with
    the best ``monitor`` mean so far, as the checkpoint callback picks it), ``val_last.parquet`` (the
    latest validation) and ``test.parquet`` (the test split, scored once). Read by ``two_tower.training.compare``."""

    def __init__(self, dirpath: str, monitor: str = "val/mrr@10", mode: str = "max"):
        self.dirpath = Path(dirpath)
        self.stage, self.metric = monitor.split("/", 1)
        self.sign = 1.0 if mode == "max" else -1.0
        self.best: float | None = None
        self.best_logged: dict[str, float] | None = None  # every {stage}/* value logged at the best validation
        # the epochs of the validations val_best.parquet and val_last.parquet hold (None: none yet), kept in checkpoints
        self.epochs: dict[str, int | None] = {"val": None, "val_last": None}
        self._restored_epochs: dict[str, int | None] | None = None  # as the checkpoint resumed from recorded them

    def _table(self, trainer, pl_module, stage: str):
        from two_tower.core import per_query

        found = getattr(pl_module, "per_query", {}).get(stage)
        split = getattr(trainer.datamodule, {"val": "val", "test": "test"}[stage], None)
        if found is None or split is None or not trainer.is_global_zero:
            return None
        epoch, rows, values = found
        if stage == "test":  # the checkpoint scored (its epoch is in its name), not the trainer's epoch counter
            return per_query.split_frame(split, rows, values, checkpoint=Path(trainer.ckpt_path or "").name)
        return per_query.split_frame(split, rows, values, epoch=epoch)

    def on_validation_end(self, trainer, pl_module):
        # After the module's on_validation_epoch_end (callbacks' epoch-end hooks run before the module's).
        if trainer.sanity_checking:
            return
        table = self._table(trainer, pl_module, "val")
        pl_module.per_query.pop("val", None)
        if table is None:
            return
        from two_tower.core import per_query

        per_query.write(table, self.dirpath / per_query.STAGE_FILES["val_last"])
        self.epochs["val_last"] = _table_epoch(table)
        logged = trainer.callback_metrics.get(f"{self.stage}/{self.metric}")
        if self.stage == "val" and logged is not None:
            # The logged (float32) value, compared as ModelCheckpoint compares it: strictly better, so on a tie
            # both keep the earlier epoch (the table's float64 mean could order a tie the other way).
            score = self.sign * float(logged)
            if self.best is None or score > self.best:
                self.best = score
                self.best_logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{self.stage}/")}
                per_query.write(table, self.dirpath / per_query.STAGE_FILES["val"])
                self.epochs["val"] = _table_epoch(table)

    def on_train_start(self, trainer, pl_module):
        # After the callbacks' states are restored: the checkpoint callback that keeps the best by this metric dropped a
        # best whose file was gone (ResumableCheckpoint.best_gone); this best goes with it, so the resumed run's
        # val_best.parquet and val/* figures are of the validation that callback keeps, not of the one it dropped
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "best_gone", None) and callback.monitor == f"{self.stage}/{self.metric}":
                score = callback.best_model_score
                self.best, self.best_logged = (None if score is None else self.sign * float(score)), None

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero:  # a finished run resumed to train on is unfinished again until it ends
            from two_tower.core import per_query

            (self.dirpath / per_query.FIT_ENDED).unlink(missing_ok=True)
            if self._restored_epochs is not None:
                self._drop_later_tables(self._restored_epochs)

    def _drop_later_tables(self, epochs: dict[str, int | None]) -> None:
        """Resumed from an older checkpoint of its folder (``ckpt_path=<run>/checkpoints/X.ckpt``), the folder's validation
        tables may be of the later run abandoned then: val_best.parquet of its best epoch, val_last.parquet of its last. Kept,
        they stayed until this run wrote its own (val_best: until a validation beat the checkpoint's best, maybe never), and
        a run that trained nothing more ended with the abandoned run's tables (a probe). A table of another epoch than the
        checkpoint records for it (``epochs``) goes: this run writes it again at its next (best) validation."""
        from two_tower.core import per_query

        for stage, epoch in epochs.items():
            path = self.dirpath / per_query.STAGE_FILES[stage]
            try:
                found = _table_epoch(pd.read_parquet(path, columns=["epoch"]))
            except FileNotFoundError:
                continue
            except Exception:  # unreadable (or no epoch column): not known to be this state's
                found = "unreadable"
            if found != epoch:
                path.unlink(missing_ok=True)
                log.info("Removed per_query/%s: %s, not the validation of epoch %s the checkpoint resumed from records (a later run "
                         "of this folder went past that checkpoint); written again at this run's next %svalidation",
                         path.name, f"of epoch {found}" if isinstance(found, int) else "unreadable or of no epoch", epoch, "best " if stage == "val" else "")

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:  # training ended (max_epochs, early stopping): the validation tables are final
            from two_tower.core import per_query
            from two_tower.core.atomic import atomic_write

            self.dirpath.mkdir(parents=True, exist_ok=True)
            # the rows trained and validated on, by content (the datamodule's): compare tells runs on other data apart by
            # them, also where the folder kept its path (a probe: runs on 4,680 and 2,000 rows averaged as one)
            data = getattr(getattr(trainer, "datamodule", None), "data_digests", None) or None
            with atomic_write(self.dirpath / per_query.FIT_ENDED, "w") as f:
                f.write(json.dumps({"epoch": trainer.current_epoch, "global_step": trainer.global_step, **({"data": data} if data else {})}))

    def on_test_end(self, trainer, pl_module):
        table = self._table(trainer, pl_module, "test")
        pl_module.per_query.pop("test", None)
        if table is not None:
            from two_tower.core import per_query

            per_query.write(table, self.dirpath / per_query.STAGE_FILES["test"])

    def state_dict(self) -> dict:
        return {"best": self.best, "best_logged": self.best_logged, "epochs": dict(self.epochs)}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.best_logged = state.get("best_logged")  # absent in checkpoints saved before it was kept
        if isinstance(state.get("epochs"), dict):  # absent in checkpoints saved before it was kept: their tables are not checked
            self.epochs = {**self.epochs, **state["epochs"]}
            self._restored_epochs = dict(self.epochs)


def _table_epoch(table) -> int | None:
    """The validation epoch a per-query table holds (its ``epoch`` column), None where it has none."""
    if "epoch" not in table.columns or table.empty:
        return None
    return int(table["epoch"].iloc[0])


def resume_settings(run_dir: Path) -> str:
    """What to add to the command that made ``run_dir`` to resume it: its own folder for a single run; for a job
    of a sweep, the sweep's folder with -m (jobs the sweep had not reached then start from the beginning). A folder
    whose name Hydra or the shell would read otherwise (a space, a comma, ``=``) is quoted, so the line can be pasted."""
    from hydra.core.hydra_config import HydraConfig

    from two_tower.core.commands import argument
    from two_tower.training.utils import in_sweep

    if in_sweep():
        return f"ckpt_path=last {argument('hydra.sweep.dir', HydraConfig.get().sweep.dir)} (with -m)"
    return f"ckpt_path=last {argument('hydra.run.dir', run_dir)}"
