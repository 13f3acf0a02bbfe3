"""Check a composed train config before any data is loaded, naming the key that is wrong.

Hydra already refuses unknown group options (``encoder=foo``) with the list of valid ones. What it
cannot see is a value of the wrong type (``trainer.max_epochs=abc``), a value out of range, a
required value left unset (``???``), or options that do not go together.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from two_tower.core.checks import RULES, check_config, check_explicit_negatives, check_mining_range, check_packing
from two_tower.core.errors import ConfigError
from two_tower.core.metrics import RANKING_METRICS
from two_tower.data.embeddings import DISTILLED_DIM_NULL, EmbeddingsError, GloveEmbeddings

log = logging.getLogger(__name__)


def unvalidated_epochs(cfg: DictConfig) -> str | None:
    """A warning when the run's last epochs will be trained but never validated or saved: with
    ``trainer.check_val_every_n_epoch`` above 1, Lightning validates, and so writes last.ckpt and the best checkpoint,
    only after every n-th epoch, so ``max_epochs=3`` with n=2 trained a third epoch that no checkpoint held (a probe:
    an index built from last.ckpt was epoch 2's model)."""
    trainer = cfg.get("trainer") or {}
    epochs, every = trainer.get("max_epochs"), trainer.get("check_val_every_n_epoch", 1)
    if not (isinstance(epochs, int) and isinstance(every, int) and epochs > 0 and every > 1 and epochs % every):
        return None
    return (f"trainer.max_epochs={epochs} is not a multiple of trainer.check_val_every_n_epoch={every}: the last {epochs % every} "
            f"epoch(s) will be trained but neither validated nor saved (last.ckpt and the best checkpoint hold epoch "
            f"{epochs - epochs % every} at most); make max_epochs a multiple of {every}")


def _glove_width() -> int | None:
    """GloVe's vectors' dimension; None where the package cannot be read (its loader says why, where it is needed)."""
    try:
        return GloveEmbeddings.width()
    except EmbeddingsError:
        return None


def _rounded_up(x: float) -> float:
    """``x`` > 0 rounded up to two significant digits (1/3: 0.34, which leaves a batch of 3; 0.33 left none)."""
    import math

    unit = 10 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(x / unit - 1e-9) * unit


def limited_batches(trainer, batches: int) -> int:
    """The training batches a process trains an epoch, of its ``batches``, under ``trainer.limit_train_batches``; a share
    that leaves none is one line (Lightning's MisconfigurationException was a traceback once the data had loaded: a probe)."""
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(batches, limit)
    if isinstance(limit, float) and int(batches * limit) < 1:
        raise ConfigError(f"trainer.limit_train_batches={limit}: a share of the {batches} training batches an epoch (each process's) that "
                          f"leaves none; give at least {_rounded_up(1 / batches):.2g}, or a whole number of batches")
    return int(batches * limit) if isinstance(limit, float) else batches


def check_val_check_interval(trainer, batches: int) -> None:
    """Refuse, in one line, ``trainer.val_check_interval`` as a count of training batches above the ``batches`` each process
    trains an epoch (after ``trainer.limit_train_batches``): Lightning's ValueError was a traceback once the data had loaded
    (a probe). Known only once the training split is read; a time or a share of the epoch passes."""
    batches = limited_batches(trainer, batches)
    every = trainer.get("val_check_interval")
    if not isinstance(every, int) or isinstance(every, bool) or trainer.get("check_val_every_n_epoch", 1) is None \
            or trainer.get("limit_val_batches") == 0:
        return
    if every > batches:
        raise ConfigError(f"trainer.val_check_interval={every}: more than the {batches} training batches an epoch (each process's), "
                          f"so no validation would run in an epoch; give at most {batches}, or a share of an epoch (e.g. 0.5)")


def _encoder_defaults() -> dict:
    """RNNEncoder's settings' defaults (those of conf/encoder/rnn.yaml)."""
    import inspect

    from two_tower.model.encoders import RNNEncoder

    return {name: p.default for name, p in inspect.signature(RNNEncoder).parameters.items()}


def check_skip_dim(encoder) -> None:
    """Refuse ``encoder.dim`` set with ``encoder.skip=true``: the skip path's output has the word vectors' width, so the
    projection size is not used (``experiment=best encoder.dim=512`` trained the model it trains without it, silently).
    A dim at its default (128) or null passes, as the bag settings' defaults pass without ``encoder.bag_dim``: the shipped
    skip recipes, and the saved configs of runs trained with them (which a resume must repeat), leave it at 128."""
    if not encoder.get("skip"):
        return
    dim, default = encoder.get("dim"), _encoder_defaults()["dim"]
    if dim is not None and dim != default:
        raise ConfigError(f"encoder.dim={dim} is not used with encoder.skip=true (the skip path's output has the word vectors' width, "
                          "embeddings.dim): drop it, or set encoder.dim=null")


def validate_train_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key that is unset, of the wrong type, or out of range."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hint = " (negatives=ann mines with a trained model: negatives.checkpoint=PATH)" if "negatives.checkpoint" in missing else ""
        raise ConfigError(f"{', '.join(missing)} must be set{hint}")
    check_config(cfg, list(RULES))  # the ranges (two_tower/core/checks.py), the same rules the constructors apply
    data = cfg.get("data") or {}
    if data.get("synthetic_rows") is not None and data.get("path") is not None:  # a run that looked trained on a folder
        raise ConfigError(f"data.path={data.path}: data=synthetic generates its rows and reads no folder; drop data=synthetic "
                          "to train on the folder (data=local), or drop data.path")
    embeddings = cfg.get("embeddings") or {}
    source = str(embeddings.get("_target_", ""))
    if "dim" in embeddings and embeddings.get("dim") is None and not source.endswith("FileEmbeddings"):
        # null is a vectors file's own dimension: a distillation had no target, random rows and word2vec no width (a
        # TypeError traceback after the data was prepared), GloVe was refused only after it
        if source.endswith("DistilledEmbeddings"):
            raise ConfigError(DISTILLED_DIM_NULL)
        option = {"RandomEmbeddings": "random", "GloveEmbeddings": "glove", "Word2VecEmbeddings": "word2vec"}.get(source.rsplit(".", 1)[-1], source)
        raise ConfigError(f"embeddings.dim=null: embeddings={option} needs the word vectors' width (e.g. 50); "
                          "null means a vectors file's own width (embeddings=file)")
    if source.endswith("GloveEmbeddings") and isinstance(embeddings.get("dim"), int) and (width := _glove_width()) not in (None, embeddings.dim):
        # said by the vectors' loader too, but only after the rows were read and tokenized
        raise ConfigError(f"embeddings.dim={embeddings.dim}: embeddings=glove's GloVe vectors have {width} dims; leave embeddings.dim at {width}")
    metric = cfg.get("optimized_metric")
    if metric is not None and metric not in [f"val/{m}" for m in RANKING_METRICS]:
        # it chooses the checkpoint (mode max) and what sweeps maximise: a typo failed after the first validation
        raise ConfigError(f"optimized_metric={metric!r}: must be one of {', '.join(f'val/{m}' for m in RANKING_METRICS)}")
    negatives = cfg.get("negatives") or {}
    if "range_min" in negatives:
        check_mining_range(negatives.range_min, negatives.range_max)
    if negatives.get("checkpoint") and not Path(negatives.checkpoint).expanduser().is_file():
        raise ConfigError(f"negatives.checkpoint={negatives.checkpoint}: no such checkpoint file")
    if str(negatives.get("_target_", "")).endswith("InBatchNegatives") and negatives.get("per_query"):
        raise ConfigError("negatives=in_batch takes no explicit negatives: negatives.per_query must be 0")
    batch_size = (cfg.get("data") or {}).get("batch_size")
    if str(negatives.get("_target_", "")).endswith("InBatchNegatives") and batch_size == 1:
        raise ConfigError(
            "data.batch_size=1 with negatives=in_batch leaves every query without a negative (the other queries' passages "
            "are its only negatives): use data.batch_size >= 2, or explicit negatives (negatives=random, bm25 or ann)"
        )
    if str(negatives.get("_target_", "")).endswith(("RandomNegatives", "BM25Negatives", "ANNNegatives")):
        check_explicit_negatives(negatives.get("per_query", 1))
    distill = str((cfg.get("loss") or {}).get("_target_", "")).endswith("DistillLoss")
    if distill and not cfg.get("teacher"):
        raise ConfigError("loss=distill needs a teacher: teacher=minilm (teacher.model=PATH for another model)")
    if cfg.get("teacher") and not distill:
        raise ConfigError(f"teacher is set but the loss ({cfg.loss._target_}) does not use it: use loss=distill, or drop the teacher")
    pseudo = (cfg.get("data") or {}).get("pseudo_queries") or {}
    if pseudo.get("count") and not distill:
        raise ConfigError(f"data.pseudo_queries.count={pseudo.count}: pseudo-queries are labelled by the teacher only, so they need loss=distill")
    if pseudo.get("count") and pseudo.min_words > pseudo.max_words:
        raise ConfigError(f"data.pseudo_queries.min_words={pseudo.min_words} must be at most data.pseudo_queries.max_words={pseudo.max_words}")
    loss = cfg.get("loss") or {}
    margin_weight = loss.get("margin_weight", 0)
    if distill and margin_weight and loss.get("margin_pairs") == "mined" and not negatives.get("per_query"):
        # MarginMSE over mined pairs needs mined passages; in-batch negatives give none, so the term would be 0
        option = _choice("negatives") or str(negatives.get("_target_", "")).rsplit(".", 1)[-1]
        raise ConfigError(f"loss.margin_pairs=mined with negatives={option}: no mined negatives, so MarginMSE "
                          "(loss.margin_weight) would add nothing; use loss.margin_pairs=all, or negatives=random, bm25 or ann")
    if loss.get("learn_margin_scale") and not margin_weight:
        raise ConfigError("loss.learn_margin_scale=true does nothing with loss.margin_weight=0 (no MarginMSE term to scale): "
                          "set loss.margin_weight > 0 (loss=distill_margin), or drop it")
    # settings that were accepted and did nothing (a probe): refused as learn_margin_scale is
    if distill and loss.get("margin_pairs", "all") != "all" and not margin_weight:
        raise ConfigError(f"loss.margin_pairs={loss.margin_pairs} does nothing with loss.margin_weight=0 (it chooses MarginMSE's pairs): "
                          "set loss.margin_weight > 0 (loss=distill_margin), or drop it")
    if distill and loss.get("label_weight") == 1 and not loss.get("query_relation_weight"):
        raise ConfigError("loss.label_weight=1 gives the teacher no weight (the loss is InfoNCE on the labels alone, and pseudo-queries, "
                          "which have none, add nothing), yet its vectors would be encoded: use loss=infonce, or a weight below 1")
    refresh, epochs = negatives.get("refresh_every_n_epochs") or 0, (cfg.get("trainer") or {}).get("max_epochs")
    if refresh and isinstance(epochs, int) and epochs != -1 and refresh >= epochs:
        raise ConfigError(f"negatives.refresh_every_n_epochs={refresh} with trainer.max_epochs={epochs}: the first refresh would come "
                          f"before epoch {refresh + 1}, which the run never trains; use a smaller N, or train longer")
    encoder = cfg.get("encoder") or {}
    check_packing(encoder.get("packing", "auto"), bool(encoder.get("bidirectional")))
    if not encoder.get("bag_dim"):
        defaults = _encoder_defaults()
        for key in ("bag_stemmer", "bag_passage_idf_power", "bag_mix"):  # settings of the bag path, at their defaults?
            default = defaults[key]
            if encoder.get(key, default) != default:
                raise ConfigError(f"encoder.{key}={encoder[key]} does nothing without the bag-of-words path: set encoder.bag_dim too")
    check_skip_dim(encoder)
    unknown = unknown_target_setting(OmegaConf.to_container(cfg, resolve=False))
    if unknown:
        raise ConfigError(unknown)
    trainer = cfg.get("trainer") or {}
    if trainer.get("accelerator") in ("gpu", "cuda"):
        import torch

        mps = trainer.accelerator == "gpu" and torch.backends.mps.is_available()  # Lightning maps gpu to an Apple GPU too
        if not torch.cuda.is_available() and not mps:
            raise ConfigError(f"trainer.accelerator={trainer.accelerator}: no GPU on this machine for torch {torch.__version__} "
                              "(no CUDA, no Apple MPS); drop trainer=gpu, or install a CUDA build of torch")
    strategy = trainer.get("strategy")
    start_method = strategy.get("start_method") if isinstance(strategy, DictConfig) else None
    if (isinstance(strategy, str) and ("spawn" in strategy or "fork" in strategy or "notebook" in strategy)) or start_method in ("spawn", "fork", "forkserver"):
        # the processes' logged keys never reach the parent's CSV logger: trained, then a traceback and exit 1 (a probe)
        shown = strategy if isinstance(strategy, str) else f"start_method={start_method}"
        raise ConfigError(f"trainer.strategy={shown}: runs start their processes as scripts (trainer=ddp, Lightning's "
                          "subprocess launcher); spawned or forked processes are not supported")
    epochs, every = trainer.get("max_epochs"), trainer.get("check_val_every_n_epoch", 1)
    if isinstance(epochs, int) and isinstance(every, int) and 0 < epochs < every and not trainer.get("fast_dev_run"):
        # no epoch validated: the run trained, wrote no checkpoint at all and exited 0, with a warning (a probe)
        raise ConfigError(f"trainer.max_epochs={epochs} with trainer.check_val_every_n_epoch={every}: no epoch would be validated, so no "
                          f"checkpoint would be written; train at least {every} epochs, or validate more often")
    limit = trainer.get("limit_val_batches")
    if limit is not None and not (limit == 0 or (isinstance(limit, float) and limit == 1.0)):
        # validation ranks the whole corpus; a part of it gives no metric, and the checkpoint monitor failed after training
        raise ConfigError(f"trainer.limit_val_batches={limit}: validation ranks the whole corpus, so it cannot be cut to some batches; "
                          "validate on fewer queries with data.max_val_rows=N, or not at all with +trainer.limit_val_batches=0")
    if trainer.get("overfit_batches"):
        raise ConfigError(f"trainer.overfit_batches={trainer.overfit_batches}: the training batches are built by this project's sampler, "
                          "which Lightning cannot replace; use debug=overfit (a few training rows, many epochs)")
    data = cfg.data
    if data.get("synthetic_rows"):
        from two_tower.data.synthetic import check_synthetic_rows

        # split names name a folder's splits: with generated rows they were accepted and did nothing (a probe)
        named = [f"data.{key}={data.get(key)}" for key, default in (("train_split", "train"), ("val_split", "validation"))
                 if data.get(key, default) != default]
        if named:
            raise ConfigError(f"{', '.join(named)}: data=synthetic generates its train and validation rows; split names choose the splits "
                              "of a data.path folder (data=local)")

        check_synthetic_rows(data.synthetic_rows)
    if not data.get("path") and not data.get("synthetic_rows") and _choice("data") == "local":
        raise ConfigError("data=local needs data.path=DIR (a folder of train-*/validation-* shards); without it the Hub would be used")
    if data.get("val_split") is not None and data.get("val_split") == data.get("train_split") and not data.get("synthetic_rows"):
        raise ConfigError(f"data.val_split={data.val_split} is the training split: validation would score the rows trained on "
                          "(and keep the checkpoint that fits them best); name another split, e.g. one carved with "
                          "experiments/comparisons/carve_test_split.py")
    test_split = data.get("test_split")
    # (a test split is read from a local folder only: from the Hub data.val_split=test with the default test_split is fine)
    if test_split is not None and test_split in (data.get("train_split"), data.get("val_split")) and data.get("path") and not data.get("synthetic_rows"):
        which = "training" if test_split == data.get("train_split") else "validation"
        raise ConfigError(f"data.test_split={test_split} is the {which} split: the test figure (the number to report) would score the rows "
                          f"{'trained on' if which == 'training' else 'the best checkpoint was chosen on'}; name a held-out split "
                          "(experiments/comparisons/carve_test_split.py makes one), or data.test_split=null for none")
    if data.get("path") and Path(data.path).expanduser().is_file() and data.get("train_split") != data.get("val_split"):
        # one file serves every split name, so validation would score the training rows themselves
        raise ConfigError(f"data.path={data.path}: a file, which would be the training and the validation split alike; "
                          "give a folder of train-* and validation-* shards")
    if data.get("path") and not Path(data.path).expanduser().exists():
        raise ConfigError(f"data.path={data.path}: no such file or folder")
    ckpt = cfg.get("ckpt_path")
    if ckpt and ckpt != "last" and not Path(ckpt).expanduser().is_file():
        raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")


# Hydra's own keys in an instantiated node.
INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def unknown_target_setting(node, path: str = "") -> str | None:
    """The one line for a setting that the class or function a node instantiates (its ``_target_``) does not
    take, e.g. ``+loss.bogus=1`` or ``+trainer.max_epoch=1``: caught here, before any data is loaded, instead
    of Hydra's instantiation traceback (or an optimizer's TypeError inside fit) later. Targets that take
    ``**kwargs``, or that cannot be found (Hydra reports those), are not checked. None when all are taken."""
    import inspect

    from hydra.utils import get_object

    if isinstance(node, list):
        for i, item in enumerate(node):
            found = unknown_target_setting(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if not isinstance(node, dict):
        return None
    target = node.get("_target_")
    if isinstance(target, str):
        try:
            parameters = inspect.signature(get_object(target)).parameters.values()
        except Exception:  # not importable here, or no signature: left to Hydra
            parameters = None
        if parameters is not None and not any(p.kind is p.VAR_KEYWORD for p in parameters):
            taken = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            extra = [k for k in node if k not in INSTANTIATE_KEYS and k not in taken]
            if extra:
                import difflib

                name = f"{path}.{extra[0]}" if path else extra[0]
                taken = [t for t in taken if t != "self"]
                close = difflib.get_close_matches(str(extra[0]), taken, n=3)
                hint = f" (did you mean {' or '.join(close)}?)" if close else f"; it takes {', '.join(taken[:12])}{', ...' if len(taken) > 12 else ''}"
                return f"{name}: {target.rsplit('.', 1)[-1]} takes no such setting{hint}"
    for key, value in node.items():
        found = unknown_target_setting(value, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def _choice(group: str) -> str | None:
    """The option chosen for a config group in the running Hydra job (None outside one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def check_sweep_space(cfg: DictConfig, compose: Callable[[list[str]], DictConfig] | None = None) -> None:
    """Raise ConfigError if the sweeper's search space (``hydra.sweeper.params``, e.g. hparams_search=optuna)
    names a setting this config does not have, such as ``loss.temperature`` with ``loss=triplet``: Hydra
    would stop at the first trial with "Could not override". ``cfg`` is the composed config with its
    ``hydra`` node (as a Hydra callback sees it at the start of a multirun). When the sweep also chooses
    among a group's options (``loss=infonce,triplet`` as a sweep argument, or ``loss: choice(...)`` in the
    space), every combination of them is checked: ``compose(task overrides)`` gives the config of one."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None, throw_on_missing=False)
    if not params:
        return
    settings = {str(k): v for k, v in params.items()}
    combinations = swept_group_overrides(cfg, settings) if compose is not None else []
    for config in [compose(overrides) for overrides in combinations] or [cfg]:
        _check_space(config, settings)


def check_sweep_runs(cfg: DictConfig) -> None:
    """Raise ConfigError, before any job, for a multirun whose jobs would not be the runs asked for: a fixed
    ``logger.wandb.id`` (every job logged to that one W&B run, the seeds merged), or ``ckpt_path=last`` where no job of
    ``hydra.sweep.dir`` has a checkpoint (without hydra.sweep.dir, a new timestamped folder: every job trained from
    the start, exit 0, where a single run is refused). A probe found both."""
    swept = {override.key_or_group.lstrip("+~") for override, _, _ in sweep_arguments(cfg, {}) if override.is_sweep_override()}
    wandb = OmegaConf.select(cfg, "logger.wandb", default=None, throw_on_missing=False)
    # as written: an id naming what differs between the jobs (a swept setting, the job's number or overrides:
    # s${seed} with seed=1,2; j${hydra:job.num}) is each job's own; one naming nothing swept (s${seed} with only the
    # learning rate swept) is one id for all (a review)
    wandb_id = OmegaConf.to_container(wandb, resolve=False).get("id") if wandb is not None else None
    names = re.findall(r"\$\{([^}]*)\}", str(wandb_id)) if wandb_id is not None else []
    per_job = any(name.strip() in swept or name.strip().startswith(("hydra:job.num", "hydra:job.id", "hydra:job.override_dirname"))
                  for name in names)
    if wandb_id is not None and not per_job and "logger.wandb.id" not in swept:
        raise ConfigError(f"logger.wandb.id={wandb_id} in a sweep: every job would log to that one W&B run; leave it null (each job "
                          "draws its own, and keeps it when resumed) or give each job its own (logger.wandb.id=a,b,...)")
    if cfg.get("ckpt_path") == "last" and "ckpt_path" not in swept:
        sweep = Path(str(cfg.hydra.sweep.dir)).expanduser()
        if not sweep.is_dir() or next(sweep.rglob("last.ckpt"), None) is None:
            given = any(text.split("=", 1)[0] == "hydra.sweep.dir" for text in override_texts(cfg, "hydra"))
            where = f"hydra.sweep.dir={sweep}" if given else f"{sweep} (a new folder: hydra.sweep.dir was not given)"
            raise ConfigError(f"ckpt_path=last: no job of the sweep in {where} has a checkpoint to resume; resume a sweep with "
                              "hydra.sweep.dir=<its folder>, or drop ckpt_path=last to start one")


def check_launcher(cfg: DictConfig) -> None:
    """Raise ConfigError, before any job, for a SLURM sweep (``hydra/launcher=slurm``) that cannot be submitted from
    here: no ``srun`` on this machine (submitit's RuntimeError traceback, leaving multirun.yaml), or a
    ``trainer.devices`` that is not a number (``trainer=ddp``'s 'auto': an interpolation traceback over
    ``gpus_per_node``), since a SLURM job asks for its GPUs and tasks by count."""
    import shutil

    target = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="", throw_on_missing=False) or "")
    if "SlurmLauncher" not in target:
        return
    if shutil.which("srun") is None:
        raise ConfigError("hydra/launcher=slurm: no srun on this machine (not a SLURM login node); submit from one, or drop "
                          "hydra/launcher=slurm to run the sweep's jobs here one after another")
    devices = OmegaConf.select(cfg, "trainer.devices", default=None, throw_on_missing=False)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ConfigError(f"trainer.devices={devices!r}: hydra/launcher=slurm asks each node for that many GPUs and tasks, so it "
                          "must be a whole number >= 1 (e.g. trainer.devices=4)")


