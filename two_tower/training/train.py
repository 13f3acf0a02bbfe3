"""The training recipe: data -> model -> Trainer.fit, returning the metrics the sweeper optimises."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning as L
import pandas as pd
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
import torch
from omegaconf import DictConfig, OmegaConf

from two_tower.core.atomic import check_writable, discard, nearest_existing, sweep_stale_temps
from two_tower.core.cache import check_cache_root
from two_tower.core.stop import stopped_by_sigterm
from two_tower.core.threads import kept, set_threads
from two_tower.retrieval.checkpoint import load_problem
from two_tower.core import per_query, progress, random_state, run_record
from two_tower.training.callbacks import CheckpointOnStop, PerQueryWriter
from two_tower.training.config import check_sweep_processes, check_val_check_interval, planned_processes, unvalidated_epochs, validate_train_config
from two_tower.training.loggers import ResumableCSVLogger
from two_tower.training.processes import other_processes_watched
from two_tower.core.config_key import NOT_SET, changed_settings, current_config_key
from two_tower.data.batches import TripletBatchSampler
from two_tower.data.datamodule import NEGATIVES_CHECKPOINT, TwoTowerDataModule
from two_tower.training.console import lightning_warnings_filtered, quiet_lightning, resume_warnings_filtered
from two_tower.core.errors import CheckpointError, ConfigError, DataSourceError, PerQueryError
from two_tower.model import frozen_rows
from two_tower.model.module import DATA_DIGESTS_KEY, EPOCH_SUMS_KEY, RUN_CONFIG_KEY, TwoTowerModule
from two_tower.negatives.refresh import NegativeRefresh
from two_tower.training.tracking import check_wandb_login, fill_wandb_group_and_tags, fill_wandb_run_id, start_wandb, tracking_callbacks
from two_tower.training.utils import in_sweep, instantiate_group, task_wrapper

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> TwoTowerDataModule:
    embeddings = hydra.utils.instantiate(cfg.embeddings)
    negatives = hydra.utils.instantiate(cfg.negatives)
    teacher = hydra.utils.instantiate(cfg.teacher) if cfg.get("teacher") else None
    return hydra.utils.instantiate(cfg.data, embeddings=embeddings, negatives=negatives, teacher=teacher, seed=cfg.seed, _recursive_=False)


def build_module(cfg: DictConfig, datamodule: TwoTowerDataModule) -> TwoTowerModule:
    try:
        module = _build_module(cfg, datamodule)
    except TypeError as err:  # +encoder.bogus=1 and the like reach a constructor as an unknown keyword
        if "unexpected keyword argument" not in str(err):
            raise
        raise ConfigError(f"a setting no part of the model takes: {err} (check the encoder., loss., optimizer., scheduler. overrides)") from err
    module.towers.load_embeddings(datamodule.embedding_matrix)
    module.attach_tokenizer(datamodule.tokenizer)
    return module


def _build_module(cfg: DictConfig, datamodule: TwoTowerDataModule) -> TwoTowerModule:
    return TwoTowerModule(
        vocab_size=len(datamodule.tokenizer),
        embedding_dim=datamodule.embedding_matrix.shape[1],
        encoder=cfg.encoder,
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler") or None,
        shared_towers=cfg.model.shared_towers,
        freeze_embeddings=cfg.embeddings.freeze,
        gather_across_devices=cfg.model.gather_across_devices,
        extension_size=len(datamodule.tokenizer.extension_words),
        hash_buckets=cfg.model.hash_buckets,
    )


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path=last`` means this run dir's own ``checkpoints/last.ckpt`` (resume a preempted run by
    running the same command with ``hydra.run.dir`` set to its dir)."""
    path = cfg.get("ckpt_path")
    if isinstance(path, str) and not path.strip():  # ckpt_path=$UNSET: Lightning's ValueError after data preparation
        raise ConfigError("ckpt_path is empty: give a checkpoint's path, or ckpt_path=last to resume this run folder's")
    if path != "last":
        return path
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if not last.is_file() and in_sweep():
        # a sweep stopped part-way: the jobs it had not reached have no checkpoint and start from the beginning
        log.warning("ckpt_path=last: no %s: this job of the sweep starts from the beginning", last)
        return None
    if not last.is_file():
        raise ConfigError(
            f"ckpt_path=last: no {last}. Point hydra.run.dir (or hydra.sweep.dir for a multirun) at the run to "
            "resume, or give ckpt_path=PATH/TO/last.ckpt"
        )
    return str(last)


