"""Weights & Biases tracking: run group and tags from the Hydra run, and a table of validation examples.

- ``fill_wandb_group_and_tags(cfg)``: when ``logger.wandb.group`` / ``tags`` are null, sets the group to
  the sweep (``<job name>-<sweep dir name>`` for a multirun, so every job of one ``-m`` run shares it;
  ``<job name>-<run dir name>`` for a single run) and the tags to the chosen config group options
  (``encoder:gru``, ``loss:infonce``, ...), from Hydra's ``hydra.runtime.choices``, plus
  ``config:<key>`` (all overrides but the seed; ``two_tower.core.config_key``) to group one configuration's seeds.
- ``ValidationExamples``: a callback logging a ``wandb.Table`` of a few validation queries with their
  top-k retrieved passages (text, score, selected or not) every validation epoch.
- ``fill_wandb_run_id(cfg, resuming)``: the W&B run id a run folder records, so a resumed run logs to the same W&B run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, open_dict

from two_tower.core.errors import ConfigError, TrackingError
from two_tower.training.wandb_check import start_failure, wandb_problem

log = logging.getLogger(__name__)

# Config groups whose chosen option becomes a tag (others, e.g. paths or callbacks, say little about a run).
TAG_GROUPS = ("data", "embeddings", "encoder", "negatives", "loss", "optimizer", "scheduler", "trainer", "experiment", "debug", "hparams_search")


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def run_group() -> str | None:
    """``<job name>-<sweep dir name>`` in a multirun, ``<job name>-<run dir name>`` otherwise."""
    hc = _hydra_config()
    if hc is None:
        return None
    from hydra.types import RunMode

    directory = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else hc.run.dir
    return f"{hc.job.name}-{Path(str(directory)).name}"


def run_tags() -> list[str]:
    """``group:option`` for each chosen option of the groups in ``TAG_GROUPS`` (W&B tags are <= 64 chars)."""
    hc = _hydra_config()
    if hc is None:
        return []
    choices = hc.runtime.choices
    return [f"{g}:{choices[g]}"[:64] for g in TAG_GROUPS if choices.get(g) not in (None, "null")]


def config_tags() -> list[str]:
    """``config:<key>``: the run's configuration key (all overrides but the seed, ``two_tower.core.config_key``),
    so the dashboard can group one configuration's seeds (W&B tags are <= 64 chars: longer keys are
    shortened with a hash; the full key is the ``config_key`` config value)."""
    from two_tower.core.config_key import current_config_key

    key = current_config_key()
    if key is None:
        return []
    tag = f"config:{key}"
    if len(tag) > 64:
        import hashlib

        tag = f"{tag[:55]}~{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    return [tag]


def check_wandb_login(cfg: DictConfig) -> None:
    """Before any data is loaded: a ConfigError, in one line, when ``logger=wandb`` cannot log (``wandb_problem``)."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not isinstance(wandb_cfg, DictConfig):
        return
    problem = wandb_problem(offline=bool(wandb_cfg.get("offline")))
    if problem:
        raise ConfigError(f"logger=wandb: {problem}")


def start_wandb(loggers: list) -> None:
    """Start the W&B run of each W&B logger now, so that a failure to (a network that does not answer: W&B waits for
    its ``init_timeout``, then raised CommError tracebacks) is one line rather than tracebacks."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        try:
            logger.experiment  # noqa: B018 (wandb.init, on rank 0)
        except wandb.errors.Error as err:
            raise TrackingError(start_failure(err, "logger=wandb")) from err


def fill_wandb_group_and_tags(cfg: DictConfig) -> None:
    """Fill ``logger.wandb.group`` and ``logger.wandb.tags`` when they are null (explicit values win)."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not isinstance(wandb_cfg, DictConfig):
        return
    with open_dict(wandb_cfg):
        if wandb_cfg.get("group") is None:
            wandb_cfg.group = run_group()
        if wandb_cfg.get("tags") is None:
            wandb_cfg.tags = run_tags() + config_tags()


# The W&B run id of a run folder, so that its resume logs to the same W&B run (one W&B run per job).
RUN_ID_FILE = Path("wandb") / "run_id"