def planned_processes(trainer_cfg) -> int | None:
    """How many training processes ``trainer.devices`` x ``trainer.num_nodes`` start, as Lightning counts them
    (``auto`` / -1: every GPU, else one process); None when the setting does not say."""
    import torch

    devices, accelerator = trainer_cfg.get("devices", "auto"), str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1):
        if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
            devices = torch.cuda.device_count()
        elif devices == "auto":  # CPU, MPS: one process
            devices = 1
        else:
            return None
    elif isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        devices = len(devices)
    elif isinstance(devices, str) and "," in devices:
        devices = len([d for d in devices.split(",") if d.strip()])
    nodes = trainer_cfg.get("num_nodes", 1)  # a config saved before trainer/default.yaml had it
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1 or not isinstance(nodes, int) or nodes < 1:
        return None
    return devices * nodes


def check_sweep_processes(trainer_cfg, launcher_target: str) -> None:
    """Raise ConfigError for a sweep (``-m``) whose runs would each start processes of their own on this machine
    (``trainer.devices`` x ``trainer.num_nodes`` > 1, not under a cluster launcher): Lightning starts a run's other
    processes by running the command line again, ``-m`` and the sweep's values included, so each of them ran the
    whole sweep on its own (a probe: a second multirun folder of their logs, the sweep's multirun.yaml overwritten,
    the jobs in step only because every process drew the same sequence). ``launcher_target``: hydra.launcher's
    ``_target_``; SLURM (or torchrun) starts each run's processes itself, so its sweeps are fine."""
    import os

    if "SlurmLauncher" in str(launcher_target) or "TORCHELASTIC_RUN_ID" in os.environ:
        return
    processes = planned_processes(trainer_cfg)
    if processes is not None and processes > 1:
        raise ConfigError(
            f"trainer.devices={trainer_cfg.get('devices')} (x trainer.num_nodes={trainer_cfg.get('num_nodes', 1)}): a sweep (-m) of runs of "
            f"{processes} processes each cannot run on this machine: Lightning starts a run's other processes by running this command "
            "again, so each would run the whole sweep; run each configuration without -m, or sweep with hydra/launcher=slurm "
            "(SLURM starts each run's processes)")