def check_resume_shapes(path: str, checkpoint: dict, module: TwoTowerModule) -> None:
    """Refuse, in one line, a checkpoint (read from ``path`` by ``read_resume_checkpoint``) of another model shape
    (encoder, dims, bag path) than this config's."""
    derived = checkpoint.get(frozen_rows.KEY, {})  # frozen word rows the checkpoint does not carry
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()} | {k: tuple(entry["shape"]) for k, entry in derived.items()}
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problems = [f"{k}: {saved[k]} in the checkpoint vs {own[k]} here" for k in own if k in saved and saved[k] != own[k]]
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    if missing:
        problems.append(f"not in the checkpoint: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"only in the checkpoint: {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    if problems:
        raise CheckpointError(
            f"ckpt_path={path}: trained with another model than this config ({'; '.join(problems[:3])}): resume with the "
            "encoder and model settings it was trained with (its run folder's .hydra/config.yaml)"
        )
    # Derived now, before loggers and the trainer start, once the shapes agree: a changed vectors source is refused here.
    frozen_rows.restore(dict(checkpoint["state_dict"]), derived, module.tokenizer, f"ckpt_path={path}")


def written_folders(cfg: DictConfig) -> list[tuple[str, Path]]:
    """The folders a run writes in besides its run folder, each with the setting that names it (``key=value``): the callbacks'
    (``dirpath``: checkpoints/, per_query/) and the loggers' (the CSV logger's ``save_dir/name/version``, W&B's
    ``save_dir/wandb``, any other's ``save_dir``)."""
    found = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and node.get("dirpath"):
            found.append((f"callbacks.{name}.dirpath={node.dirpath}", Path(str(node.dirpath))))
    for name, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or not node.get("save_dir"):
            continue
        folder, target = Path(str(node.save_dir)), str(node.get("_target_", ""))
        if target.endswith("CSVLogger"):
            version = node.get("version")
            folder = folder / str(node.get("name") or "") / (f"version_{version}" if isinstance(version, int) else str(version or ""))
        elif target.endswith("WandbLogger"):
            folder = folder / "wandb"
        found.append((f"logger.{name}.save_dir={node.save_dir}", folder))
    return found


def check_written_folders(cfg: DictConfig) -> None:
    """Refuse, in one line before any data is read, a folder of ``written_folders`` that takes no files (a read-only
    mount, a file in its place). Each was found only when first written: a traceback before the first epoch (csv/,
    wandb/), or after training (per_query/, its test table), or an error after the first epoch's training
    (checkpoints/). A folder not made yet is checked where it would be made (its nearest existing parent); none is made here."""
    for setting, folder in written_folders(cfg):
        existing = nearest_existing(folder)
        if existing is not None:
            check_writable(existing, setting)


def check_training_rows(datamodule: TwoTowerDataModule) -> None:
    """Refuse, in one line, training data that leaves nothing to learn from: one usable row with in-batch
    negatives (its batch has no other passage: loss 0.0, a run that 'succeeds' at nothing), or a corpus of
    one passage (every query ranks it first: val/mrr@10 1.0)."""
    rows = datamodule.train.num_queries
    if rows < 2 and not datamodule.negatives.per_query:
        raise DataSourceError(f"the training split has {rows} usable row: in-batch negatives need at least 2 (the other rows' "
                              "passages are a row's negatives); add rows, or use negatives=random, bm25 or ann")
    if datamodule.train.num_passages < 2:
        raise DataSourceError(f"the training split has {datamodule.train.num_passages} distinct passage: nothing to rank a passage against")
    if datamodule.val.num_passages < 2:
        raise DataSourceError(f"the validation split has {datamodule.val.num_passages} distinct passage: every query would rank it first (val/mrr@10 1.0, meaningless)")


def other_checkpoints_hint(path: Path) -> str:
    """For an unreadable ``<run>/checkpoints/last.ckpt``: the way on. The run's command with ``ckpt_path=last`` was refused
    for it, and without it for the folder holding a run's ``last.ckpt``, each line naming the other (a probe): the folder's
    epoch checkpoints resume it (newest first), and another folder trains anew. Empty for any other file."""
    if path.name != "last.ckpt" or path.parent.name != "checkpoints":
        return ""
    epochs = sorted(path.parent.glob("epoch*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    where = f"ckpt_path={epochs[0]}" if epochs else "none is there"
    return f"; resume from the epoch checkpoint the folder keeps ({where}), or train into another folder"


def read_resume_checkpoint(path: str) -> dict:
    """The checkpoint to resume from (memory-mapped), or one line saying why it cannot be one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"ckpt_path={path}: not a readable checkpoint (truncated, or not a torch file): {load_problem(path, err)}"
                              f"{other_checkpoints_hint(Path(path))}") from err
    if not isinstance(state, dict) or "state_dict" not in state or "tokenizer" not in state:
        raise CheckpointError(f"ckpt_path={path}: not a two-tower training checkpoint (no state_dict or tokenizer in it)")
    return state


def requeued() -> bool:
    """Whether this is a SLURM job started again by its scheduler (a requeue runs the same command, without
    ckpt_path=last; Lightning's SLURM environment restores its own checkpoint then)."""
    import os

    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def check_resume_settings(path: str, state: dict, cfg: DictConfig) -> None:
    """Refuse, in one line, a resume that changes a setting the run was trained with (Lightning restores the
    optimizer's state, so ``optimizer.lr=0.5`` trained on at the old rate while the run recorded the new one; another
    batch size skipped another number of rows mid-epoch; another seed was recorded as the run's). How long it
    trains (unless a scheduler fixes that), on what hardware, where it writes and logs may change
    (``config_key.may_change_on_resume``). ``state``: the checkpoint at ``path``. A checkpoint saved before
    checkpoints carried their run's configuration is not checked (a warning says so)."""
    saved = state.get(RUN_CONFIG_KEY)
    if saved is None:
        log.warning("ckpt_path=%s: saved before checkpoints recorded their run's settings, so this resume's settings are not "
                    "checked against the run's: give the command the run was started with (its .hydra/overrides.yaml)", path)
        return
    changed = changed_settings(saved, OmegaConf.to_container(cfg, resolve=False))
    if not changed:
        return
    shown = "; ".join(f"{name}: {_shown(before)} -> {_shown(after)}" for name, before, after in changed[:4])
    more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
    raise ConfigError(
        f"ckpt_path={path}: this resume changes settings the run was trained with: {shown}{more}. A resume goes on with "
        "the run's own settings (only how long it trains, unless a learning-rate schedule fixes that, on what hardware and "
        "where it writes may change): drop these, or train a new run in another folder"
    )


def _shown(value) -> str:
    return "(not set)" if value is NOT_SET else repr(value)


def run_tables(path: str) -> Path:
    """The per-query tables folder of the run whose checkpoint ``path`` is (``<run>/checkpoints/X.ckpt``)."""
    return Path(path).parent.parent / "per_query"


def run_had_ended(path: str, state: dict) -> bool:
    """Whether the checkpoint is that of a run whose training had ended: the run folder's ``per_query/fit_ended.json``
    records this checkpoint's step. A run stopped in its last epoch (SIGTERM in its last validation, or while scoring
    the test split) has trained every epoch but not ended, and its resume goes on to the end. Resumed, an ended run
    trains nothing (Lightning returns at once); its best validation value comes back with the checkpoint callback's
    restored state (``report_best_validation``). ``state``: the checkpoint at ``path``."""
    import json

    marker = run_tables(path) / per_query.FIT_ENDED
    try:
        return json.loads(marker.read_text()).get("global_step") == state.get("global_step")
    except (OSError, ValueError, AttributeError):
        return False


def trains_on(state: dict, cfg: DictConfig) -> str | None:
    """What a resume of a run that had ended (``state``: its checkpoint) asks to train beyond where it ended: the
    lengths it sets longer than the run's own ("trainer.max_epochs: 1 -> 2"), or None: the same length, and nothing is
    left to train, also when early stopping ended the run before its max_epochs (Lightning does not keep that it
    stopped, and the resume trained on until early stopping stopped it again). A checkpoint that does not record
    its run's settings: trains_on_without_settings."""
    saved = (state.get(RUN_CONFIG_KEY) or {}).get("trainer")
    done = {"max_epochs": int(state.get("epoch") or 0) + 1, "max_steps": int(state.get("global_step") or 0)}
    if not isinstance(saved, dict):
        return trains_on_without_settings(state, cfg, done)
    longer = []
    for key, default in (("max_epochs", None), ("max_steps", -1)):
        before, now = saved.get(key, default), cfg.trainer.get(key, default)
        if now != before and (now in (None, -1) or (isinstance(now, int) and now > done[key])):
            longer.append(f"trainer.{key}: {before} -> {now}")
    return ", ".join(longer) or None


def trains_on_without_settings(state: dict, cfg: DictConfig, done: dict) -> str | None:
    """trains_on for a checkpoint that does not record its run's settings (saved before 18d6ed6, by a run that wrote
    per_query/fit_ended.json: 91e5a74 on). Without early stopping such a run ended because it reached its length, which
    is then what it trained: a resume whose max_epochs and max_steps both allow more trains on (a probe: one resumed
    with trainer.max_epochs=2 after its 1 said 'nothing is left to train (trainer.max_epochs=2)' and trained nothing).
    With early stopping the run may have stopped before its length: nothing is trained, as for a run's own command."""
    if any(str(name).startswith("EarlyStopping") for name in (state.get("callbacks") or {})):
        return None
    epochs, steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps", -1)
    more_epochs = epochs in (None, -1) or (isinstance(epochs, int) and epochs > done["max_epochs"])
    more_steps = steps in (None, -1) or (isinstance(steps, int) and steps > done["max_steps"])
    if not (more_epochs and more_steps):
        return None
    longer = [f"trainer.{key}: {done[key]} (as trained) -> {now}" for key, now in (("max_epochs", epochs), ("max_steps", steps))
              if isinstance(now, int) and now > done[key]]
    return ", ".join(longer) or f"trainer.max_epochs: {done['max_epochs']} (as trained) -> {epochs}"


def check_resume_negatives(path: str, state: dict, mined_with: str | None) -> None:
    """Refuse, in one line, a resume whose ``negatives.checkpoint`` (``negatives=ann``; ``mined_with``, its content
    digest, None for other negatives) holds another model than the one the run mined with: its remaining epochs trained,
    silently, on another model's hard negatives (a probe). Called before the data is prepared too, so the refusal does not
    wait for the other model's mining (minutes at MS MARCO size)."""
    saved = (state.get(DATA_DIGESTS_KEY) or {}).get(NEGATIVES_CHECKPOINT)
    if saved is not None and mined_with is not None and saved != mined_with:
        raise CheckpointError(
            f"ckpt_path={path}: negatives.checkpoint now holds another model than the one this run mined its hard negatives with "
            f"(content {saved} vs {mined_with}): put that checkpoint back at negatives.checkpoint, or train a new run in another folder")


def check_resume_checkpoint(path: str, state: dict, tokenizer, processes: int | None = None, max_epochs: int | None = None,
                            data_digests: dict[str, str] | None = None) -> None:
    """Refuse, in one line, a checkpoint (``state``, read from ``path`` by ``read_resume_checkpoint``, which refuses
    a truncated or foreign one) made with another vocabulary, on other rows than ``data_digests`` (the datamodule's),
    saved mid-epoch by another number of processes than ``processes`` (None: not known before Lightning starts), or
    past ``max_epochs`` (Lightning's traceback)."""
    words = state["tokenizer"].get("words", [])
    if state["tokenizer"].get("format", 1) != 2:
        raise CheckpointError(f"ckpt_path={path}: made before open vocabularies (tokenizer format 1); start a new run")
    if words != tokenizer.words:
        raise CheckpointError(
            f"ckpt_path={path}: trained with another vocabulary ({len(words)} words; this data and tokenizer give "
            f"{len(tokenizer.words)}): resume with the data and tokenizer settings it was trained with"
        )
    broken = next((name for name, value in (state.get("state_dict") or {}).items()
                   if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())), None)
    if broken is not None:  # trained on from there, the loss was nan from the first step
        raise CheckpointError(f"ckpt_path={path}: its weights hold NaN or inf ({broken}): a damaged file or a run that had diverged; "
                              "resume from an earlier checkpoint (checkpoints/epochNN-*.ckpt) or start a new run")
    # data.path may change on resume (to where the data moved); the rows may not. Only the vocabulary was compared, and
    # validation text is not in it: another validation split (or other labels on the same texts) passed, and its
    # epochs' figures were compared with the first split's to pick the best (a helper's probe)
    saved_digests = state.get(DATA_DIGESTS_KEY) or {}
    changed = [split for split, digest in saved_digests.items() if data_digests and split in data_digests and data_digests[split] != digest]
    if NEGATIVES_CHECKPOINT in changed:
        check_resume_negatives(path, state, data_digests[NEGATIVES_CHECKPOINT])
    if changed:
        raise CheckpointError(
            f"ckpt_path={path}: trained on other {' and '.join(changed)} rows than this data gives (content {saved_digests[changed[0]]} "
            f"vs {data_digests[changed[0]]}): resume with the data the run was trained on (data.path may point to where it moved), "
            "or train a new run in another folder"
        )
    epoch = state.get("epoch")
    if isinstance(epoch, int) and max_epochs not in (None, -1) and epoch > max_epochs:
        raise CheckpointError(f"ckpt_path={path}: saved at epoch {epoch}, past trainer.max_epochs={max_epochs}: set trainer.max_epochs above {epoch} to train on")
    # Each process skips the batches it trained in the interrupted epoch, counted per process: resumed on
    # another number of processes the count means other batches (some trained twice, some never), silently.
    saved = (state.get(EPOCH_SUMS_KEY) or {}).get("processes")  # absent: an epoch's end, or written before it was recorded
    if saved is not None and processes is not None and saved != processes:
        raise CheckpointError(
            f"ckpt_path={path}: saved mid-epoch by a run of {saved} process(es), and this run would have {processes}: the batches left "
            f"in its epoch are counted per process, so resume with trainer.devices x trainer.num_nodes = {saved}, or from an "
            "epoch's checkpoint (checkpoints/epochNN-*.ckpt)"
        )


def set_aside_later_last(ckpt_path: str, saved_step: int, last: Path) -> Path | None:
    """Resumed from another checkpoint than the run folder's ``last.ckpt`` (an older one of its folder,
    ``ckpt_path=<run>/checkpoints/X.ckpt``) that holds another state (another step): that ``last.ckpt`` is the state of
    the run abandoned now. Kept, it stayed until this run's first save, for good where the resume trained nothing more
    (its max_epochs reached, or stopped at once): ``per_query/fit_ended.json`` recorded the resumed step and a following
    ``ckpt_path=last`` went on from the abandoned run (a probe). It is moved aside, whole, to
    ``checkpoints/abandoned-stepN.ckpt`` (never removed), and ``last.ckpt`` becomes a copy of the checkpoint resumed from
    (written beside it and renamed: ``last.ckpt`` is whole at every instant). Rank 0 only. Returns the aside path."""
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0 or not last.is_file():
        return None
    try:
        if Path(ckpt_path).samefile(last):
            return None
    except OSError:
        return None
    try:
        step = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    except Exception:  # unreadable: not the state resumed from either
        step = None
    if step == saved_step:  # the same state (a copy of it): nothing abandoned
        return None
    base = f"abandoned-step{step}" if isinstance(step, int) else "abandoned-unreadable"
    aside, n = last.with_name(f"{base}.ckpt"), 1
    while aside.exists():
        aside, n = last.with_name(f"{base}-{n}.ckpt"), n + 1
    import shutil

    from two_tower.core.atomic import atomic_write

    with atomic_write(aside) as out, open(last, "rb") as src:  # a copy first: last.ckpt stays whole until replaced
        shutil.copyfileobj(src, out, 1 << 20)
    with atomic_write(last) as out, open(ckpt_path, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
    log.warning("ckpt_path=%s: %s held a later state of this run (step %s), abandoned by this resume: moved to %s; %s is now the "
                "state resumed from (step %d), so ckpt_path=last goes on from this run", ckpt_path, last, step, aside.name, last.name, saved_step)
    return aside


class RunClock(L.Callback):
    """``time/train_seconds``: the run's seconds, from the start of its command to its end, a stopped run's included.
    Its checkpoints record the seconds spent until they were saved, and a resume counts on from there: it counted its
    own only (a probe: a sweep job stopped by Ctrl-C after 15 s and resumed reported 1.0 s, and summarize.py's
    "train seconds" with it). Work after the last checkpoint of a killed run, which the resume does again, is counted once."""

    def __init__(self, start: float):
        self.start, self.before = start, 0.0

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def state_dict(self) -> dict:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.before = float(state.get("seconds") or 0.0)


def quiet_other_ranks() -> None:
    """In the other processes of a multi-process run (DDP launches this script again per device, or a
    scheduler runs one per task), only warnings and errors of this package are logged: rank 0 reports
    the data, the model and the final metrics once, not once per process."""
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        logging.getLogger("two_tower").setLevel(logging.WARNING)


def report_best_validation(metrics: dict[str, float], trainer: L.Trainer, metric: str) -> None:
    """``metrics[metric]``: the best validation's value, the one the checkpoint callback kept (and what
    ``callbacks/default.yaml`` says sweeps maximise), not the last validation's (Lightning's callback_metrics), which
    a sweeper was given for a run that peaked before its last epoch. Resumed, the callback's best covers the whole run.

    Every other ``val/*`` is the same validation's too (``PerQueryWriter`` keeps what it logged), as
    ``per_query/val_best.parquet`` and ``compare`` read ``val/*``; the last validation's values go under
    ``val_last/*``. Where the best validation's other values are not known (a checkpoint saved before they were
    kept, the writer not among the callbacks), those ``val/*`` are left out rather than given from another epoch."""
    best = next((c.best_model_score for c in trainer.checkpoint_callbacks
                 if getattr(c, "monitor", None) == metric and c.best_model_score is not None), None)
    if best is None:
        return
    if metric.startswith("val/"):
        last = {key: metrics.pop(key) for key in [k for k in metrics if k.startswith("val/")]}
        metrics.update({"val_last/" + key[len("val/"):]: value for key, value in last.items()})
        logged = next((c.best_logged for c in trainer.callbacks if isinstance(c, PerQueryWriter) and c.best_logged), None)
        if logged is not None and metric in logged and abs(logged[metric] - float(best)) <= 1e-6:  # the checkpoint's validation
            metrics.update(logged)
    metrics[metric] = float(best)


def logged_test_metrics(ckpt_path: str) -> dict[str, float]:
    """The ``test/*`` figures an ended run logged, as means of its per-query test table (what ``test/*`` averages), for
    the final metrics of its resume, which scores nothing again (they were missing there: a sweeper or a script reading
    ``train()``'s result got no test figure). Empty where the table is unreadable."""
    path = run_tables(ckpt_path) / per_query.STAGE_FILES["test"]
    try:
        table = per_query.read(path)
    except PerQueryError as err:
        log.warning("The test figures of the ended run are not in the final metrics: %s", err)
        return {}
    return {f"test/{column}": float(table[column].mean()) for column in table.columns
            if column not in per_query.NOT_METRICS and pd.api.types.is_numeric_dtype(table[column])}


def test_best_checkpoint(trainer: L.Trainer, module: TwoTowerModule, datamodule: TwoTowerDataModule, loggers: list) -> dict[str, float]:
    """Score the best-on-validation checkpoint on the labelled test split, once: ``test/*`` in every
    logger (and the W&B run summary). Nothing without a test split or a best checkpoint."""
    if datamodule.test is None:
        return {}
    checkpoint = trainer.checkpoint_callback
    if checkpoint is None or not checkpoint.best_model_path or trainer.interrupted:
        why = ("validation did not run on the full corpus, or training stopped" if not getattr(checkpoint, "best_gone", None) else
               f"the one recorded, {checkpoint.best_gone}, is gone, and this resume validated nothing after it")
        log.info("Test split not scored: no best-on-validation checkpoint (%s)", why)
        return {}
    results = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint.best_model_path, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items() if k.startswith("test/")}
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(metrics)
        logger.save()
    which = f"best-on-{checkpoint.monitor} checkpoint" if checkpoint.monitor else "last checkpoint (no checkpoint callback monitors validation)"
    log.info("Test (%s %s, the number to report): %s", which, Path(checkpoint.best_model_path).name, {k: round(v, 4) for k, v in sorted(metrics.items())})
    return metrics


@task_wrapper
def train(cfg: DictConfig) -> dict[str, float]:
    """Train (or resume with ``ckpt_path``) and return the final logged metrics."""
    # trainer.enable_progress_bar=false: Lightning's bar and ours (reading rows, tokenizing, the teacher, mining)
    # threads=, Lightning's seed (PL_GLOBAL_SEED, PL_SEED_WORKERS) and the seeded generators (random, numpy, torch)
    # are the run's only, not the caller's process's
    # Lightning's console lines once each, without its adverts and its warning about its own use of torch (console.py)
    quiet_lightning()
    with kept(environ=("PL_GLOBAL_SEED", "PL_SEED_WORKERS")), random_state.kept(), progress.turned_off(cfg.trainer.get("enable_progress_bar") is False), \
            lightning_warnings_filtered():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    quiet_other_ranks()
    with run_record.kept_if_refused():  # refused before training: the run folder's .hydra record is put back
        validate_train_config(cfg)
        if (warning := unvalidated_epochs(cfg)) is not None:
            log.warning(warning)
        if in_sweep():  # a job's own trainer settings (a swept trainer.devices): the sweep's start checked the base config's
            from hydra.core.hydra_config import HydraConfig

            check_sweep_processes(cfg.trainer, HydraConfig.get().launcher.get("_target_", ""))
        check_wandb_login(cfg)
        # Before any loading, tokenizing or training: the run folder must take files, and so must the cache
        # folder unless it is a read-only one whose entries are read.
        check_writable(cfg.paths.output_dir, f"paths.output_dir={cfg.paths.output_dir}", min_free_bytes=16 << 20)
        if cfg.paths.get("cache_dir"):
            check_cache_root(cfg.paths.cache_dir, f"paths.cache_dir={cfg.paths.cache_dir}", min_free_bytes=16 << 20)
        check_written_folders(cfg)  # checkpoints/, per_query/, csv/, wandb/: a read-only one was found after the data's preparation
        sweep_stale_temps(Path(cfg.paths.output_dir) / "checkpoints")  # partial checkpoints of a killed run
        set_threads(cfg.get("threads"))
        L.seed_everything(cfg.seed, workers=True)
        start = time.perf_counter()
        ckpt_path = resolve_ckpt_path(cfg)
        ended, ended_step = False, None  # ended_step: where a run that had ended, trained on now, had ended
        if ckpt_path:
            state = read_resume_checkpoint(ckpt_path)  # memory-mapped, read once for the checks below
            check_resume_settings(ckpt_path, state, cfg)
            ended = run_had_ended(ckpt_path, state)
            longer = trains_on(state, cfg) if ended else None
            if longer:  # a run that had ended, trained on: unfinished until it ends again, and then its test split is scored again
                log.info("ckpt_path=%s: this run had ended; %s trains it on (its test split is scored again when it ends, with "
                         "the best checkpoint then)", ckpt_path, longer)
                ended, ended_step = False, int(state.get("global_step") or 0)
            elif ended:  # e.g. a job of a sweep resumed with ckpt_path=last that had ended before the stop
                log.info("ckpt_path=%s: this run had ended: nothing is left to train (trainer.max_epochs=%s); its %s is its best "
                         "validation's", ckpt_path, cfg.trainer.get("max_epochs"), cfg.get("optimized_metric"))
                ended_epochs = int(state.get("epoch") or 0) + 1
            saved_step = int(state.get("global_step") or 0)  # where the checkpoint was taken (the CSV log's rows after it go)
        elif (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file() and not requeued():
            # Trained again from the start, it overwrote the stopped run's last.ckpt and logged its epochs twice.
            where = "hydra.sweep.dir, with -m" if in_sweep() else "hydra.run.dir"
            raise ConfigError(f"{cfg.paths.output_dir} holds a run already (checkpoints/last.ckpt): resume it with ckpt_path=last, "
                              f"or train into another folder ({where})")

        # Preparing data (tokenizing, distilling, the teacher's vectors, mining) can take minutes before Lightning, which
        # handles SIGTERM from the start of training on, is there: a SIGTERM now is one line and 143 (it ended the
        # process without a word); cache entries are staged and renamed, so none is left half-made.
        with stopped_by_sigterm("stopped by SIGTERM while preparing the data, before training: nothing was trained or "
                                "saved, and no half-made cache entry is left; run the command again"):
            datamodule = build_datamodule(cfg)
            if ckpt_path:
                # a run saved before words kept their combining marks tokenizes as it was trained
                datamodule.tokenizer_settings["unicode_words"] = bool(state["tokenizer"].get("unicode_words", False))
                # a replaced negatives.checkpoint, before the pools are mined with it
                check_resume_negatives(ckpt_path, state, getattr(datamodule.negatives, "checkpoint_digest", None))
            run_record.work_started()  # tokenizing, distilling, mining: a refusal from here on keeps the run folder's log
            datamodule.prepare_data()
            datamodule.setup("fit")
            check_training_rows(datamodule)
            processes = planned_processes(cfg.trainer)
            if processes:
                datamodule.check_processes(processes)
            check_val_check_interval(cfg.trainer, TripletBatchSampler.batches_in(datamodule.train.num_queries, datamodule.batch_size) // (processes or 1))
            if ckpt_path:
                check_resume_checkpoint(ckpt_path, state, datamodule.tokenizer, processes, cfg.trainer.get("max_epochs"), datamodule.data_digests)
                if datamodule.num_workers > 0:
                    # Worker processes read batches ahead from the moment Lightning creates the loader's iterator, which on
                    # resume it does before it sets the sampler's epoch, marks the epoch as restarted mid-way and puts back a
                    # refreshed negative pool: the resumed epoch trained epoch 0's batches. In the main process the first
                    # batch is drawn after all three, so the resumed run trains what the uninterrupted one would have.
                    log.warning("data.num_workers=%d: a resumed run loads its batches in the main process (data.num_workers=0), so it "
                                "trains the batches the uninterrupted run would have (workers would read the resumed epoch's first batches "
                                "before Lightning restores where it was)", datamodule.num_workers)
                    datamodule.num_workers = 0
            # Seeded again: preparing data on a cache miss (distilling word vectors, mining, ...) may draw from the
            # global generators and a cache hit does not, so without this a run on a cold cache started from
            # other weights (and ended at other figures) than the same run on a warm one.
            L.seed_everything(cfg.seed, workers=True)
            module = build_module(cfg, datamodule)
            module.run_config = OmegaConf.to_container(cfg, resolve=False)
            if ckpt_path:
                check_resume_shapes(ckpt_path, state, module)
                del state  # the memory-mapped file is not held through training
    log.info("Model: %d trainable / %d parameters", sum(p.numel() for p in module.parameters() if p.requires_grad), sum(p.numel() for p in module.parameters()))

    fill_wandb_group_and_tags(cfg)  # logger.wandb.group/tags: null = the sweep and the chosen options
    fill_wandb_run_id(cfg, resuming=bool(ckpt_path) or requeued())  # a resumed run folder: its W&B run again
    loggers = instantiate_group(cfg.get("logger"))
    if not ckpt_path and not requeued():
        # Started from the beginning in a folder that holds an earlier run's records but no checkpoint of it (checked
        # above): a killed run's metrics.csv rows, its test table. Kept, they passed for this run's: every step in
        # metrics.csv twice, and compare counted a run killed before it ended, on the earlier run's test figures.
        for logger in loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.start_over()
        discard(Path(cfg.paths.output_dir) / "per_query" / per_query.STAGE_FILES["test"])
    start_wandb(loggers)  # a W&B run that cannot start (no network) is one line
    key = current_config_key()  # all overrides but the seed: seeds of one configuration share it
    for logger in loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **({"config_key": key} if key else {})})
    # A run that had ended and scored its test split is done: resumed, it logs nothing again (its training time
    # and test figures stay as logged). One stopped while scoring the test split scores it now.
    done = ended and (datamodule.test is None or (run_tables(ckpt_path) / per_query.STAGE_FILES["test"]).is_file())
    if ckpt_path and not done:
        for logger in loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.resume(saved_step)
                if ended_step is not None:  # its test figures and time, logged when it ended, are logged again when it ends again
                    logger.drop_rows_from(ended_step)
    callbacks = instantiate_group(cfg.get("callbacks")) + tracking_callbacks(loggers)
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a progress bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.trainer.get("enable_model_summary") is False:  # the configured ModelSummary prints whatever the flag says
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    if datamodule.negatives.refresh_every_n_epochs:
        callbacks.append(NegativeRefresh(datamodule.negatives.refresh_every_n_epochs))
    clock = RunClock(start)
    callbacks.append(clock)
    try:
        trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")
    except InstantiationException as err:  # trainer.devices=abc, +trainer.max_epoch=1 (a typo), ...
        cause = err.__cause__ or err
        raise ConfigError(f"trainer: {type(cause).__name__}: {' '.join(str(cause).split())[:400]}") from err
    if ended:  # trains nothing: Lightning would go on after an early stop (its decision is not in the checkpoint)
        trainer.fit_loop.max_epochs = ended_epochs
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if ckpt_path and not ended:
        # A run that had ended, trained on: its test table is the old best checkpoint's (that checkpoint may go with
        # save_top_k=1) and is scored again when training ends. Kept, it made the run look finished to compare.py
        # while it trained (its fit_ended.json is removed): counted on test/* with the old model's figures and on
        # val/* with a mid-training val_best, also after a kill. Removed here, after every check of the resume: this
        # run's, never that of another run whose checkpoint this one starts from (a review: it was the checkpoint's).
        # So is the table of a run resumed from an older checkpoint of its folder (ckpt_path=<run>/checkpoints/X.ckpt),
        # scored when the folder's run ended past it (a probe: stopped after the resume, compare counted the run on
        # the abandoned run's test figures); a run resumed mid-training has none.
        if discard(Path(cfg.paths.output_dir) / "per_query" / per_query.STAGE_FILES["test"]) and ended_step is None:
            log.info("Removed per_query/%s: the test figures of a later state of this folder's run than ckpt_path=%s; the test "
                     "split is scored again when this run ends", per_query.STAGE_FILES["test"], ckpt_path)
    if ckpt_path:
        set_aside_later_last(ckpt_path, saved_step, last)
    try:
        # another process that ended: one line, not each one's traceback; Lightning's resume warnings that do not hold here
        with other_processes_watched(trainer, last), resume_warnings_filtered(resuming=bool(ckpt_path)):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        # Lightning's SIGTERMException is a SystemExit of status 0: a preempted run looked like a finished one
        # to a scheduler or to `train.py && index.py`. A stop by SIGTERM exits 143 (as a shell reports a
        # process ended by it); reaching trainer.max_time is the budget asked for, so 0; a Ctrl-C that reached
        # another process than rank 0 (DDP: every process stops after the same batch), 1, as Ctrl-C in training.
        # The callback said what was saved and how to resume.
        stopper = next((c for c in trainer.callbacks if isinstance(c, CheckpointOnStop)), None)
        reason = stopper.reason if stopper is not None else None
        raise SystemExit({"trainer.max_time": 0, "Ctrl-C": 1}.get(reason, 143)) from None

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    report_best_validation(metrics, trainer, cfg.optimized_metric)
    # A run that had ended trained nothing now: its logged training time stays the one it had (one stopped while
    # scoring its test split loses that row when the test rows are logged again: missing, not replaced by ~0 s).
    if not ended:
        metrics["time/train_seconds"] = clock.seconds()
        for logger in loggers:
            logger.log_metrics({"time/train_seconds": metrics["time/train_seconds"]}, step=trainer.global_step)
    for logger in loggers:
        logger.save()
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_path:
        log.info("Best checkpoint: %s (%s=%.4f)", checkpoint.best_model_path, checkpoint.monitor, float(checkpoint.best_model_score or 0))
    try:
        if done:
            if datamodule.test is not None:  # (a run without a test split said it had scored one: a probe)
                metrics.update(logged_test_metrics(ckpt_path))
                log.info("The test split was scored when the run ended: not again%s", " (its figures, from per_query/test.parquet, are in the final metrics)"
                         if any(k.startswith("test/") for k in metrics) else "")
        else:
            with other_processes_watched(trainer, last):
                metrics.update(test_best_checkpoint(trainer, module, datamodule, loggers))
    except SIGTERMException:  # Lightning's status 0 again: a run stopped before its test figures looked finished
        log.warning("Stopped by SIGTERM while scoring the test split: training had ended. Resume with the same command plus "
                    "ckpt_path=last to score it")
        raise SystemExit(143) from None
    if cfg.optimized_metric not in metrics and cfg.trainer.get("fast_dev_run"):
        # its one validation batch is part of the corpus, which is not ranked (two_tower/model/module.py: _score)
        batches = "one training and one validation batch" if int(cfg.trainer.fast_dev_run) == 1 else f"{int(cfg.trainer.fast_dev_run)} training and validation batches each"
        log.info("fast_dev_run: %s ran (a smoke test); nothing is ranked, logged or saved", batches)
    elif cfg.optimized_metric not in metrics and getattr(trainer.checkpoint_callback, "best_gone", None):
        # resumed from an older checkpoint whose best file a later run removed, with nothing left to train (ResumableCheckpoint)
        log.warning("No %s to report: the best checkpoint recorded, %s, is gone and this resume validated nothing; resume with a "
                    "longer trainer.max_epochs, or score a checkpoint that is there with evaluate.py", cfg.optimized_metric,
                    trainer.checkpoint_callback.best_gone)
    elif cfg.optimized_metric not in metrics and cfg.trainer.get("limit_val_batches") != 0:
        # e.g. trainer.max_steps reached inside the first epoch: nothing was validated, nothing chosen
        log.warning("Training ended before any validation (step %d): no %s to report, optimise or choose a checkpoint by; "
                    "let it run to an epoch's end (trainer.max_steps, trainer.max_epochs)", trainer.global_step, cfg.optimized_metric)
    log.info("Final metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    return metrics