def fill_wandb_run_id(cfg: DictConfig, resuming: bool) -> str | None:
    """Set ``logger.wandb.id`` when it is null (an explicit id wins, and is recorded): a resumed run (``ckpt_path``, or a requeued job)
    takes the id its run folder recorded (``<output_dir>/wandb/run_id``), so it goes on logging to the W&B run the
    stopped one started, where it had made a second run of the job in the group (epoch 0 in one, the rest in the
    other); a new run draws a new id and records it there (rank 0 writes it). Returns the id, or None without W&B."""
    import secrets
    import string

    from lightning.pytorch.utilities import rank_zero_only

    from two_tower.core.atomic import atomic_write

    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not isinstance(wandb_cfg, DictConfig):
        return None
    path = Path(cfg.paths.output_dir) / RUN_ID_FILE
    try:
        recorded = path.read_text().strip() or None
    except OSError:
        recorded = None  # a new run, one started before run ids were recorded, or without W&B
    if wandb_cfg.get("id"):
        run_id = str(wandb_cfg.id)  # recorded too, so a resume that leaves the id out logs to the same W&B run
    elif resuming and recorded is not None:
        run_id = recorded
        log.info("W&B: resuming run %s (%s)", run_id, path)
    else:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # as wandb draws one
    if run_id != recorded and getattr(rank_zero_only, "rank", 0) == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            f.write(run_id + "\n")
    with open_dict(wandb_cfg):
        wandb_cfg.id = run_id
    return run_id


def tracking_callbacks(loggers: list) -> list[L.Callback]:
    """The callbacks the active loggers need: ``ValidationExamples`` with a WandbLogger."""
    from lightning.pytorch.loggers import WandbLogger

    return [ValidationExamples()] if any(isinstance(lg, WandbLogger) for lg in loggers) else []


class ValidationExamples(L.Callback):
    """Every validation epoch, log ``val/examples``: the first ``num_queries`` evaluated validation queries
    and their ``top_k`` passages over the whole split corpus, with score and ``is_selected``.

    Runs before the module's own ``on_validation_epoch_end`` (Lightning calls callbacks first), so it
    reads the embeddings the module collected for its metrics (``TwoTowerModule._gather``) rather than
    encoding anything again. The last table is kept in ``self.last_table``.
    """

    def __init__(self, num_queries: int = 5, top_k: int = 3, max_chars: int = 300, key: str = "val/examples"):
        self.num_queries, self.top_k, self.max_chars, self.key = num_queries, top_k, max_chars, key
        self.last_table = None

    def columns(self) -> list[str]:
        cols = ["query"]
        for k in range(1, self.top_k + 1):
            cols += [f"passage_{k}", f"score_{k}", f"selected_{k}"]
        return cols

    def rows(self, pl_module, split) -> list[list] | None:
        passages_index, passages = pl_module._gather(0)
        queries_index, queries = pl_module._gather(1)
        if passages_index.numel() != split.num_passages or queries_index.numel() == 0:
            return None  # partial corpus (fast_dev_run, limit_val_batches)
        corpus = pl_module._ordered((passages_index, passages), split.num_passages).cpu()
        evaluated = set(split.evaluated_queries().tolist())
        picked = [i for i, q in enumerate(queries_index.tolist()) if q in evaluated]
        picked = sorted(picked, key=lambda i: int(queries_index[i]))[: self.num_queries]
        if not picked:
            return None
        rows_index = queries_index[picked].tolist()
        scores = queries[picked].cpu() @ corpus.T
        top_scores, top = scores.topk(min(self.top_k, split.num_passages), dim=1)
        out = []
        for row, hit_scores, hits in zip(rows_index, top_scores.tolist(), top.tolist()):
            selected = set(split.positives[row].tolist())
            line = [split.query_texts[row]]
            for score, pid in zip(hit_scores, hits):
                line += [split.passage_texts[pid][: self.max_chars], round(float(score), 4), pid in selected]
            line += [None] * (len(self.columns()) - len(line))
            out.append(line)
        return out

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or getattr(trainer.datamodule, "val", None) is None:
            return
        rows = self.rows(pl_module, trainer.datamodule.val)  # every rank: _gather is collective in DDP
        if rows is None or not trainer.is_global_zero:
            return
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        self.last_table = wandb.Table(columns=self.columns(), data=rows)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.log({self.key: self.last_table, "trainer/global_step": trainer.global_step})