def optuna_sweep(cfg: DictConfig) -> bool:
    """Whether the multirun's sweeper is Optuna's (``hparams_search=optuna``), which draws values from distributions."""
    return "optuna" in str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="", throw_on_missing=False) or "").lower()


def check_optimising_sweep(cfg: DictConfig) -> None:
    """Raise ConfigError, before any trial, for a sweep whose sweeper optimises a value no trial can give: an Optuna
    sweep of ``n_trials`` < 1, or with ``trainer.limit_val_batches=0`` (no validation, so no ``optimized_metric``:
    every trial failed and the sweep ended in Optuna's "No trials are completed yet" traceback)."""
    if not optuna_sweep(cfg):
        return
    sweeper = cfg.hydra.sweeper
    trials = sweeper.get("n_trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={trials!r}: must be an integer >= 1 (the trials the search runs)")
    if OmegaConf.select(cfg, "trainer.limit_val_batches", default=None, throw_on_missing=False) == 0:
        raise ConfigError(f"trainer.limit_val_batches=0: the sweep maximises {cfg.get('optimized_metric')}, which only validation gives; "
                          "let validation run, or sweep without hparams_search")
    if sweeper.get("storage"):
        problem = sql_storage_problem()
        if problem:
            raise ConfigError(f"hydra.sweeper.storage={sweeper.storage}: {problem}; leave it null (an in-memory study)")


def sql_storage_problem() -> str | None:
    """Why this environment's Optuna cannot keep a study in an SQL database, or None: hydra-optuna-sweeper 1.3 brings
    Optuna 2.10, whose storage fails with SQLAlchemy 2 (an AssertionError traceback, and an unusable database file
    left behind). Tried on a throwaway SQLite file."""
    import tempfile

    try:
        import optuna
        import sqlalchemy
    except ImportError as err:
        return f"needs {err.name} (pip install -e '.[sweep]')"
    with tempfile.TemporaryDirectory() as folder:
        try:
            optuna.storages.RDBStorage(f"sqlite:///{folder}/probe.db")
        except Exception as err:  # noqa: BLE001 (any failure is the answer)
            return (f"Optuna {optuna.__version__} cannot open an SQL storage with SQLAlchemy {sqlalchemy.__version__} "
                    f"({type(err).__name__}{': ' + str(err)[:200] if str(err) else ''})")
    return None


def check_sweep_values(cfg: DictConfig, compose: Callable[[list[str]], DictConfig], limit: int = 256) -> None:
    """Raise ConfigError, before any job runs, if a value the sweep lists (``data.batch_size=32,-1,16``, a
    ``choice(...)`` of ``hydra.sweeper.params``) makes a job's settings fail ``validate_train_config``: the sweep
    stopped at that job, the ones after it never run. Each listed value is checked once, the other swept settings at
    their first value (at most ``limit`` values). A ``range(...)`` is checked value by value as a list, or under Optuna
    (which draws from it as a distribution, its stop included) at its two ends, as an ``interval(LOW, HIGH)`` (what
    Optuna samples from) is: both ends may be drawn, and an end outside the
    setting's rule (``encoder.dropout=interval(-0.9, 0.9)``) stopped the sweep at the first trial drawing below 0."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None, throw_on_missing=False) or {}
    fixed, swept, notes = [], [], {}
    optuna = optuna_sweep(cfg)
    arguments = sweep_arguments(cfg, params)
    on_command_line = {text.split("=", 1)[0] for _, text, from_task in arguments if from_task}
    for override, text, from_task in arguments:
        key, value = text.split("=", 1)
        if not from_task and key in on_command_line:  # the sweeper fixes (or sweeps) it as the command line says
            continue
        if not override.is_sweep_override():
            fixed.append(text)
        elif override.is_range_sweep() and optuna and not override.value().shuffle:
            # Optuna draws from range(start, stop, step) as a uniform distribution whose ends are both drawn: the stop
            # too, which the basic sweeper (and Python's range) leaves out (a review: range(0.5, 1.0, 0.5) drew 1.0)
            span = override.value()
            swept.append((key, [repr(span.start), repr(span.stop)]))
            notes[key] = f" (an end of {key}={value}, which the search may draw)"
        elif override.is_choice_sweep() or override.is_range_sweep():
            swept.append((key, list(override.sweep_string_iterator())))
        elif override.is_interval_sweep():  # Hydra gives int(interval(...))'s ends as integers already
            interval = override.value()
            swept.append((key, [repr(interval.start), repr(interval.end)]))
            notes[key] = f" (an end of {key}={value}, which the search may draw)"
    checked = 0
    for index, (key, values) in enumerate(swept):
        others = [f"{k}={vs[0]}" for i, (k, vs) in enumerate(swept) if i != index]
        for value in values[1:] if index else values:  # the first values of all are checked with the first key's
            if checked == limit:
                return
            checked += 1
            try:
                config = compose([*fixed, *others, f"{key}={value}"])
            except Exception as err:  # e.g. an option that needs another swept value: left to the job, as before
                log.debug("sweep value %s=%s not checked: %s", key, value, err)
                continue
            with open_dict(config):  # the job's folder and name are not known yet (hydra.job.num): not what is checked
                config.pop("hydra", None)
                config.paths.output_dir = "."
                # not checked here, and not readable before a job (the W&B run's name is ${hydra:job.override_dirname}; an
                # id may name ${hydra:job.num}): read, it raised, and Hydra took that for a callback's warning
                config.pop("logger", None)
            try:
                validate_train_config(config)
            except ConfigError as err:
                raise ConfigError(f"the sweep's jobs with {key}={value}{notes.get(key, '')}: {err}") from err


def override_texts(cfg: DictConfig, kind: str) -> list[str]:
    """The command line's overrides as typed, ``hydra.overrides.<kind>`` (``task`` or ``hydra``): unresolved, as an
    ``${...}`` in one (``hydra.sweep.subdir=x${hydra.job.num}``) has no value before a job (reading it resolved it, and
    Hydra took the error for a callback's warning: every check before the jobs was skipped)."""
    node = OmegaConf.select(cfg, f"hydra.overrides.{kind}", default=None, throw_on_missing=False)
    return [str(text) for text in OmegaConf.to_container(node, resolve=False)] if node is not None else []


def sweep_arguments(cfg: DictConfig, params) -> list[tuple[object, str, bool]]:
    """(Hydra's parsed override, its text, whether it is a task override) for each of the multirun's task overrides
    (``hydra.overrides.task``), then each entry of the search space ``params`` (``hydra.sweeper.params``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = override_texts(cfg, "task")
    texts = [*task, *(f"{k}={v}" for k, v in params.items())]
    return [(override, text, i < len(task)) for i, (override, text) in enumerate(zip(OverridesParser.create().parse_overrides(texts), texts))]


def swept_group_overrides(cfg: DictConfig, settings: dict, limit: int = 64) -> list[list[str]]:
    """The task overrides of each combination of the group options the sweep chooses among (at most
    ``limit``), with the other swept values left out (they do not change which settings exist); [] when the
    sweep chooses no group option."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None, throw_on_missing=False) or {}
    fixed, swept = [], {}
    for override, text, from_task in sweep_arguments(cfg, settings):
        if override.is_sweep_override():
            if override.key_or_group in choices and override.is_choice_sweep():
                swept[override.key_or_group] = list(override.sweep_string_iterator())
        elif from_task:
            fixed.append(text)
    if not swept:
        return []
    groups = [g for g in swept]
    fixed = [o for o in fixed if o.split("=", 1)[0].lstrip("+~") not in groups]
    combinations = list(itertools.product(*swept.values()))
    if len(combinations) > limit:
        log.warning("hydra.sweeper.params: %d combinations of %s; the search space is checked against the first %d", len(combinations), ", ".join(groups), limit)
    return [[*fixed, *(f"{g}={o}" for g, o in zip(groups, combo))] for combo in combinations[:limit]]


def _check_space(cfg: DictConfig, params: dict) -> None:
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None, throw_on_missing=False) or {}
    for key in params:
        if key.startswith(("+", "~", "hydra.")) or key in choices:  # additions, deletions, group options
            continue
        if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT:
            continue
        group = key.rpartition(".")[0]
        node = OmegaConf.select(cfg, group, default=None, throw_on_missing=False) if group else None
        has = f" ({group} has {', '.join(k for k in node if not str(k).startswith('_'))})" if isinstance(node, DictConfig) else ""
        option = f"{group}={choices[group]}" if group in choices else "this config"
        rest = " ".join(f"'{k}={v}'" for k, v in params.items() if k != key)
        raise ConfigError(
            f"hydra.sweeper.params: the search space names {key}, a setting {option} does not have{has}: set "
            f"hydra.sweeper.params=null and give the space as sweep arguments, e.g. {rest} '{group or key}.<setting>=interval(LOW, HIGH)'"
        )


_ABSENT = object()
